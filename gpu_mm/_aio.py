"""Small asyncio helpers shared by the processor and the slot pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


def consume(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as retrieved (its caller has gone)."""
    if fut.done() and not fut.cancelled():
        fut.exception()


async def wait_until(fut: asyncio.Future[Any], deadline: float | None) -> bool:
    """Wait for ``fut`` without cancelling it, until ``deadline`` (``time.monotonic()``); True if done."""
    if deadline is None:
        await asyncio.wait({fut})
    elif not fut.done():
        await asyncio.wait({fut}, timeout=max(0.0, deadline - time.monotonic()))
    return fut.done()


async def await_or_abandon(fut: asyncio.Future[Any], deadline: float | None, on_abandon: Callable[[], None]) -> bool:
    """Wait for work ``fut`` until ``deadline``; True when it finished in time.

    The one place the abandon-on-timeout rule lives: when the deadline passes first (False is returned) or
    the waiting caller is cancelled (re-raised), the work is *abandoned*, never cancelled here: ``on_abandon``
    is called once, synchronously, and ``fut``'s eventual outcome is retrieved when it comes, so it is never
    logged as unretrieved. Whoever owns the work returns its resources when ``fut`` really finishes.
    """
    try:
        done = await wait_until(fut, deadline)
    except asyncio.CancelledError:
        # Even work that finished in this same instant is abandoned: the caller will never take its result
        # (whatever that result holds goes back through on_abandon's owner).
        fut.add_done_callback(consume)
        on_abandon()
        raise
    if not done:
        fut.add_done_callback(consume)
        on_abandon()
    return done
