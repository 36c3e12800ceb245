"""One lifecycle for every resource gpu-mm hands out: ``close()``, ``aclose()``, ``with`` and ``async with``.

``close()`` refuses new work and lets running work end on its own, without blocking (safe anywhere,
including teardown paths and an event loop's thread); ``aclose()`` does the same and then waits for
that work. ``with`` closes, ``async with`` acloses. Closing twice is harmless.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["Closeable"]

C = TypeVar("C", bound="Closeable")


class Closeable:
    """Mixin: subclasses implement :meth:`close` (and :meth:`aclose` when there is work to wait for)."""

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
