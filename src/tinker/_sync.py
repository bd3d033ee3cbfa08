"""One process-wide asyncio loop in a daemon thread, and the sync facade over it.

Every coroutine of the SDK runs on this loop. Sync methods schedule their
coroutine there and wait on the resulting ``concurrent.futures.Future``; async
methods await the same coroutine, hopping onto the loop when called from
another one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = ["get_loop", "in_loop_thread", "on_loop", "run_sync", "submit", "sync_only", "warn_if_in_event_loop"]

logger = logging.getLogger("tinker")

T = TypeVar("T")
P = ParamSpec("P")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The background loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="tinker-event-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the background loop; polling/submitting starts at once."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and block until it finishes."""
    if in_loop_thread():
        coro.close()
        raise RuntimeError("a blocking tinker call was made on tinker's own event loop thread")
    return submit(coro).result()


async def on_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the background loop, from whatever loop the caller runs."""
    if in_loop_thread():
        return await coro
    return await asyncio.wrap_future(submit(coro))


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")


def warn_if_in_event_loop(name: str) -> None:
    """Warn (never raise) when a blocking method is called inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    if _in_jupyter():
        return
    async_name = f"{name}_async" if not name.endswith("result") else "result_async"
    stack = "".join(traceback.format_stack(limit=8)[:-2])
    logger.warning(
        "%s() is a blocking call and was called from inside a running event loop; "
        "this blocks the loop. Use `await %s()` instead.\n%s",
        name,
        async_name,
        stack,
    )


def sync_only(fn: Callable[P, T]) -> Callable[P, T]:
    """Mark a blocking method: calling it inside a running event loop logs a warning."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        warn_if_in_event_loop(fn.__name__)
        return fn(*args, **kwargs)

    return wrapper
