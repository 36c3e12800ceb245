"""Sources, probing and decoders: every input kind, frame-exact seeking, and bad input -> typed errors."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch

from gpu_mm import DecodeError, LimitExceeded, MediaError, SourceError, UnsupportedMedia
from gpu_mm.media.image import decode_image, probe_image
from gpu_mm.media.sources import MediaLimits, load_source
from gpu_mm.media.video import PyAVDecoder, available_video_decoders, get_video_decoder, probe_video

from media_helpers import all_frames, clip, exif_jpeg, make_image


class TestSources:
    def test_every_input_kind(self, tmp_path):
        data = make_image(30, 40, "PNG")
        path = tmp_path / "a.png"
        path.write_bytes(data)
        b64 = base64.b64encode(data).decode()
        for obj in (data, bytearray(data), memoryview(data), str(path), path, f"file://{path}", b64,
                    f"data:image/png;base64,{b64}", io.BytesIO(data), {"image": str(path)},
                    {"image_url": {"url": f"data:image/png;base64,{b64}"}}):
            src = load_source(obj, "image[0]")
            assert src.kind == "encoded" and src.data == data, obj if isinstance(obj, str) else type(obj)

    def test_decoded_inputs_pass_through(self):
        from PIL import Image

        assert load_source(Image.new("RGB", (4, 4)), "i").kind == "pil"
        assert load_source(np.zeros((4, 4, 3), np.uint8), "i").kind == "array"
        assert load_source(torch.zeros(3, 4, 4, dtype=torch.uint8), "i").kind == "array"

    @pytest.mark.parametrize("obj,match", [
        ("/no/such/file.jpg", "not an existing path"),
        ("data:image/png;base64,@@@@", "invalid base64"),
        ("http://example.com/a.jpg", "URLs are disabled"),
        (b"", "empty"),
        (12345, "unsupported input type"),
        ("file:///no/such/file.jpg", "no such file"),
    ])
    def test_bad_sources_name_item_and_reason(self, obj, match):
        with pytest.raises(SourceError, match=match) as ei:
            load_source(obj, "image[3]")
        assert "image[3]" in str(ei.value)

    def test_private_urls_refused_even_when_urls_enabled(self):
        with pytest.raises(SourceError, match="non-public address"):
            load_source("http://127.0.0.1:9/x.jpg", "image[0]", MediaLimits(allow_urls=True))

    def test_url_fetch_from_loopback_when_allowed(self):
        import http.server
        import threading

        data = make_image(20, 20, "PNG")

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        try:
            url = f"http://127.0.0.1:{srv.server_address[1]}/a.png"
            src = load_source(url, "image[0]", MediaLimits(allow_urls=True, allow_private_urls=True))
            assert src.data == data
            with pytest.raises(LimitExceeded, match="max_bytes"):
                load_source(url, "image[0]", MediaLimits(allow_urls=True, allow_private_urls=True, max_bytes=10))
        finally:
            srv.shutdown()
            srv.server_close()

    def test_max_bytes(self):
        with pytest.raises(LimitExceeded, match="max_bytes"):
            load_source(b"x" * 100, "video[0]", MediaLimits(max_bytes=99))


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header is rewritten to claim width x height (a decompression bomb)."""
    data = bytearray(make_image(8, 8, "PNG"))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


class TestImages:
    @pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB"),
                                          ("PNG", "RGBA"), ("PNG", "L"), ("PNG", "P"), ("PNG", "I;16"),
                                          ("WEBP", "RGB"), ("BMP", "RGB"), ("GIF", "P")])
    def test_decodes_every_mode_to_rgb_uint8(self, fmt, mode):
        t = decode_image(load_source(make_image(37, 53, fmt, mode=mode), "image[0]"))
        assert t.dtype == torch.uint8 and t.shape == (3, 37, 53)

    def test_jpeg_fast_path_equals_pillow(self):
        from PIL import Image

        data = make_image(121, 173, "JPEG")
        ours = decode_image(load_source(data, "i"))
        ref = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(ours, ref)  # both are libjpeg-turbo with the same upsampling: exact

    def test_alpha_is_composited_on_white(self):
        from PIL import Image

        img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        t = decode_image(load_source(buf.getvalue(), "i"))
        assert int(t.min()) == 255

    def test_exif_orientation_applied(self):
        from PIL import Image

        img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
        exif = img.getexif()
        exif[0x0112] = 6  # rotate 90 CW on display
        buf = io.BytesIO()
        img.save(buf, "JPEG", exif=exif.tobytes())
        src = load_source(buf.getvalue(), "i")
        assert probe_image(src).height == 40
        assert decode_image(src).shape == (3, 40, 20)

    @pytest.mark.parametrize("orientation", range(1, 9))
    def test_every_exif_orientation_matches_pillow(self, orientation):
        """The JPEG fast path applies EXIF itself (so nvJPEG's output, which torchvision leaves unrotated,
        is turned the same way): exactly Pillow's ``exif_transpose`` of the same libjpeg-turbo pixels."""
        from PIL import Image, ImageOps

        from gpu_mm.media.image import apply_exif_orientation

        data = exif_jpeg(30, 52, orientation, seed=orientation, quality=95)
        src = load_source(data, "i")
        info = probe_image(src)
        ours = decode_image(src, info=info)
        ref_img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        ref = torch.from_numpy(np.array(ref_img)).permute(2, 0, 1)
        assert info.orientation == orientation and (info.height, info.width) == tuple(ref.shape[1:])
        assert torch.equal(ours, ref)
        # The same function on a stored image, as the CUDA path uses it after nvJPEG.
        stored = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(apply_exif_orientation(stored, orientation), ref)

    def test_16_bit_keeps_high_byte(self):
        from PIL import Image

        arr = np.full((4, 4), 0x8040, dtype=np.uint16)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        assert int(decode_image(load_source(buf.getvalue(), "i")).max()) == 0x80

    def test_arrays_hwc_chw_gray_rgba(self):
        hwc = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
        a = decode_image(load_source(hwc, "i"))
        b = decode_image(load_source(torch.from_numpy(hwc).permute(2, 0, 1), "i"))
        assert torch.equal(a, b) and a.shape == (3, 5, 6)
        assert decode_image(load_source(hwc[..., 0], "i")).shape == (3, 5, 6)
        rgba = np.concatenate([hwc, np.zeros((5, 6, 1), np.uint8)], -1)
        assert int(decode_image(load_source(rgba, "i")).min()) == 255

    @pytest.mark.parametrize("data,err,match", [
        (b"not an image at all", UnsupportedMedia, "not a recognised image"),
        (_png_claiming(100000, 100000), LimitExceeded, "pixels"),
        (make_image(64, 64, "JPEG")[:300], DecodeError, "image"),
        (make_image(64, 64, "PNG")[:100], DecodeError, "image"),
    ], ids=["garbage", "bomb-header", "truncated-jpeg", "truncated-png"])
    def test_bad_images_raise_typed_errors(self, data, err, match):
        with pytest.raises(err, match=match) as ei:
            decode_image(load_source(data, "image[7]"))
        assert "image[7]" in str(ei.value)

    @pytest.mark.parametrize("action", ["default", "error"])
    def test_a_header_past_pillows_warning_size_is_over_the_limit_whatever_the_warning_filters(self, action):
        """100 Mpx: past Pillow's warning size (89.5 Mpx), under its refusal (179 Mpx), over gpu-mm's default limit
        (67 Mpx): LimitExceeded, whether Pillow's warning is printed (production) or raised (-W error, the tests);
        no filter of gpu-mm's own (a per-call filter was not thread-safe)."""
        import warnings

        from PIL import Image

        before = list(warnings.filters)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter(action)
            with pytest.raises(LimitExceeded, match="image\\[3\\].*pixels"):
                probe_image(load_source(_png_claiming(10000, 10000), "image[3]"))
            allowed = MediaLimits(max_image_pixels=10000 * 10000)
            if action == "default":  # the operator's larger limit holds; Pillow's warning is a line in the log
                assert probe_image(load_source(_png_claiming(10000, 10000), "image[3]"), allowed).width == 10000
                assert seen and all(issubclass(w.category, Image.DecompressionBombWarning) for w in seen)
        assert warnings.filters == before

    def test_bit_flipped_jpeg_never_crashes(self):
        data = bytearray(make_image(64, 64, "JPEG"))
        rng = np.random.default_rng(1)
        for _ in range(30):
            bad = bytearray(data)
            for pos in rng.integers(2, len(bad), 8):
                bad[pos] ^= 0xFF
            try:
                t = decode_image(load_source(bytes(bad), "image[0]"))
                assert t.shape[0] == 3
            except MediaError as exc:
                assert "image[0]" in str(exc)

    def test_bad_array_dtype(self):
        with pytest.raises(UnsupportedMedia, match="uint8"):
            decode_image(load_source(np.zeros((4, 4, 3), np.float32), "image[1]"))


class TestVideoProbe:
    def test_counts_frames_from_packets(self):
        info = probe_video(load_source(clip("h264", 48, bframes=2), "v"))
        assert info.num_frames == 48 and info.fps == 24 and (info.height, info.width) == (96, 128)
        assert info.codec == "h264" and len(info.keyframe_pts) == 4

    def test_webm_without_header_frame_count(self):
        info = probe_video(load_source(clip("vp9", 20), "v"))
        assert info.num_frames == 20 and info.header_num_frames is None

    def test_ten_hour_header_is_refused_before_decoding(self):
        from fractions import Fraction

        import av

        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4") as out:
            s = out.add_stream("libx264", rate=Fraction(1, 3600))
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
            s.codec_context.time_base = Fraction(1, 1)
            for t in range(11):
                f = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                f.pts = t * 3600
                f.time_base = Fraction(1, 1)
                for p in s.encode(f):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
        with pytest.raises(LimitExceeded, match="max_duration_s") as ei:
            probe_video(load_source(buf.getvalue(), "video[2]"), MediaLimits(max_duration_s=3600))
        assert "video[2]" in str(ei.value)

    @pytest.mark.parametrize("make,err", [
        (lambda: b"\x00" * 1000, UnsupportedMedia),
        (lambda: b"hello, not a video", UnsupportedMedia),
        (lambda: clip("h264", 48)[:40], (UnsupportedMedia, DecodeError)),
    ], ids=["zeros", "text", "truncated-header"])
    def test_bad_containers(self, make, err):
        with pytest.raises(err) as ei:
            probe_video(load_source(make(), "video[0]"))
        assert "video[0]" in str(ei.value)

    def test_audio_only_container_has_no_video_stream(self):
        import av

        buf = io.BytesIO()
        with av.open(buf, "w", format="wav") as out:
            s = out.add_stream("pcm_s16le", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            frame.sample_rate = 8000
            for p in s.encode(frame):
                out.mux(p)
        with pytest.raises(UnsupportedMedia, match="no video stream"):
            probe_video(load_source(buf.getvalue(), "video[0]"))

    def test_frame_limit(self):
        with pytest.raises(LimitExceeded, match="max_frames"):
            probe_video(load_source(clip("h264", 48), "v"), MediaLimits(max_frames=10))


CODECS = ["h264", "hevc", "vp9", "av1", "mjpeg"]


class TestPyAVDecoder:
    @pytest.mark.parametrize("codec", CODECS)
    def test_planned_frames_equal_sequential_decode(self, codec):
        data = clip(codec, 40, bframes=2 if codec in ("h264", "hevc") else 0)
        src = load_source(data, "v")
        info = probe_video(src)
        ref = all_frames(data)
        assert info.num_frames == len(ref) == 40
        for indices in ([0, 1, 2], [5, 17, 18, 39], [39], [3, 3, 30, 0], list(range(0, 40, 7))):
            got = PyAVDecoder().get_frames_at(src, info, indices)
            assert torch.equal(got, torch.from_numpy(ref[indices])), (codec, indices)

    def test_seeks_only_across_gops(self):
        """Frames from the last GOP only: a seek skips the earlier GOPs (fewer frames decoded)."""
        data = clip("h264", 48, gop=12)
        src = load_source(data, "v")
        info = probe_video(src)
        got = PyAVDecoder().get_frames_at(src, info, [40, 47])
        assert torch.equal(got, torch.from_numpy(all_frames(data)[[40, 47]]))

    def test_truncated_stream_reports_missing_frames(self):
        """The full clip's plan (frame 39) against a WebM cut at two thirds (its header survives):
        a typed error naming the item and the missing frames, not a hang or a short result."""
        data = clip("vp9", 40)
        info = probe_video(load_source(data, "v"))
        cut = load_source(data[: len(data) * 2 // 3], "video[1]")
        with pytest.raises(DecodeError, match="video\\[1\\].*planned frames could not be decoded"):
            PyAVDecoder().get_frames_at(cut, info, [0, 39])

    def test_registry(self):
        assert "pyav" in available_video_decoders()
        with pytest.raises(ValueError, match="unknown video decoder"):
            get_video_decoder("nope")


def _faststart_mp4(tmp_path, frames: int = 48) -> bytes:
    """An MP4 with its index (moov) before the data, as web uploads usually are."""
    from fractions import Fraction

    import av

    from gpu_mm.media.synth import pattern

    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=Fraction(24))
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.codec_context.gop_size = 12
        s.options = {"preset": "ultrafast", "tune": "zerolatency"}
        for t in range(frames):
            img = np.roll(pattern(96, 128), t * 3, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path.read_bytes()


class TestDamagedVideos:
    def test_header_over_reporting_frames_is_not_trusted(self, tmp_path):
        """A cut upload keeps a header claiming 48 frames; the plan uses what the packets hold."""
        data = _faststart_mp4(tmp_path)
        cut = load_source(data[: len(data) * 6 // 10], "video[0]")
        info = probe_video(cut)
        assert info.header_num_frames == 48 and info.num_frames < 48
        got = PyAVDecoder().get_frames_at(cut, info, [0, 12])
        assert torch.equal(got, torch.from_numpy(all_frames(data)[[0, 12]]))
        with pytest.raises(MediaError, match="video\\[0\\]"):  # the torn last packet: typed, not a hang
            PyAVDecoder().get_frames_at(cut, info, list(range(info.num_frames)))

    def test_container_with_a_stream_but_no_frames(self):
        import av

        buf = io.BytesIO()
        with av.open(buf, "w", format="matroska") as out:
            s = out.add_stream("libx264", rate=24)
            s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        with pytest.raises(MediaError, match="video\\[0\\]"):
            probe_video(load_source(buf.getvalue(), "video[0]"))

    def test_bit_flipped_videos_never_crash_or_hang(self):
        from gpu_mm.pipeline.families import Qwen2VLPreprocessor

        pre = Qwen2VLPreprocessor("cpu")
        data = bytearray(clip("h264", 48, gop=12))
        rng = np.random.default_rng(7)
        for _ in range(12):
            bad = bytearray(data)
            for pos in rng.integers(64, len(bad), 16):
                bad[pos] ^= 0xFF
            try:
                feats = pre(videos=[bytes(bad)])
                assert feats.pixel_values_videos.shape[1] == 1176
            except MediaError as exc:
                assert "video[0]" in str(exc)
