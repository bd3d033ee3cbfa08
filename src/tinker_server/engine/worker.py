"""The engine worker process: ``python -m tinker_server.engine.worker FD``.

Started by :class:`~.process.ProcessEngine` with one end of a socket pair as ``FD``.
Protocol (pickled tuples ``(kind, payload)``):

* in ``("init", WorkerSpec)`` → out ``("ready", ModelInfo)`` or ``("failed", error)``;
* in ``("run", commands, streaming)`` → out ``("token", (index, TokenEvent))`` for the
  sampling commands whose indices are in ``streaming``, then ``("done", (Report,
  resident adapters))``, or ``("crash", text)`` when the round raised unexpectedly;
* in ``("stop", None)`` or end of file → exit.

``python -m tinker_server.engine.worker --check DIR`` only checks a model directory's config
(exit 1 with the reason on stderr when the engine cannot serve it).

The worker ignores SIGINT: the server that started it decides when it stops.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .api import Sample
from .errors import EngineError, ModelLoadError
from .host import EngineHost
from .process import WorkerSpec

log = logging.getLogger("tinker_server.engine.worker")


def load_host(spec: WorkerSpec) -> EngineHost:
    """The engine ``spec`` describes, loaded in this process, behind its host."""
    if spec.torch_threads is not None:
        import torch

        torch.set_num_threads(spec.torch_threads)
    from .engine import load_engine

    engine = load_engine(
        spec.model_name,
        home=pathlib.Path(spec.home),
        device=spec.device,
        dtype=spec.dtype,
        max_tokens_per_microbatch=spec.max_tokens_per_microbatch,
        packed_weights=spec.packed_weights,
    )
    return EngineHost(engine, spec.residency)


def _streaming(commands: list[Any], streaming: list[int], conn: Connection) -> list[Any]:
    out = list(commands)
    for index in streaming:
        command = out[index]
        if isinstance(command, Sample):

            def sink(event: Any, index: int = index) -> None:
                conn.send(("token", (index, event)))

            out[index] = dataclasses.replace(command, job=dataclasses.replace(command.job, on_token=sink))
    return out


def serve(conn: Connection) -> None:
    kind, spec = conn.recv()
    if kind != "init":
        return
    try:
        host = load_host(spec)
    except EngineError as exc:
        conn.send(("failed", exc))
        return
    except Exception as exc:  # reported to the server, which refuses the model's requests
        log.exception("loading %s failed", spec.model_name)
        conn.send(("failed", ModelLoadError(f"could not load base model {spec.model_name}: {exc}")))
        return
    conn.send(("ready", host.info))
    while True:
        try:
            kind, *payload = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        if kind != "run":
            return
        commands, streaming = payload
        try:
            report = host.run(_streaming(commands, streaming, conn))
        except Exception:  # noqa: BLE001 - the round fails, the worker goes on
            text = traceback.format_exc()
            log.error("engine round failed:\n%s", text)
            conn.send(("crash", text.strip().splitlines()[-1]))
            continue
        conn.send(("done", (report, host.resident())))


def check(model_dir: str) -> int:
    """``--check DIR``: refuse a model directory the engine cannot serve, from its config
    (what ``tinker serve`` runs at startup, so the API process needs no transformers)."""
    from .models import check_model_directory

    try:
        check_model_directory(pathlib.Path(model_dir))
    except ModelLoadError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--check":
        sys.exit(check(args[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s engine-worker %(message)s")
    conn = Connection(int(args[0]))
    try:
        serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
