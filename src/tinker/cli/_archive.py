"""Safe extraction of a checkpoint archive (a tar file, plain or compressed).

Every member is checked before anything is written; one bad member refuses the
whole archive.  Refused: absolute names, names with a ``..`` component, links
whose target leaves the extraction directory, and anything that is not a
regular file, a directory or a link (devices, FIFOs, ...).  Extraction then
uses tarfile's ``data`` filter as a second line of defence: it resolves link
targets on disk, so even a link chain cannot write outside the target.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["UnsafeArchiveError", "check_member", "extract"]


class UnsafeArchiveError(Exception):
    """The archive holds a member that could write outside the target."""


def _escapes(path: str) -> bool:
    return path == ".." or path.startswith("../")


def check_member(member: tarfile.TarInfo) -> None:
    """Raise :class:`UnsafeArchiveError` unless ``member`` stays inside the target."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{name!r} has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise UnsafeArchiveError(f"{name!r} refers to a parent directory ('..')")
    if member.issym():
        target = member.linkname
        if target.startswith("/") or os.path.isabs(target):
            raise UnsafeArchiveError(f"{name!r} is a symlink to an absolute path ({target})")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if _escapes(resolved):
            raise UnsafeArchiveError(f"{name!r} is a symlink pointing outside the target ({target})")
    elif member.islnk():
        target = member.linkname
        if target.startswith("/") or os.path.isabs(target) or _escapes(posixpath.normpath(target)):
            raise UnsafeArchiveError(f"{name!r} is a hard link pointing outside the target ({target})")
    elif member.ischr() or member.isblk():
        raise UnsafeArchiveError(f"{name!r} is a device file")
    elif member.isfifo():
        raise UnsafeArchiveError(f"{name!r} is a FIFO")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{name!r} has an unsupported type ({member.type!r})")


def extract(
    archive: Path,
    destination: Path,
    on_start: Callable[[int], None] | None = None,
    on_member: Callable[[int], None] | None = None,
) -> int:
    """Check every member of ``archive``, then extract it into ``destination``.

    ``on_start(total_bytes)`` is called once after the check, and
    ``on_member(size)`` after each member.  Returns the number of members.
    Raises :class:`UnsafeArchiveError` (nothing extracted) or
    :class:`tarfile.TarError`.
    """
    with tarfile.open(archive, mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member)
        if on_start is not None:
            on_start(sum(m.size for m in members if m.isfile()))
        destination.mkdir(parents=True, exist_ok=True)
        for member in members:
            try:
                tar.extract(member, destination, filter="data")
            except tarfile.FilterError as exc:
                raise UnsafeArchiveError(f"{member.name!r}: {exc}") from exc
            if on_member is not None:
                on_member(member.size if member.isfile() else 0)
    return len(members)
