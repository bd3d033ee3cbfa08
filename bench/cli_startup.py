"""Start-up time of the ``tinker`` CLI, side by side with a bare interpreter.

    python bench/cli_startup.py [--runs 21]

Runs each command ``--runs`` times, interleaved (so machine noise hits all of
them alike), after one warm-up run each (which also writes the .pyc files),
and prints the median and the minimum wall time, and the median's ratio to
``python -c pass``.  Uses the installed ``tinker`` console script next to the
interpreter; without one, an equivalent script (pip's template) is generated
in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# What pip writes for `tinker = "tinker.cli.__main__:cli"`.
_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from tinker.cli.__main__ import cli
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(cli())
"""


def console_script(tmp: Path) -> tuple[str, str]:
    installed = Path(sys.executable).with_name("tinker")
    if installed.exists():
        return str(installed), "installed console script"
    script = tmp / "tinker"
    script.write_text(_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    return str(script), "generated console script (pip's template; package not installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its .pyc files
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))

    with tempfile.TemporaryDirectory() as tmp:
        tinker, how = console_script(Path(tmp))
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "tinker --help": [tinker, "--help"],
            "tinker version": [tinker, "version"],
            "tinker run list --help": [tinker, "run", "list", "--help"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():  # warm-up (and .pyc writing)
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        for _ in range(args.runs):
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                times[name].append(time.perf_counter() - start)

    base = statistics.median(times["python -c pass"])
    print(f"tinker CLI start-up, {args.runs} runs each, interleaved ({how})")
    print(f"python: {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    print(f"{'command':<26}{'median ms':>10}{'min ms':>9}{'x python':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<26}{median * 1000:>10.1f}{min(values) * 1000:>9.1f}{median / base:>10.2f}")
    help_ms = statistics.median(times["tinker --help"]) * 1000
    print()
    print(f"tinker --help: {help_ms:.1f} ms median (budget 50 ms): {'OK' if help_ms < 50 else 'OVER BUDGET'}")


if __name__ == "__main__":
    main()
