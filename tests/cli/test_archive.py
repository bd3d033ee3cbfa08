"""Safe extraction of checkpoint archives (tinker.cli._archive)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Literal

import pytest

from tinker.cli._archive import UnsafeArchiveError, extract

from .archives import ADAPTER_FILES, LINK_CHAIN, MALICIOUS, benign, write_archive


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_extracts_a_benign_archive(tmp_path: Path, mode: Literal["w", "w:gz"]) -> None:
    archive = benign(tmp_path / "a.tar", mode)
    sizes: list[int] = []
    totals: list[int] = []
    count = extract(archive, tmp_path / "out", totals.append, sizes.append)
    out = tmp_path / "out"
    for name, data in ADAPTER_FILES.items():
        assert (out / name).read_bytes() == data
    assert (out / "nested" / "notes.txt").read_text() == "hello"
    assert os.readlink(out / "latest") == "adapter_config.json"
    assert (out / "nested" / "up").read_bytes() == ADAPTER_FILES["adapter_config.json"]
    assert (out / "copy.json").read_bytes() == ADAPTER_FILES["adapter_config.json"]
    assert count == 7
    assert totals == [sum(len(d) for d in ADAPTER_FILES.values()) + 5]
    assert sum(sizes) == totals[0]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_refuses_malicious_members_and_writes_nothing(tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = write_archive(tmp_path / "evil.tar", MALICIOUS[case])
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError):
        extract(archive, work / "out")
    assert _snapshot(tmp_path) == before  # not even ok.txt, nor the output directory
    assert not Path("/tmp/tinker-cli-test-absolute").exists()


def test_link_chain_is_stopped_by_the_data_filter(tmp_path: Path) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = write_archive(tmp_path / "chain.tar", LINK_CHAIN)
    with pytest.raises(UnsafeArchiveError):
        extract(archive, work / "out")
    assert not (work / "escaped.txt").exists()
    assert not any(p.name == "escaped.txt" for p in tmp_path.rglob("*"))


def test_corrupt_archive_raises_tar_error(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar"
    archive.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(tarfile.TarError):
        extract(archive, tmp_path / "out")
