"""Safe extraction of checkpoint archives (tinker.cli._archive), read as a stream."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Literal

import pytest

from tinker.cli._archive import UnsafeArchiveError, extract

from .archives import ADAPTER_FILES, LINK_CHAIN, MALICIOUS, benign, write_archive


class _Trickle(io.RawIOBase):
    """Only ``read`` (no seek, no tell), a few bytes at a time: like a response body."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self._data, self._step, self._at = data, step, 0

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._at : self._at + n]
        self._at += len(chunk)
        return chunk


def _stream(archive: Path) -> _Trickle:
    return _Trickle(archive.read_bytes())


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_extracts_a_benign_archive(tmp_path: Path, mode: Literal["w", "w:gz"]) -> None:
    archive = benign(tmp_path / "a.tar", mode)
    seen: list[tarfile.TarInfo] = []
    count = extract(_stream(archive), tmp_path / "out", seen.append)
    out = tmp_path / "out"
    for name, data in ADAPTER_FILES.items():
        assert (out / name).read_bytes() == data
    assert (out / "nested" / "notes.txt").read_text() == "hello"
    assert os.readlink(out / "latest") == "adapter_config.json"
    assert (out / "nested" / "up").read_bytes() == ADAPTER_FILES["adapter_config.json"]
    assert (out / "copy.json").read_bytes() == ADAPTER_FILES["adapter_config.json"]
    assert count == len(seen) == 7
    assert sum(m.size for m in seen if m.isfile()) == sum(len(d) for d in ADAPTER_FILES.values()) + 5


def test_a_read_only_directory_does_not_block_its_files(tmp_path: Path) -> None:
    folder = tarfile.TarInfo("ro")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o555
    archive = write_archive(tmp_path / "ro.tar", [folder, ("ro/file.txt", b"data")])
    extract(_stream(archive), tmp_path / "out")
    assert (tmp_path / "out" / "ro" / "file.txt").read_bytes() == b"data"


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_refuses_malicious_members_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = write_archive(tmp_path / "evil.tar", MALICIOUS[case])
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        extract(_stream(archive), work / "out")
    assert _snapshot(tmp_path) == before  # ok.txt and the output directory removed again
    assert not Path("/tmp/tinker-cli-test-absolute").exists()


def test_link_chain_is_stopped_by_the_data_filter(tmp_path: Path) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = write_archive(tmp_path / "chain.tar", LINK_CHAIN)
    with pytest.raises(UnsafeArchiveError):
        extract(_stream(archive), work / "out")
    assert not (work / "escaped.txt").exists()
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))
    assert not (work / "out").exists()


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_truncated_archive_raises_and_leaves_nothing(tmp_path: Path, mode: Literal["w", "w:gz"]) -> None:
    archive = write_archive(tmp_path / "big.tar", [("a.bin", os.urandom(50_000)), ("b.bin", b"b")], mode)
    data = archive.read_bytes()
    with pytest.raises((tarfile.TarError, EOFError)):
        extract(_Trickle(data[: len(data) // 2]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_archive_raises_tar_error(tmp_path: Path) -> None:
    with pytest.raises(tarfile.TarError):
        extract(_Trickle(b"this is not a tar file" * 100), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_destination_is_not_touched(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        extract(_stream(benign(tmp_path / "a.tar")), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
