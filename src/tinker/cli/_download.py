"""Downloading a checkpoint archive and extracting it into place.

The archive is streamed with httpx into a work directory created next to the
target (``<output>/.<name>.XXXX.partial``), extracted there, and only then
renamed to the target.  An interrupted or failed download or extraction
therefore leaves no half-written target behind, the work directory is always
removed, and with ``--force`` an existing target is replaced only once the new
one is complete.  Progress bars (file name, bar, size, speed, time left) go to
stderr, and only when asked for (table mode).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._archive import UnsafeArchiveError, extract
from ._errors import CliError

__all__ = ["CHUNK_SIZE", "download_to_file", "fetch_and_extract"]

CHUNK_SIZE = 1 << 20  # bytes per read from the response
TIMEOUT_S = 30.0


@contextmanager
def _progress(show: bool) -> Iterator[Any]:
    """A rich Progress on stderr laid out like rich's downloader example, or None
    (not asked for, or stderr is not a terminal)."""
    if not show:
        yield None
        return
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


def download_to_file(url: str, path: Path, progress: Any = None, label: str = "") -> int:
    """Stream ``url`` into ``path``; return the number of bytes written.

    Raises :class:`httpx.HTTPError` (transport or HTTP status) or :class:`OSError`.
    """
    import httpx

    timeout = httpx.Timeout(TIMEOUT_S, connect=10.0)
    with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
        response.raise_for_status()
        length = response.headers.get("content-length")
        total = int(length) if length and length.isdigit() and int(length) > 0 else None
        task = progress.add_task(label, total=total) if progress is not None else None
        written = 0
        with open(path, "wb") as file:
            for chunk in response.iter_bytes(CHUNK_SIZE):
                file.write(chunk)
                written += len(chunk)
                if task is not None:
                    progress.update(task, completed=response.num_bytes_downloaded)
        if task is not None:
            progress.update(task, total=total or written, completed=total or written)
    return written


def fetch_and_extract(url: str, target: Path, *, show_progress: bool, label: str = "") -> int:
    """Download the archive at ``url`` and extract it to ``target``.

    Returns the archive size in bytes.  Raises :class:`CliError` for every
    failure the user can act on.
    """
    import httpx

    output_dir = target.parent
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=output_dir))
    try:
        archive = workdir / f"{target.name}.tar"
        extracted = workdir / "extracted"
        with _progress(show_progress) as progress:
            try:
                size = download_to_file(url, archive, progress, label=label or archive.name)
            except httpx.HTTPStatusError as exc:
                raise CliError(
                    f"Failed to download checkpoint: HTTP {exc.response.status_code} "
                    f"from the archive URL.",
                    "The signed URL may have expired (they last about 15 minutes); run the "
                    "command again to get a fresh one.",
                ) from exc
            except httpx.HTTPError as exc:
                raise CliError(
                    f"Failed to download checkpoint: {exc}",
                    "Check the network connection to the server and run the command again.",
                ) from exc

            task = None

            def on_start(total: int) -> None:
                nonlocal task
                if progress is not None:
                    task = progress.add_task("extracting", total=total)

            def on_member(size: int) -> None:
                if task is not None:
                    progress.advance(task, size)

            try:
                extract(archive, extracted, on_start, on_member)
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
        archive.unlink()
        _replace(extracted, target, workdir)
        return size
    except OSError as exc:
        raise CliError(
            f"Failed to save checkpoint: {exc}",
            f"Check that {output_dir} is writable and that the disk has space.",
        ) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


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
