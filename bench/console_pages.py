"""Server time of the web console's pages and JSON on a large database.

    python bench/console_pages.py [--runs 1000] [--checkpoints 10000] [--steps 200] [--rounds 30]

Builds a SQLite database in a temporary home with one tenant owning ``--runs``
training runs (in sessions of 10), ``--checkpoints`` checkpoints spread over them
(a third sampler checkpoints), ``--steps`` steps of 4 metrics per run, sampling
activity for every tenth run, plus one long run at the retention limit
(``MAX_ROWS_PER_RUN`` metric rows). Then times every console endpoint through the
app in-process (Starlette's TestClient: routing, queries, rendering, no network),
``--rounds`` times each after 3 warm-up calls, and prints p50 / p95 / max in
milliseconds. The target is < 300 ms for every page.

A second part times what recording costs a training step: ``FutureHub.resolve`` of a
forward_backward result (one datum of 128 tokens) and of an optim_step result on
the same database, with and without the metrics hook, alternating.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tinker_server import wire
from tinker_server.app import create_app
from tinker_server.auth import owner_for_key
from tinker_server.db import (
    CheckpointRow,
    Database,
    RunMetricRow,
    SamplerActivityRow,
    SamplerRow,
    SessionRow,
    TrainingRunRow,
)
from tinker_server.futures import FutureHub
from tinker_server.run_metrics import MAX_ROWS_PER_RUN, RunMetrics
from tinker_server.settings import Settings

KEY = "tml-bench"
MODEL = "bench/model"
KINDS = ("training", "sampler", "training")
DIRS = {"training": "weights", "sampler": "sampler_weights"}


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build(db: Database, runs: int, checkpoints: int, steps: int) -> tuple[str, str]:
    """Fill the database; returns (a typical run id, the long run id)."""
    owner = owner_for_key(KEY)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    sessions: list[dict[str, Any]] = []
    run_rows: list[dict[str, Any]] = []
    for i in range(runs + 1):
        session_id = f"{i // 10:08x}-0000-4000-8000-000000000000"
        if i % 10 == 0:
            sessions.append(
                dict(
                    id=session_id,
                    owner=owner,
                    tags=[],
                    user_metadata=None,
                    sdk_version="0.38.0",
                    created_at=start + dt.timedelta(minutes=i),
                    last_heartbeat=start + dt.timedelta(minutes=i + 5),
                    expired=i % 20 == 0,
                    display_name=None,
                    project_id=None,
                    finished_reason=None,
                )
            )
        run_rows.append(
            dict(
                id=f"{session_id}:train:{i % 10}",
                owner=owner,
                session_id=session_id,
                model_seq_id=i % 10,
                base_model=MODEL,
                lora_rank=32,
                lora_config={"rank": 32},
                user_metadata=None,
                created_at=start + dt.timedelta(minutes=i),
                last_request_time=start + dt.timedelta(minutes=i + 3),
                corrupted=False,
                optimizer_config=None,
                last_seq_id=2 * steps,
                unloaded_reason=None if i % 3 else "the server restarted",
            )
        )
    long_run = run_rows[-1]["id"]
    ckpt_rows = []
    for j in range(checkpoints):
        run = run_rows[j % runs]
        kind = KINDS[j % 3]
        name = f"ckpt-{j:06d}"
        ckpt_rows.append(
            dict(
                run_id=run["id"],
                owner=owner,
                checkpoint_id=f"{DIRS[kind]}/{name}",
                checkpoint_type=kind,
                time=start + dt.timedelta(seconds=j),
                tinker_path=f"tinker://{run['id']}/{DIRS[kind]}/{name}",
                size_bytes=1_000_000 + j,
                public=j % 17 == 0,
                expires_at=None,
                user_metadata=None,
            )
        )
    samplers, activity = [], []
    for i in range(0, runs, 10):
        run = run_rows[i]
        sampler_id = f"{run['session_id']}:sample:{i}"
        samplers.append(
            dict(
                id=sampler_id,
                owner=owner,
                session_id=run["session_id"],
                base_model=MODEL,
                model_path=None,
                has_adapter=True,
                source_run_id=run["id"],
                created_at=start,
                unloaded_reason=None,
            )
        )
        activity.append(
            dict(
                sampler_id=sampler_id,
                owner=owner,
                run_id=run["id"],
                requests=100,
                sequences=800,
                tokens=51200,
                first_time=start,
                last_time=start,
            )
        )
    with db.engine.begin() as conn:
        conn.execute(sa.insert(SessionRow), sessions)
        conn.execute(sa.insert(TrainingRunRow), run_rows)
        conn.execute(sa.insert(CheckpointRow), ckpt_rows)
        conn.execute(sa.insert(SamplerRow), samplers)
        conn.execute(sa.insert(SamplerActivityRow), activity)

    def metric_rows(run_id: str, n_steps: int, names: list[tuple[str, str]]) -> Any:
        for step in range(1, n_steps + 1):
            for kind, name in names:
                yield dict(
                    run_id=run_id,
                    step=step,
                    seq_id=2 * step,
                    time=start,
                    kind=kind,
                    name=name,
                    value=1.0 / step + 0.001 * len(name),
                )

    typical = [
        ("forward_backward", "loss:sum"),
        ("optim_step", "step:max"),
        ("optim_step", "learning_rate:mean"),
        ("optim_step", "grad_norm:mean"),
    ]
    batch: list[dict[str, Any]] = []
    with db.engine.begin() as conn:
        for run in run_rows[:-1]:
            batch.extend(metric_rows(run["id"], steps, typical))
            if len(batch) > 50_000:
                conn.execute(sa.insert(RunMetricRow), batch)
                batch.clear()
        wide = typical + [("forward_backward", f"extra_{k}:mean") for k in range(4)]
        batch.extend(metric_rows(long_run, MAX_ROWS_PER_RUN // len(wide), wide))
        conn.execute(sa.insert(RunMetricRow), batch)
    return run_rows[runs // 2]["id"], long_run


def timed(call: Callable[[], Any], rounds: int) -> list[float]:
    for _ in range(3):
        call()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def pages(client: TestClient, typical: str, long_run: str, rounds: int) -> list[tuple[str, list[float], int]]:
    headers = {"X-API-Key": KEY}
    endpoints = [
        ("page shell  /console", "/console"),
        ("runs, first page (HTML)", "/console/fragments/runs"),
        ("runs, last page (HTML)", "/console/fragments/runs?offset=975"),
        ("runs, first page (JSON)", "/api/v1/console/runs"),
        ("run, 200 steps (HTML)", f"/console/fragments/runs/{typical}"),
        ("run, 200 steps (JSON)", f"/api/v1/console/runs/{typical}"),
        (f"run, {MAX_ROWS_PER_RUN // 1000}k metric rows (HTML)", f"/console/fragments/runs/{long_run}"),
        (f"run, {MAX_ROWS_PER_RUN // 1000}k metric rows (JSON)", f"/api/v1/console/runs/{long_run}"),
        ("sessions, first page (HTML)", "/console/fragments/sessions"),
        ("sessions, first page (JSON)", "/api/v1/console/sessions"),
        ("queue (HTML)", "/console/fragments/queue"),
        ("playground models (HTML)", "/console/fragments/playground"),
        ("download link (JSON)", f"/api/v1/console/runs/{typical}/checkpoints/weights/ckpt-000500/download"),
    ]
    results = []
    for label, path in endpoints:
        response = client.get(path, headers=headers)
        assert response.status_code == 200, (path, response.status_code, response.text[:200])
        results.append(
            (label, timed(functools.partial(client.get, path, headers=headers), rounds), len(response.content))
        )
    return results


def recording(db: Database, rounds: int) -> list[tuple[str, float, float]]:
    """Median µs of FutureHub.resolve with and without the metrics hook, alternating."""
    plain, hooked = FutureHub(db), FutureHub(db)
    hooked.on_resolved.append(RunMetrics(db).record)
    run_id = db_run = "bench-record:train:0"
    with db.session() as s:
        now = dt.datetime.now(dt.UTC)
        s.add(
            TrainingRunRow(
                id=db_run,
                owner="o",
                session_id="bench-record",
                model_seq_id=0,
                base_model=MODEL,
                lora_rank=8,
                lora_config={"rank": 8},
                user_metadata=None,
                created_at=now,
                last_request_time=now,
            )
        )
    fb = wire.TrainResult("cross_entropy", [{"logprobs": np.zeros(128, np.float32)}], {"loss:sum": 1.5})
    optim = {"metrics": {"step:max": 1.0, "learning_rate:mean": 1e-4, "grad_norm:mean": 0.5}, "type": "optim_step"}
    times: dict[tuple[str, bool], list[float]] = {}
    seq = 0
    for i in range(rounds):
        for hub, with_hook in ((plain, False), (hooked, True)) if i % 2 else ((hooked, True), (plain, False)):
            for kind, result in (("forward_backward", fb), ("optim_step", optim)):
                seq += 1
                request_id = f"req-{seq}"
                with db.session() as s:
                    hub.add(s, request_id=request_id, owner="o", kind=kind, model_id=run_id, seq_id=seq)
                t0 = time.perf_counter()
                hub.resolve(request_id, result)
                times.setdefault((kind, with_hook), []).append((time.perf_counter() - t0) * 1e6)
    return [
        (kind, statistics.median(times[(kind, False)]), statistics.median(times[(kind, True)]))
        for kind in ("forward_backward", "optim_step")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = pathlib.Path(tmp)
        settings = Settings(home=home, models=[MODEL])
        db = Database(settings.resolved_database_url)
        db.create_tables()
        t0 = time.perf_counter()
        typical, long_run = build(db, args.runs, args.checkpoints, args.steps)
        with db.engine.connect() as conn:
            metric_rows = conn.execute(sa.select(sa.func.count()).select_from(RunMetricRow)).scalar()
        size = os.path.getsize(home / "tinker.db") / 2**20
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} logical cores, Python {platform.python_version()}, "
            f"SQLite {sa.__version__ and __import__('sqlite3').sqlite_version}"
        )
        print(
            f"database: {args.runs} runs, {args.checkpoints} checkpoints, {metric_rows} metric rows, "
            f"{size:.0f} MiB, built in {time.perf_counter() - t0:.1f} s"
        )

        def no_engine(name: str) -> Any:
            raise RuntimeError("the console benchmark loads no model")

        with TestClient(create_app(settings, engine_loader=no_engine)) as client:
            results = pages(client, typical, long_run, args.rounds)
        print(f"\n{'endpoint':40} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'bytes':>9}")
        for label, times, size_bytes in results:
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(f"{label:40} {statistics.median(times):8.1f} {p95:8.1f} {times[-1]:8.1f} {size_bytes:9d}")
        print("\nrecording cost per resolved request (median µs, alternating, same database):")
        print(f"{'request':20} {'without hook':>14} {'with hook':>12} {'added':>8}")
        for kind, without, with_hook in recording(db, 400):
            print(f"{kind:20} {without:14.0f} {with_hook:12.0f} {with_hook - without:8.0f}")
        db.dispose()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
