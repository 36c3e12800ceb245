"""Small asyncio helpers shared by the processor and the slot pool."""

from __future__ import annotations

import asyncio
from typing import Any


def consume(fut: asyncio.Future[Any]) -> None:
    """Mark a finished future's exception as retrieved (its caller has gone)."""
    if fut.done() and not fut.cancelled():
        fut.exception()
