"""Per-run metrics and sampling activity kept by the server (run_metrics.py)."""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tinker_server import wire
from tinker_server.db import Database, RunMetricRow, SamplerActivityRow, TrainingRunRow, utcnow
from tinker_server.futures import Finished, FutureHub
from tinker_server.run_metrics import RunMetrics, load_series

from .conftest import Api, datum, fb_body
from .fake_engine import BAD_TOKEN


def _optim(model_id: str, seq: int, lr: float = 0.1) -> dict[str, Any]:
    return {"adam_params": {"learning_rate": lr}, "model_id": model_id, "seq_id": seq}


def _series(api: Api, run_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    response = api.get(f"console/runs/{run_id}")
    assert response.status_code == 200, response.text
    return {(s["kind"], s["name"]): s for s in response.json()["metrics"]}


def _rows(api: Api, run_id: str) -> list[tuple[Any, ...]]:
    db = api.runtime.db
    with db.session() as s:
        return [
            tuple(row)
            for row in s.execute(
                sa.select(
                    RunMetricRow.step, RunMetricRow.seq_id, RunMetricRow.kind, RunMetricRow.name, RunMetricRow.value
                )
                .where(RunMetricRow.run_id == run_id)
                .order_by(RunMetricRow.pk)
            )
        ]


def test_every_metric_of_each_step_is_kept_with_the_values_the_client_got(api: Api) -> None:
    run = api.create_model(api.session())
    losses, steps = [], []
    for step in range(3):
        losses.append(api.result("forward_backward", fb_body(run, 2 * step + 1))["metrics"]["loss:sum"])
        steps.append(api.result("optim_step", _optim(run, 2 * step + 2))["metrics"])
    series = _series(api, run)
    assert series[("forward_backward", "loss:sum")] == {
        "kind": "forward_backward",
        "name": "loss:sum",
        "steps": [1, 2, 3],
        "values": losses,
        "lows": None,
        "highs": None,
    }
    assert series[("optim_step", "step")]["values"] == [m["step"] for m in steps] == [1.0, 2.0, 3.0]
    assert series[("optim_step", "learning_rate")]["values"] == [0.1, 0.1, 0.1]
    # Raw rows: (step, seq_id, kind, name, value), one per metric per request.
    rows = _rows(api, run)
    assert rows[0] == (1, 1, "forward_backward", "loss:sum", losses[0])
    assert {r[:3] for r in rows if r[2] == "optim_step"} == {
        (1, 2, "optim_step"),
        (2, 4, "optim_step"),
        (3, 6, "optim_step"),
    }


def test_requests_of_one_step_fold_into_one_point_by_their_reduction(api: Api) -> None:
    """Chunks (0.20+ clients) and gradient accumulation: several forward_backward
    requests per optim_step still make one point per step; ``:sum`` adds up."""
    run = api.create_model(api.session())
    per_step = []
    seq = 0
    for _step in range(2):
        total = 0.0
        for _chunk in range(3):
            seq += 1
            total += api.result("forward_backward", fb_body(run, seq))["metrics"]["loss:sum"]
        per_step.append(total)
        seq += 1
        api.result("optim_step", _optim(run, seq))
    # An evaluation forward after the last step belongs to the next one.
    seq += 1
    body = {"forward_input": fb_body(run, seq)["forward_backward_input"], "model_id": run, "seq_id": seq}
    eval_loss = api.result("forward", body)["metrics"]["loss:sum"]
    series = _series(api, run)
    loss = series[("forward_backward", "loss:sum")]
    assert loss["steps"] == [1, 2]
    assert loss["values"] == pytest.approx(per_step, rel=1e-12)  # the database adds them up
    assert series[("forward", "loss:sum")]["steps"] == [3] and series[("forward", "loss:sum")]["values"] == [eval_loss]


def test_a_run_without_optimizer_steps_shows_one_point_per_request(api: Api) -> None:
    run = api.create_model(api.session())
    losses = [api.result("forward_backward", fb_body(run, seq))["metrics"]["loss:sum"] for seq in (1, 2, 3)]
    detail = api.get(f"console/runs/{run}").json()
    assert (detail["metrics_x"], detail["metrics_bucket"]) == ("seq_id", 1)
    loss = _series(api, run)[("forward_backward", "loss:sum")]
    assert loss["steps"] == [1, 2, 3] and loss["values"] == losses


def test_failed_requests_record_nothing(api: Api) -> None:
    run = api.create_model(api.session())
    failed = api.poll(api.ok("forward_backward", fb_body(run, 1, [datum([BAD_TOKEN, 2, 3])]))["request_id"])
    assert "error" in failed
    assert _rows(api, run) == []


def test_sampling_activity_is_counted_per_sampler_and_shown_on_its_run(api: Api) -> None:
    sid = api.session()
    run = api.create_model(sid)
    api.result("forward_backward", fb_body(run, 1))
    path = api.result("save_weights_for_sampler", {"model_id": run, "path": "s", "seq_id": 2})["path"]
    sampler = api.ok("create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0, "model_path": path})[
        "sampling_session_id"
    ]
    for n in (1, 3):
        body = {
            "sampling_session_id": sampler,
            "num_samples": n,
            "prompt": {"chunks": [{"tokens": [1, 2]}]},
            "sampling_params": {"max_tokens": 5},
        }
        api.result("asample", body)
    detail = api.get(f"console/runs/{run}").json()
    assert [
        (a["sampler_id"], a["source"], a["model_path"], a["requests"], a["sequences"], a["tokens"])
        for a in detail["sampling"]
    ] == [(sampler, "checkpoint", path, 2, 4, 20)]
    # Another tenant sees no activity: the run itself is missing for them.
    assert api.as_key("someone-else").get(f"console/runs/{run}").status_code == 404


# -- the recorder on its own ----------------------------------------------------------------


def _db(tmp_path: pathlib.Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'metrics.db'}")
    db.create_tables()
    with db.session() as s:
        now = utcnow()
        s.add(
            TrainingRunRow(
                id="s:train:0",
                owner="o",
                session_id="s",
                model_seq_id=0,
                base_model="m",
                lora_rank=4,
                lora_config={"rank": 4},
                user_metadata=None,
                created_at=now,
                last_request_time=now,
            )
        )
    return db


def _train(loss: float, tokens: int = 3) -> wire.TrainResult:
    return wire.TrainResult("cross_entropy", [{"logprobs": np.zeros(tokens, np.float32)}], {"loss:sum": loss})


def _record(metrics: RunMetrics, db: Database, kind: str, seq: int, result: Any) -> None:
    with db.session() as s:
        metrics.record(s, Finished(f"r{seq}", "o", kind, "s:train:0", seq), result)


def test_nan_is_kept_as_a_gap_and_steps_continue_after_a_restart(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    first = RunMetrics(db)
    _record(first, db, "forward_backward", 1, _train(2.5))
    _record(first, db, "optim_step", 2, {"metrics": {"step:max": 1.0}})
    _record(first, db, "forward_backward", 3, _train(math.nan))
    # A new process: the step count comes back from the table.
    second = RunMetrics(db)
    _record(second, db, "optim_step", 4, {"metrics": {"step:max": 2.0}})
    _record(second, db, "forward_backward", 5, _train(math.inf))
    with db.session() as s:
        series = {(x.kind, x.name): x for x in load_series(s, "s:train:0").series}
    assert series[("forward_backward", "loss:sum")].steps == [1, 2, 3]
    assert series[("forward_backward", "loss:sum")].values == [2.5, None, math.inf]
    assert series[("optim_step", "step:max")].steps == [1, 2]


def _steps(db: Database, kind: str = "forward_backward") -> list[int]:
    with db.session() as s:
        return list(
            s.scalars(sa.select(RunMetricRow.step).where(RunMetricRow.kind == kind).order_by(RunMetricRow.step))
        )


def _train_steps(metrics: RunMetrics, db: Database, steps: int, chunks: int = 1) -> None:
    seq = 0
    for step in range(1, steps + 1):
        for _ in range(chunks):
            seq += 1
            _record(metrics, db, "forward_backward", seq, _train(float(step)))
        seq += 1
        _record(metrics, db, "optim_step", seq, {"metrics": {"step:max": float(step)}})


def test_retention_thins_the_older_half_and_keeps_the_whole_curve(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    metrics = RunMetrics(db, max_rows_per_run=30)
    _train_steps(metrics, db, 20)  # 40 rows
    assert metrics.enforce_retention() == 10
    kept = _steps(db)
    assert kept == [1, 3, 5, 7, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # every second of steps 1-10
    assert _steps(db, "optim_step") == kept
    assert metrics.enforce_retention() == 0  # nothing grew since
    # Growing further thins again, from the oldest; the first and last steps stay.
    more = RunMetrics(db, max_rows_per_run=30)
    seq = 100
    for step in range(21, 31):
        seq += 2
        _record(more, db, "forward_backward", seq, _train(float(step)))
        _record(more, db, "optim_step", seq + 1, {"metrics": {"step:max": float(step)}})
    more.enforce_retention()
    kept = _steps(db)
    assert len(kept) * 2 <= 30 and kept[0] == 1 and kept[-1] == 30


def test_long_runs_are_read_in_buckets_with_their_extremes(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    metrics = RunMetrics(db)
    _train_steps(metrics, db, 40, chunks=2)  # loss:sum of a step = 2 * step
    with db.session() as s:
        exact = load_series(s, "s:train:0")
        reduced = load_series(s, "s:train:0", max_points=10)
    assert exact.bucket == 1 and exact.series[0].values == [2.0 * step for step in range(1, 41)]
    assert reduced.x == "step" and reduced.bucket == 4
    loss = next(x for x in reduced.series if x.name == "loss:sum")
    assert len(loss.steps) == 11  # buckets of steps 1-3, 4-7, ..., 40
    assert loss.steps[1] == 5.5 and loss.values[1] == 2 * 5.5  # the mean of the steps' sums
    assert loss.lows == [None] * 11  # a chunked :sum step has no comparable single value
    step = next(x for x in reduced.series if x.name == "step:max")
    assert step.lows is not None and step.highs is not None
    assert (step.lows[1], step.values[1], step.highs[1]) == (4.0, 5.5, 7.0)


def test_one_series_at_full_resolution_page_by_page(api: Api) -> None:
    run = api.create_model(api.session())
    losses = []
    for step in range(5):
        losses.append(api.result("forward_backward", fb_body(run, 2 * step + 1))["metrics"]["loss:sum"])
        api.result("optim_step", _optim(run, 2 * step + 2))
    params = {"kind": "forward_backward", "name": "loss:sum", "limit": 2}
    first = api.get(f"console/runs/{run}/metrics", params=params).json()
    assert first == {
        "x": "step",
        "kind": "forward_backward",
        "name": "loss:sum",
        "steps": [1, 2],
        "values": losses[:2],
        "next_after": 2,
    }
    rest = api.get(f"console/runs/{run}/metrics", params={**params, "after": 2, "limit": 10}).json()
    assert rest["steps"] == [3, 4, 5] and rest["values"] == losses[2:] and rest["next_after"] is None
    assert api.as_key("someone-else").get(f"console/runs/{run}/metrics", params=params).status_code == 404


def test_throughput_counts_tokens_of_recent_results(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    now = [100.0]
    metrics = RunMetrics(db, clock=lambda: now[0])
    _record(metrics, db, "forward_backward", 1, _train(1.0, tokens=30))
    rate = metrics.throughput("m")
    assert rate.train_tokens_per_s == 30 / rate.window_s and rate.sampled_tokens_per_s == 0
    now[0] += rate.window_s + 1
    assert metrics.throughput("m").train_tokens_per_s == 0


def test_a_failing_hook_never_fails_the_request(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    hub = FutureHub(db)

    def broken(_s: Any, _f: Finished, _r: Any) -> None:
        raise RuntimeError("boom")

    metrics = RunMetrics(db)
    hub.on_resolved.extend([broken, metrics.record])
    with db.session() as s:
        hub.add(s, request_id="req", owner="o", kind="forward_backward", model_id="s:train:0", seq_id=1)
    hub.resolve("req", _train(4.0))
    row = hub.get("req")
    assert row is not None and row.status == "done"
    with db.session() as s:
        assert [x.values for x in load_series(s, "s:train:0").series] == [[4.0]]


def test_an_older_database_gains_the_tables(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE run_metrics")
        conn.exec_driver_sql("DROP TABLE sampler_activity")
    db.create_tables()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"run_metrics", "sampler_activity"} <= tables
    with db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SamplerActivityRow)) == 0


def test_retention_of_a_run_without_steps_keeps_its_newest_rows(tmp_path: pathlib.Path) -> None:
    db = _db(tmp_path)
    metrics = RunMetrics(db, max_rows_per_run=4)
    for seq in range(1, 11):
        _record(metrics, db, "forward_backward", seq, _train(float(seq)))
    assert metrics.enforce_retention() == 6
    with db.session() as s:
        run = load_series(s, "s:train:0")
    assert run.x == "seq_id" and run.series[0].steps == [7, 8, 9, 10]
