"""Wait for a dependency with exponential backoff, then give up clearly."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class DependencyUnavailable(Exception):
    """A dependency stayed unreachable for the whole waiting time."""


async def wait_until_ready(
    attempt: Callable[[], Awaitable[T]],
    *,
    what: str,
    address: str,
    timeout: float,
    first_delay: float = 0.5,
    max_delay: float = 10.0,
) -> T:
    deadline = time.monotonic() + timeout
    delay = first_delay
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except Exception as exc:  # any failure to reach it counts as "not up yet"
            remaining = deadline - time.monotonic()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if remaining <= 0:
                raise DependencyUnavailable(
                    f"{what} at {address} is unreachable after {timeout:.0f}s and {tries} attempts: {reason}"
                ) from exc
            wait = min(delay, remaining)
            log.warning(
                "%s at %s is not reachable yet (attempt %d); retrying in %.1fs: %s",
                what,
                address,
                tries,
                wait,
                reason,
                extra={"dependency": what, "address": address, "attempt": tries, "error": reason},
            )
            await asyncio.sleep(wait)
            delay = min(delay * 2, max_delay)
