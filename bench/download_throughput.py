"""Checkpoint download throughput over loopback: ``tinker checkpoint download``
against a plain httpx GET of the same signed URL.

    python bench/download_throughput.py [--size-mb 100] [--rounds 3]

Starts ``tinker serve`` (tiny test model) in a subprocess with a temporary
home, makes a sampler checkpoint through the SDK and pads its folder with
``--size-mb`` of random bytes, so the server's archive is that large.  Then, in
each round, with a fresh signed URL each time:

* ``plain GET``: ``httpx.stream`` into a file, nothing else (the baseline);
* ``CLI download + extract``: the CLI's own code in this process
  (``tinker.cli._download.fetch_and_extract``: stream the archive, extract it
  as it arrives, rename into place) with its rich progress bars drawn to a
  terminal console (written to /dev/null);
* ``tinker checkpoint download``: the whole command in a subprocess (start-up,
  session, signed URL, download, safe extraction, rename), JSON mode.

Throughput is archive bytes / wall time; the ratio is against the plain GET's
median.  Target: the CLI's download at >= 0.8x the plain GET.  The difference
between the last two rows is the command's fixed cost (Python start-up,
imports, session, signed URL), printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

MODEL = "tinker-test/tiny-llama"
API_KEY = "tml-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "tinker.cli", "serve", "--port", str(port), "--home", str(home)]
    args += ["--model", MODEL, "--log-level", "warning"]
    log = open(home.parent / "server.log", "wb")  # noqa: SIM115 - the server's, for its lifetime
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(home.parent / 'server.log').read_text()}")
        try:
            if httpx.get(f"{url}/api/v1/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.1)


def padded_checkpoint(url: str, home: Path, size_mb: int) -> tuple[str, int]:
    import tinker

    service = tinker.ServiceClient(api_key=API_KEY, base_url=url)
    trainer = service.create_lora_training_client(base_model=MODEL, rank=4)
    path = trainer.save_weights_for_sampler("big").result().path
    assert trainer.model_id is not None
    folder = home / "checkpoints" / trainer.model_id / "sampler_weights" / "big"
    assert folder.is_dir(), folder
    with open(folder / "padding.bin", "wb") as file:
        file.writelines(os.urandom(1 << 20) for _ in range(size_mb))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return path, size


def signed_url(url: str, path: str) -> str:
    import tinker

    rest = tinker.ServiceClient(api_key=API_KEY, base_url=url).create_rest_client()
    return str(rest.get_checkpoint_archive_url_from_tinker_path(path).result().url)


def plain_get(url: str, dest: Path) -> int:
    import httpx

    written = 0
    with httpx.stream("GET", url, timeout=60) as response, open(dest, "wb") as file:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            file.write(chunk)
            written += len(chunk)
    return written


def cli_fetch_and_extract(url: str, target: Path) -> int:
    """The CLI's own download code, in this process: stream, extract, rename."""
    from rich.console import Console

    from tinker.cli._download import fetch_and_extract

    with open(os.devnull, "w") as devnull:
        console = Console(file=devnull, force_terminal=True, width=120)
        return fetch_and_extract(url, target, show_progress=True, label="big", console=console)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    work = Path(tempfile.mkdtemp(prefix="tinker-dl-bench-"))
    home = work / "home"
    server, url = start_server(home, env)
    try:
        path, folder_size = padded_checkpoint(url, home, args.size_mb)
        results: dict[str, list[float]] = {
            "plain GET": [],
            "CLI download + extract": [],
            "tinker checkpoint download": [],
        }
        archive_size = 0
        for _ in range(args.rounds):
            dest = work / "plain.tar"
            signed = signed_url(url, path)
            start = time.perf_counter()
            archive_size = plain_get(signed, dest)
            results["plain GET"].append(time.perf_counter() - start)
            dest.unlink()

            signed = signed_url(url, path)
            start = time.perf_counter()
            assert cli_fetch_and_extract(signed, work / "cli") == archive_size
            results["CLI download + extract"].append(time.perf_counter() - start)
            shutil.rmtree(work / "cli")

            out = work / "out"
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tinker.cli",
                    "-f",
                    "json",
                    "checkpoint",
                    "download",
                    path,
                    "-o",
                    str(out),
                    "--force",
                ],
                env={**env, "TINKER_BASE_URL": url, "TINKER_API_KEY": API_KEY},
                capture_output=True,
                text=True,
                check=False,
            )
            results["tinker checkpoint download"].append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            assert json.loads(proc.stdout)["file_size_bytes"] == archive_size
            shutil.rmtree(out)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    base = archive_size / statistics.median(results["plain GET"])
    print(
        f"checkpoint archive: {archive_size / 2**20:.1f} MiB ({folder_size / 2**20:.1f} MiB of files), "
        f"loopback, {args.rounds} rounds, median"
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    print(f"{'path':<30}{'median s':>9}{'MiB/s':>9}{'x plain':>9}")
    for name, values in results.items():
        median = statistics.median(values)
        rate = archive_size / median
        print(f"{name:<30}{median:>9.3f}{rate / 2**20:>9.1f}{rate / base:>9.2f}")
    fixed = statistics.median(results["tinker checkpoint download"]) - statistics.median(
        results["CLI download + extract"]
    )
    print()
    print(f"fixed cost of the command (start-up, imports, session, signed URL): {fixed:.3f} s")


if __name__ == "__main__":
    main()
