"""The trust policy of ``load_source``: what a network entry point may open, local files read safely, and
URL fetching that checks the address it connects to and ends within its deadline.

Every server here listens on loopback; the address policy is what the tests vary (a resolver and a policy
that the test controls), never the network."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpu_mm.media.sources as sources
from gpu_mm import LimitExceeded, SourceError
from gpu_mm.media.sources import MediaLimits, address_is_public, load_source

from media_helpers import make_image

NETWORK = MediaLimits.for_network()


@pytest.fixture(scope="module")
def png() -> bytes:
    return make_image(20, 30, "PNG")


class TestNetworkPolicy:
    """Inline media only: no string is looked up on disk, so answers say nothing about local files."""

    def test_inline_media_accepted(self, png):
        b64 = base64.b64encode(png).decode()
        for obj in (b64, f"data:image/png;base64,{b64}", {"image_url": {"url": f"data:image/png;base64,{b64}"}}):
            assert load_source(obj, "image[0]", NETWORK).data == png

    def test_existing_and_missing_paths_answer_alike(self, tmp_path, png):
        real = tmp_path / "real.png"
        real.write_bytes(png)
        messages = set()
        for path in (str(real), str(tmp_path / "missing.png")):
            with pytest.raises(SourceError) as ei:
                load_source(path, "image[0]", NETWORK)
            messages.add(ei.value.reason)
        assert len(messages) == 1 and "local paths are not accepted" in messages.pop()

    @pytest.mark.parametrize("make", [
        lambda p: f"file://{p}",
        lambda p: {"path": str(p)},
        lambda p: {"image_url": {"url": f"file://{p}"}},
        lambda p: p,  # a PathLike
    ], ids=["file-uri", "path-key", "image_url-file-uri", "pathlike"])
    def test_every_path_form_refused(self, tmp_path, png, make):
        real = tmp_path / "real.png"
        real.write_bytes(png)
        with pytest.raises(SourceError, match="local paths are not accepted"):
            load_source(make(real), "image[0]", NETWORK)

    def test_system_files_refused_without_touching_them(self):
        for path in ("/etc/passwd", "/dev/zero", "/proc/self/mem", "/proc/self/fd/0", "file:///dev/tty"):
            with pytest.raises(SourceError) as ei:
                load_source(path, "image[0]", NETWORK)
            assert "passwd" not in ei.value.reason and "no such file" not in ei.value.reason

    def test_items_nested_too_deep_refused(self):
        item: object = "aGVsbG8gd29ybGQgaGVsbG8="
        for _ in range(50):
            item = {"image": item}
        with pytest.raises(SourceError, match="nested"):
            load_source(item, "image[0]", NETWORK)


class TestAllowedDirectory:
    @pytest.fixture()
    def root(self, tmp_path, png):
        media = tmp_path / "media"
        media.mkdir()
        (media / "a.png").write_bytes(png)
        (tmp_path / "secret.png").write_bytes(png)
        return media

    def test_files_inside_are_read(self, root, png):
        limits = MediaLimits.for_network(local_media_root=str(root))
        for obj in ("a.png", str(root / "a.png"), f"file://{root / 'a.png'}", {"path": "a.png"}):
            assert load_source(obj, "image[0]", limits).data == png

    @pytest.mark.parametrize("escape", ["../secret.png", "{root}/../secret.png", "file://{root}/../secret.png",
                                        "/etc/passwd", "link.png"])
    def test_escapes_refused(self, root, escape):
        os.symlink(root.parent / "secret.png", root / "link.png")
        limits = MediaLimits.for_network(local_media_root=str(root))
        with pytest.raises(SourceError):
            load_source(escape.format(root=root), "image[0]", limits)

    def test_fifo_refused_at_once(self, root):
        os.mkfifo(root / "pipe.png")  # opening it for reading would block until a writer comes
        limits = MediaLimits.for_network(local_media_root=str(root))
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="not a regular file"):
            load_source(f"file://{root / 'pipe.png'}", "image[0]", limits)
        assert time.monotonic() - t0 < 5

    def test_device_behind_a_link_refused(self, root):
        os.symlink("/dev/zero", root / "zero.png")
        limits = MediaLimits.for_network(local_media_root=str(root))
        with pytest.raises(SourceError):
            load_source(f"file://{root / 'zero.png'}", "image[0]", limits)

    def test_size_checked_before_reading(self, root):
        with open(root / "huge.mp4", "wb") as f:
            f.truncate(1 << 40)  # sparse: 1 TiB that would take forever to read
        limits = MediaLimits.for_network(local_media_root=str(root), max_bytes=1 << 20)
        with pytest.raises(LimitExceeded, match="file of 1099511627776 bytes"):
            load_source("huge.mp4", "video[0]", limits)

    def test_root_must_exist(self, tmp_path):
        with pytest.raises(ValueError, match="not a directory"):
            MediaLimits.for_network(local_media_root=str(tmp_path / "nope"))


@pytest.mark.parametrize("limits", [MediaLimits(), "root"], ids=["trusted", "allowed-directory"])
def test_path_with_a_nul_byte_is_a_source_error(tmp_path, limits):
    if limits == "root":
        limits = MediaLimits.for_network(local_media_root=str(tmp_path))
    for obj in (f"file://{tmp_path}/a%00b.png", tmp_path / "a\x00b.png"):
        with pytest.raises(SourceError, match="NUL byte"):
            load_source(obj, "image[0]", limits)


class TestTrustedCaller:
    """The Python API reads paths, but still never blocks on or streams from something that is no file."""

    def test_fifo_and_devices_refused(self, tmp_path):
        os.mkfifo(tmp_path / "pipe")
        for path in (str(tmp_path / "pipe"), "/dev/zero"):
            with pytest.raises(SourceError, match="not a regular file"):
                load_source(path, "image[0]")

    def test_proc_file_with_no_size_is_bounded(self):
        with pytest.raises(LimitExceeded, match="max_bytes"):
            load_source("/proc/self/maps", "image[0]", MediaLimits(max_bytes=16))

    def test_image_pixel_limit_is_one_number(self):
        with pytest.raises(ValueError, match="above what Pillow decodes"):
            MediaLimits(max_image_pixels=10**9)


@pytest.mark.parametrize("address,public", [
    ("93.184.216.34", True), ("2606:4700::1", True),
    ("127.0.0.1", False), ("10.0.0.1", False), ("192.168.1.1", False), ("172.16.0.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("100.100.100.200", False), ("0.0.0.0", False),
    ("224.0.0.1", False), ("::1", False), ("fe80::1", False), ("fd00::1", False), ("ff0e::1", False),
    ("::ffff:127.0.0.1", False), ("2002:7f00:1::1", False), ("2002:5db8:d822::1", True),
    ("64:ff9b::7f00:1", False), ("64:ff9b::5db8:d822", True),
])
def test_address_policy(address, public):
    assert address_is_public(ipaddress.ip_address(address)) is public


class _Server:
    """A loopback HTTP server whose handler the test supplies."""

    def __init__(self, handler, host: str = "127.0.0.1") -> None:
        self.srv = http.server.ThreadingHTTPServer((host, 0), handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


def _handler(body: bytes = b"", *, status: int = 200, location: str | None = None, trickle_s: float = 0.0):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    if trickle_s:
                        time.sleep(trickle_s)
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *a):
            pass

    return H


@pytest.fixture()
def loopback_is_public(monkeypatch):
    """Treat 127.0.0.2 as public and 127.0.0.1 as private, and count DNS resolutions of test hosts."""
    calls: list[str] = []
    answers: dict[str, list[list[str]]] = {}

    def resolve(host, port):
        calls.append(host)
        queue = answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]

    monkeypatch.setattr(sources, "_resolve", resolve)
    monkeypatch.setattr(sources, "address_is_public", lambda ip: str(ip) == "127.0.0.2")
    return calls, answers


class TestURLs:
    def test_connects_to_the_address_it_checked(self, loopback_is_public, png):
        """DNS rebinding: the name resolves to an allowed address once, then to a refused one. gpu-mm
        resolves once and connects to the checked address, so the second answer is never used."""
        calls, answers = loopback_is_public
        good = _Server(_handler(png), host="127.0.0.2")
        try:
            answers["media.test"] = [["127.0.0.2"], ["127.0.0.1"]]
            src = load_source(f"http://media.test:{good.port}/a.png", "image[0]", MediaLimits(allow_urls=True))
            assert src.data == png and calls == ["media.test"]
        finally:
            good.close()

    def test_refused_address_is_never_connected(self, loopback_is_public):
        calls, answers = loopback_is_public
        answers["evil.test"] = [["127.0.0.2", "127.0.0.1"]]  # one bad address among good ones
        with pytest.raises(SourceError, match="non-public address 127.0.0.1"):
            load_source("http://evil.test:9/a.png", "image[0]", MediaLimits(allow_urls=True))

    def test_redirect_to_a_refused_address(self, loopback_is_public):
        calls, answers = loopback_is_public
        hop = _Server(_handler(status=302, location="http://inside.test:9/x"), host="127.0.0.2")
        try:
            answers["outside.test"] = [["127.0.0.2"]]
            answers["inside.test"] = [["127.0.0.1"]]
            with pytest.raises(SourceError, match="non-public address"):
                load_source(f"http://outside.test:{hop.port}/", "image[0]", MediaLimits(allow_urls=True))
            assert calls == ["outside.test", "inside.test"]
        finally:
            hop.close()

    def test_redirect_loop_bounded(self, loopback_is_public):
        calls, answers = loopback_is_public
        loop = _Server(_handler(status=302, location="/again"), host="127.0.0.2")
        try:
            answers["loop.test"] = [["127.0.0.2"]]
            with pytest.raises(SourceError, match="max_redirects=3"):
                load_source(f"http://loop.test:{loop.port}/", "image[0]", MediaLimits(allow_urls=True, max_redirects=3))
        finally:
            loop.close()

    def test_trickling_body_ends_at_the_deadline(self):
        slow = _Server(_handler(b"x" * 1000, trickle_s=0.2))
        try:
            t0 = time.monotonic()
            with pytest.raises(SourceError, match="url_timeout_s=1"):
                load_source(f"http://127.0.0.1:{slow.port}/", "video[0]",
                            MediaLimits(allow_urls=True, allow_private_urls=True, url_timeout_s=1.0))
            assert time.monotonic() - t0 < 3  # one deadline for the whole download, not per read
        finally:
            slow.close()

    def test_http_error_status(self):
        missing = _Server(_handler(b"", status=404))
        try:
            with pytest.raises(SourceError, match="HTTP 404"):
                load_source(f"http://127.0.0.1:{missing.port}/", "image[0]",
                            MediaLimits(allow_urls=True, allow_private_urls=True))
        finally:
            missing.close()


def _b64_reference(payload: str, item: str) -> bytes:
    """The accepted text, decided by Python's binascii: whitespace removed, the URL-safe alphabet mapped, padding
    optional but only at the end."""
    import binascii

    try:
        payload = "".join(payload.split()).translate(str.maketrans("-_", "+/"))
        payload += "=" * (-len(payload) % 4)
        if "=" in payload[:-2]:
            raise ValueError("padding before the end")
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SourceError(item, f"invalid base64 ({exc})") from None


def test_base64_accepts_wrapped_url_safe_and_unpadded_text_and_stays_strict():
    """The bytes are those of one binascii decode: line-wrapped base64, the URL-safe alphabet and missing padding
    are accepted; padding inside the payload, a stray character, a lone data character, non-ASCII text are
    refused with a SourceError naming the item."""
    data = bytes(range(256)) * 7 + b"tail"
    text = base64.b64encode(data).decode()
    assert sources._b64(text, "x") == data
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))  # MIME line length
    assert sources._b64(" " + wrapped + "\r\n", "x") == data
    assert sources._b64(base64.urlsafe_b64encode(data).decode(), "x") == data
    for n in range(12):  # every tail length, padded or not
        chunk = bytes(range(40, 40 + n))
        encoded = base64.b64encode(chunk).decode()
        assert sources._b64(encoded, "x") == chunk
        assert sources._b64(encoded.rstrip("="), "x") == chunk
    for bad in (text[:64] + "==" + text[64:], text[:100] + "@" + text[100:], "QUJD" * 8 + "Q", "QUJD" * 8 + "é",
                "QUJD" * 8 + "\x00", "QUJD" * 8 + "=", "QQ==QQ==", "QUJD" * 8 + "=Q"):
        with pytest.raises(SourceError, match="invalid base64") as err:
            sources._b64(bad, "video[3]")
        assert err.value.item == "video[3]"


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    st.text(alphabet="ABCDQWab09+/-_= \n\t\r@é", max_size=40),
))
def test_base64_decides_any_text_as_binascii_does(text):
    """pybase64's strict decode, then the normalized one, accept exactly the text the binascii reference accepts,
    with the same bytes."""
    def outcome(fn):
        try:
            return fn(text, "x")
        except SourceError:
            return "refused"

    assert outcome(sources._b64) == outcome(_b64_reference)
