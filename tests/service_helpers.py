"""A ``gpu-mm serve`` application run on a thread of its own, for tests and the engines' scenarios, and what they
observe of gpu-mm: requests a service answered, calls a function got."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import urllib.request

from gpu_mm.serve import build_app, unix_socket


@contextlib.contextmanager
def serving(tmp_path, model: str = "qwen2_vl", state: dict | None = None, **settings):
    """``gpu-mm serve``'s application (CPU, slot threads, no cache; ``settings`` over them) on a loop of its own,
    on TCP (a free port) and a Unix socket (``tmp_path/gpu-mm.sock`` unless ``uds`` says), which answers handles
    too; yields the two client URLs. ``state`` receives the application (``app``)."""
    from aiohttp import web

    ready = threading.Event()
    state = {} if state is None else state
    settings.setdefault("uds", str(tmp_path / "gpu-mm.sock"))

    def main() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop

        async def start() -> None:
            app = build_app(**{"device": "cpu", "model": model, "workers": "threads", "idle_workers": False,
                               "cache_bytes": 0, **settings})
            runner = web.AppRunner(app)
            await runner.setup()
            tcp = web.TCPSite(runner, "127.0.0.1", 0)
            await tcp.start()
            path = settings["uds"]
            await web.SockSite(runner, unix_socket(path)).start()
            state.update(runner=runner, port=tcp._server.sockets[0].getsockname()[1], path=path, app=app)
            ready.set()

        loop.run_until_complete(start())
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(60)
    try:
        yield f"http://127.0.0.1:{state['port']}", f"unix://{state['path']}"
    finally:
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(30)


def served(tcp: str, client: str = "drop-ins") -> float:
    """Requests the service at ``tcp`` answered ``ok`` for the client named ``client`` (its /metrics)."""
    text = urllib.request.urlopen(f"{tcp}/metrics", timeout=30).read().decode()
    pattern = rf'gpu_mm_client_requests_total\{{client="{re.escape(client)}",outcome="ok"\}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def counting(owner, name: str) -> tuple[list, object]:
    """Count the calls of ``owner.name`` from now on: returns the list that gets one entry per call (the first
    argument's type name) and a function that puts the original back."""
    original = getattr(owner, name)
    calls: list = []

    def counted(*args, **kwargs):
        calls.append(type(args[0]).__name__ if args else None)
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    return calls, lambda: setattr(owner, name, original)
