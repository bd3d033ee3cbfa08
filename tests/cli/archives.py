"""Crafted tar archives for the extraction tests (benign and malicious)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Literal

ADAPTER_FILES = {
    "adapter_config.json": b'{"r": 4, "lora_alpha": 8}',
    "adapter_model.safetensors": b"\x00" * 4096,
}


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, io.BytesIO(data)


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644 if kind not in (tarfile.SYMTYPE, tarfile.DIRTYPE) else 0o755
    return info


def write_archive(
    path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: Literal["w", "w:gz"] = "w"
) -> Path:
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tuple):
                tar.addfile(*_file(*member))
            else:
                tar.addfile(member)
    return path


def benign(path: Path, mode: Literal["w", "w:gz"] = "w:gz") -> Path:
    return write_archive(
        path,
        [
            _special("nested", tarfile.DIRTYPE),
            *ADAPTER_FILES.items(),
            ("nested/notes.txt", b"hello"),
            _special("latest", tarfile.SYMTYPE, "adapter_config.json"),
            _special("nested/up", tarfile.SYMTYPE, "../adapter_config.json"),
            _special("copy.json", tarfile.LNKTYPE, "adapter_config.json"),
        ],
        mode,
    )


# name -> the members of an archive that must be refused (each also holds a
# harmless file first, to show that nothing at all is extracted).
MALICIOUS: dict[str, list[tarfile.TarInfo | tuple[str, bytes]]] = {
    "absolute path": [("ok.txt", b"ok"), ("/tmp/tinker-cli-test-absolute", b"pwned")],
    "parent reference": [("ok.txt", b"ok"), ("../escaped.txt", b"pwned")],
    "nested parent reference": [("ok.txt", b"ok"), ("a/../../escaped.txt", b"pwned")],
    "symlink to /etc": [("ok.txt", b"ok"), _special("etc", tarfile.SYMTYPE, "/etc")],
    "symlink outside": [("ok.txt", b"ok"), _special("up", tarfile.SYMTYPE, "../..")],
    "hard link outside": [("ok.txt", b"ok"), _special("passwd", tarfile.LNKTYPE, "/etc/passwd")],
    "character device": [("ok.txt", b"ok"), _special("null", tarfile.CHRTYPE)],
    "block device": [("ok.txt", b"ok"), _special("disk", tarfile.BLKTYPE)],
    "fifo": [("ok.txt", b"ok"), _special("pipe", tarfile.FIFOTYPE)],
}

# Passes the member-by-member check (each link alone stays inside), but
# writing through the chain would escape: the data filter must stop it.
LINK_CHAIN: list[tarfile.TarInfo | tuple[str, bytes]] = [
    _special("here", tarfile.SYMTYPE, "."),
    _special("chain", tarfile.SYMTYPE, "here/.."),
    ("chain/escaped.txt", b"pwned"),
]
