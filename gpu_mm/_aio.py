"""Small asyncio helpers shared by the processor and the slot pool."""

from __future__ import annotations

import asyncio
import time
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
