"""Downloading a checkpoint archive and extracting it into place.

The archive is streamed with httpx straight into tarfile's stream mode and
extracted as it arrives (it is never stored, so its bytes are written once)
into a work directory created next to the target
(``<output>/.<name>.XXXX.partial``); once the whole body is in, the extracted
tree is renamed to the target.  An interrupted or failed download or
extraction therefore leaves no half-written target behind, the work directory
is always removed, and with ``--force`` an existing target is replaced only
once the new one is complete.  Progress bars (file name, bar, size, speed, time left) go to
stderr, and only when asked for (table mode).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._archive import UnsafeArchiveError, extract
from ._errors import CliError

__all__ = ["CHUNK_SIZE", "fetch_and_extract"]

CHUNK_SIZE = 1 << 20  # bytes between progress updates, and per read when draining
TIMEOUT_S = 30.0


@contextmanager
def _progress(show: bool, console: Any = None) -> Iterator[Any]:
    """A rich Progress on stderr (or ``console``) laid out like rich's downloader
    example, or None (not asked for, or not a terminal)."""
    if not show:
        yield None
        return
    if console is None:
        from ._output import stderr_console

        console = stderr_console()
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(bar_width=None),
        TextColumn("{task.percentage:>3.0f}%", markup=False),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        yield progress


class _Body:
    """An httpx response body as the read-only file that tarfile's stream mode
    reads; counts the bytes and reports the running count to ``on_bytes`` (every
    ``CHUNK_SIZE`` bytes: per network chunk would cost the download ~5%)."""

    def __init__(self, response: Any, on_bytes: Callable[[int], None] | None) -> None:
        self._chunks = response.iter_bytes()
        self._pending = b""
        self._on_bytes = on_bytes
        self._reported = 0
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = chunk
            self.count += len(chunk)
            if self._on_bytes is not None and self.count - self._reported >= CHUNK_SIZE:
                self._reported = self.count
                self._on_bytes(self.count)
        if 0 <= size < len(self._pending):
            data, self._pending = self._pending[:size], self._pending[size:]
        else:
            data, self._pending = self._pending, b""
        return data

    def drain(self) -> None:
        """Read what follows the archive's end (padding): a body that is cut short
        raises here, as the transport checks Content-Length."""
        while self.read(CHUNK_SIZE):
            pass


def fetch_and_extract(url: str, target: Path, *, show_progress: bool, label: str = "", console: Any = None) -> int:
    """Download the archive at ``url`` and extract it to ``target`` as it arrives.

    The archive is never stored: it is extracted while it streams in, into a
    work directory next to ``target`` that is renamed to ``target`` once the
    whole body has arrived.  ``console`` replaces the stderr console for the
    progress bars.  Returns the archive size in bytes.  Raises
    :class:`CliError` for every failure the user can act on.
    """
    import httpx

    output_dir = target.parent
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=output_dir))
    try:
        timeout = httpx.Timeout(TIMEOUT_S, connect=10.0)
        with _progress(show_progress, console) as progress:
            try:
                with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
                    response.raise_for_status()
                    length = response.headers.get("content-length", "")
                    total = int(length) if length.isdigit() and int(length) > 0 else None
                    bars = _Bars(progress, label or target.name, total)
                    body = _Body(response, bars.downloaded)
                    extract(body, workdir / "extracted", bars.extracted)
                    body.drain()
                    size = body.count
                    bars.done(size)
            except httpx.HTTPStatusError as exc:
                raise CliError(
                    f"Failed to download checkpoint: HTTP {exc.response.status_code} from the archive URL.",
                    "The signed URL may have expired (they last about 15 minutes); run the "
                    "command again to get a fresh one.",
                ) from exc
            except httpx.HTTPError as exc:
                raise CliError(
                    f"Failed to download checkpoint: {exc}",
                    "Check the network connection to the server and run the command again.",
                ) from exc
            except UnsafeArchiveError as exc:
                raise CliError(
                    f"Refusing to extract an unsafe archive: {exc}",
                    f"Nothing was written to {target}. The archive may be corrupt or "
                    "malicious; tell the server's operator.",
                ) from exc
            except (tarfile.TarError, EOFError) as exc:
                raise CliError(
                    f"Failed to extract archive: {exc}",
                    "The download may be incomplete or corrupt; run the command again.",
                ) from exc
        _replace(workdir / "extracted", target, workdir)
        return size
    except OSError as exc:
        raise CliError(
            f"Failed to save checkpoint: {exc}",
            f"Check that {output_dir} is writable and that the disk has space.",
        ) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Bars:
    """The download bar (archive bytes) and the extraction bar (file bytes
    written), or nothing when ``progress`` is None."""

    def __init__(self, progress: Any, label: str, total: int | None) -> None:
        self._progress = progress
        self._written = 0
        if progress is not None:
            self._download = progress.add_task(label, total=total)
            self._extract = progress.add_task("extracting", total=total)

    def downloaded(self, count: int) -> None:
        if self._progress is not None:
            self._progress.update(self._download, completed=count)

    def extracted(self, member: tarfile.TarInfo) -> None:
        self._written += member.size if member.isfile() else 0
        if self._progress is not None:
            self._progress.update(self._extract, completed=self._written)

    def done(self, count: int) -> None:
        if self._progress is not None:
            self._progress.update(self._download, total=count, completed=count)
            self._progress.update(self._extract, total=self._written, completed=self._written)


def _replace(new: Path, target: Path, workdir: Path) -> None:
    """Move ``new`` to ``target``; an existing target (``--force``) goes last."""
    if target.exists() or target.is_symlink():
        old = workdir / "previous"
        os.rename(target, old)
        try:
            os.rename(new, target)
        except OSError:
            os.rename(old, target)  # put the old one back
            raise
    else:
        os.rename(new, target)
