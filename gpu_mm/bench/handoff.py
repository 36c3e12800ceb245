"""Feature hand-off to another process: pickle through a pipe (what a ZMQ ``send_pyobj`` does) vs the
shared-memory pool, measured side by side as round trips (send -> receiver holds tensors -> ack)."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import statistics
import time
from typing import Any

import torch

from ..handoff import FeaturePool, FeatureReceiver

SIZES = {
    "1080p_image": (4888, 1176),      # one 1920x1080 image: grid [1, 52, 94]
    "720p_video_2MB": (86400, 1176),  # a 30 s 1280x720 clip, 60 frames: grid [30, 40, 72]
}


def _peer(conn: Any) -> None:
    rx = FeatureReceiver()
    while True:
        msg = conn.recv_bytes()
        if msg == b"stop":
            break
        kind, payload = msg[:1], msg[1:]
        if kind == b"p":
            feats = pickle.loads(payload)
        else:
            feats = rx.open(pickle.loads(payload))
        conn.send_bytes(str(sum(int(t.shape[0]) for t in feats.values())).encode())
        del feats
    rx.close()


def run(reps: int = 5, sizes: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Round-trip seconds for each feature size: pickle, shared memory with a copy in, and in place."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_peer, args=(child,), daemon=True)
    proc.start()
    out: dict[str, Any] = {}
    pool = FeaturePool(max_blocks=2)
    try:
        for name, shape in (sizes or SIZES).items():
            feats = {"pixel_values_videos": torch.randn(*shape), "video_grid_thw": torch.tensor([[1, 2, 3]])}

            def pickled(feats: dict[str, torch.Tensor] = feats) -> None:
                parent.send_bytes(b"p" + pickle.dumps(feats, protocol=pickle.HIGHEST_PROTOCOL))
                parent.recv_bytes()

            def shm_copy(feats: dict[str, torch.Tensor] = feats) -> None:
                h = pool.put(feats)
                parent.send_bytes(b"h" + pickle.dumps(h))
                parent.recv_bytes()
                pool.release(h)

            lease = pool.lease({k: (tuple(v.shape), v.dtype) for k, v in feats.items()})
            for k, v in feats.items():
                lease.tensors[k].copy_(v)  # features made in the pool, as a producer writing out= would

            def shm_in_place(lease: Any = lease) -> None:
                parent.send_bytes(b"h" + pickle.dumps(lease.handle))
                parent.recv_bytes()

            fns = {"pickle_pipe": pickled, "shm_copy_in": shm_copy, "shm_in_place": shm_in_place}
            times: dict[str, list[float]] = {k: [] for k in fns}
            for fn in fns.values():
                fn()
            for _ in range(reps):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            pool.release(lease.handle)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            out[name] = {
                "bytes": sum(v.numel() * v.element_size() for v in feats.values()),
                **{f"{k}_ms": v for k, v in med.items()},
                "speedup_copy_in": med["pickle_pipe"] / med["shm_copy_in"],
                "speedup_in_place": med["pickle_pipe"] / med["shm_in_place"],
            }
        parent.send_bytes(b"stop")
        proc.join(10)
    finally:
        pool.close()
        if proc.is_alive():
            proc.kill()
    return out
