"""The server is a distribution of its own that neither ships nor imports the `tinker` package,
so it installs beside the official SDK; our SDK's distribution does not ship the server."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _wheel(project: Path, out: Path) -> list[str]:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(project)],
        check=True,
        capture_output=True,
    )
    [wheel] = out.glob("*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_server_wheel_holds_only_tinker_server(tmp_path: Path) -> None:
    names = _wheel(ROOT / "server", tmp_path)
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"tinker_server"}, top
    assert "tinker_server/wire/tinker_wire.proto" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "tinker-server = tinker_server.cli:main"
        in zipfile.ZipFile(next(tmp_path.glob("*.whl"))).read(entry_points).decode()
    )


def test_sdk_wheel_does_not_ship_the_server(tmp_path: Path) -> None:
    names = _wheel(ROOT, tmp_path)
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"tinker"}, top


def test_serving_imports_no_tinker_module(tmp_path: Path) -> None:
    code = f"""
import sys
from fastapi.testclient import TestClient
from tinker_server.app import create_app
from tinker_server.settings import Settings
with TestClient(create_app(Settings(home={str(tmp_path)!r}, models=["tinker-test/tiny-llama"]))) as client:
    assert client.post("/api/v1/client/config", json={{}}, headers={{"X-API-Key": "tml-x"}}).status_code == 200
loaded = sorted(m for m in sys.modules if m == "tinker" or m.startswith("tinker."))
assert not loaded, loaded
print("clean")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "clean" in proc.stdout, proc.stderr[-3000:]
