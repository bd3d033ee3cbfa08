"""Issue 3: every RestClient method, sync (concurrent future) and async, against the real server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import tarfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

import tinker
from tinker.lib.public_interfaces.rest_client import RestClient

from .conftest import TINY_MODEL, adam, expect_error, token_batch

T = TypeVar("T")


@dataclass
class Seeded:
    sc: tinker.ServiceClient
    rest: RestClient
    tc: tinker.TrainingClient
    run: str  # tc.model_id
    paths: dict[str, str]  # name -> tinker path
    sampler: tinker.SamplingClient


@pytest.fixture
def seeded(sc: tinker.ServiceClient) -> Seeded:
    """One run (rank 4) with checkpoints s1 (state), w1 (sampler), s2 (state), and an ephemeral sampler."""
    tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=0, user_metadata={"purpose": "e2e"})
    tc.forward_backward(token_batch(), "cross_entropy")
    tc.optim_step(adam())
    paths = {"s1": tc.save_state("s1").result(timeout=30).path}
    paths["w1"] = tc.save_weights_for_sampler("w1").result(timeout=30).path
    paths["s2"] = tc.save_state("s2").result(timeout=30).path
    sampler = tc.save_weights_and_get_sampling_client()
    assert tc.model_id is not None
    return Seeded(sc, sc.create_rest_client(), tc, tc.model_id, paths, sampler)


def both(sync: Callable[[], concurrent.futures.Future[T]], async_: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the sync method (a concurrent future) and its async twin; both must agree."""
    fut = sync()
    assert isinstance(fut, concurrent.futures.Future)
    a = fut.result(timeout=30)
    b = asyncio.run(async_())
    assert a == b
    return a


def test_training_runs(seeded: Seeded) -> None:
    rest = seeded.rest
    others = [seeded.sc.create_lora_training_client(base_model=TINY_MODEL, rank=2) for _ in range(2)]

    page = both(lambda: rest.list_training_runs(), lambda: rest.list_training_runs_async())
    assert page.cursor.total_count == 3 and page.cursor.offset == 0 and page.cursor.limit == 20
    ids = [r.training_run_id for r in page.training_runs]
    assert sorted(ids) == sorted([seeded.run, *(str(o.model_id) for o in others)])

    first = both(lambda: rest.list_training_runs(limit=2), lambda: rest.list_training_runs_async(limit=2))
    rest_page = both(
        lambda: rest.list_training_runs(limit=2, offset=2), lambda: rest.list_training_runs_async(limit=2, offset=2)
    )
    assert len(first.training_runs) == 2 and len(rest_page.training_runs) == 1
    assert [r.training_run_id for r in first.training_runs + rest_page.training_runs] == ids
    for offset in (3, 1000):
        empty = both(
            lambda: rest.list_training_runs(offset=offset),  # noqa: B023 - called at once
            lambda: rest.list_training_runs_async(offset=offset),  # noqa: B023 - called at once
        )
        assert empty.training_runs == [] and empty.cursor.total_count == 3
    for limit in (0, -1):
        expect_error(
            tinker.BadRequestError,
            lambda: rest.list_training_runs(limit=limit).result(timeout=30),  # noqa: B023 - called at once
            "limit",
            within=5,
        )
        expect_error(
            tinker.BadRequestError,
            lambda: asyncio.run(rest.list_training_runs_async(limit=limit)),  # noqa: B023 - called at once
            "limit",
            within=5,
        )
    expect_error(
        tinker.BadRequestError, lambda: rest.list_training_runs(offset=-1).result(timeout=30), "offset", within=5
    )

    run = both(lambda: rest.get_training_run(seeded.run), lambda: rest.get_training_run_async(seeded.run))
    assert run.training_run_id == seeded.run
    assert run.base_model == TINY_MODEL and run.is_lora and run.lora_rank == 4 and not run.corrupted
    assert run.user_metadata == {"purpose": "e2e"}
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == seeded.paths["s2"]
    assert run.last_sampler_checkpoint is not None and run.last_sampler_checkpoint.tinker_path == seeded.paths["w1"]
    assert run.last_request_time.tzinfo is not None
    assert abs((datetime.now(UTC) - run.last_request_time).total_seconds()) < 120
    by_path = both(
        lambda: rest.get_training_run_by_tinker_path(seeded.paths["w1"]),
        lambda: rest.get_training_run_by_tinker_path_async(seeded.paths["w1"]),
    )
    assert by_path.training_run_id == seeded.run and by_path.lora_rank == 4


def test_checkpoint_listings(seeded: Seeded) -> None:
    rest, paths = seeded.rest, seeded.paths
    listed = both(lambda: rest.list_checkpoints(seeded.run), lambda: rest.list_checkpoints_async(seeded.run))
    assert listed.cursor is None
    by_id = {c.checkpoint_id: c for c in listed.checkpoints}
    assert set(by_id) == {"weights/s1", "sampler_weights/w1", "weights/s2"}
    for name, kind, ctype in (
        ("s1", "weights", "training"),
        ("w1", "sampler_weights", "sampler"),
        ("s2", "weights", "training"),
    ):
        c = by_id[f"{kind}/{name}"]
        assert c.tinker_path == paths[name] == f"tinker://{seeded.run}/{kind}/{name}"
        assert c.checkpoint_type == ctype and c.public is False
        assert c.size_bytes is not None and c.size_bytes > 0
    assert (by_id["weights/s1"].size_bytes or 0) > (by_id["sampler_weights/w1"].size_bytes or 0)  # + optimizer state
    expect_error(ValueError, lambda: rest.list_checkpoints(""), "training_run_id")

    mine = both(lambda: rest.list_user_checkpoints(), lambda: rest.list_user_checkpoints_async())
    assert mine.cursor is not None and mine.cursor.total_count == 3 and mine.cursor.limit == 100
    assert [c.tinker_path for c in mine.checkpoints] == [paths["s2"], paths["w1"], paths["s1"]]  # newest first
    times = [c.time for c in mine.checkpoints]
    assert times == sorted(times, reverse=True)
    middle = both(
        lambda: rest.list_user_checkpoints(limit=1, offset=1),
        lambda: rest.list_user_checkpoints_async(limit=1, offset=1),
    )
    assert [c.tinker_path for c in middle.checkpoints] == [paths["w1"]]
    assert middle.cursor is not None and middle.cursor.total_count == 3
    past = both(lambda: rest.list_user_checkpoints(offset=3), lambda: rest.list_user_checkpoints_async(offset=3))
    assert past.checkpoints == []
    for limit in (0, -5):
        expect_error(
            tinker.BadRequestError,
            lambda: rest.list_user_checkpoints(limit=limit).result(timeout=30),  # noqa: B023 - called at once
            "limit",
            within=5,
        )


def _tar_names(url: str) -> tuple[set[str], dict]:
    response = httpx.get(url, timeout=30)  # no API key: the URL is signed
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = {n.lstrip("./") for n in tar.getnames()}
        member = next(m for m in tar.getmembers() if m.name.endswith("adapter_config.json"))
        config = json.load(tar.extractfile(member))  # type: ignore[arg-type]
    return names, config


def test_archive_urls_download(seeded: Seeded) -> None:
    rest, paths = seeded.rest, seeded.paths
    now = datetime.now(UTC)
    for name, kind in (("w1", "sampler_weights"), ("s1", "weights")):
        urls = [
            rest.get_checkpoint_archive_url(seeded.run, f"{kind}/{name}").result(timeout=30),
            asyncio.run(rest.get_checkpoint_archive_url_async(seeded.run, f"{kind}/{name}")),
            rest.get_checkpoint_archive_url_from_tinker_path(paths[name]).result(timeout=30),
            asyncio.run(rest.get_checkpoint_archive_url_from_tinker_path_async(paths[name])),
        ]
        for got in urls:
            assert got.url.startswith("http://127.0.0.1:")
            assert got.expires > now
            names, config = _tar_names(got.url)
            assert {"adapter_config.json", "adapter_model.safetensors"} <= names, names
            assert config["r"] == 4
    tampered = urls[0].url[:-3] + ("AAA" if not urls[0].url.endswith("AAA") else "BBB")
    assert httpx.get(tampered, timeout=30).status_code == 403
    expect_error(
        tinker.NotFoundError,
        lambda: rest.get_checkpoint_archive_url(seeded.run, "weights/nope").result(timeout=30),
        "nope",
    )


def test_delete_checkpoints(seeded: Seeded) -> None:
    rest, tc, paths = seeded.rest, seeded.tc, seeded.paths
    assert rest.delete_checkpoint(seeded.run, "weights/s1").result(timeout=30) is None
    assert asyncio.run(rest.delete_checkpoint_from_tinker_path_async(paths["w1"])) is None
    remaining = rest.list_checkpoints(seeded.run).result(timeout=30)
    assert [c.tinker_path for c in remaining.checkpoints] == [paths["s2"]]
    for again in (
        lambda: rest.delete_checkpoint(seeded.run, "weights/s1").result(timeout=30),
        lambda: rest.delete_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30),
        lambda: asyncio.run(rest.delete_checkpoint_async(seeded.run, "sampler_weights/w1")),
        lambda: asyncio.run(rest.delete_checkpoint_from_tinker_path_async(paths["w1"])),
    ):
        expect_error(tinker.NotFoundError, again, "not found", within=5)
    # Nothing else went: s2 is listed, downloadable and loadable; deleted ones are not.
    assert [c.tinker_path for c in rest.list_user_checkpoints().result(timeout=30).checkpoints] == [paths["s2"]]
    expect_error(
        tinker.NotFoundError, lambda: rest.get_checkpoint_archive_url_from_tinker_path(paths["s1"]).result(timeout=30)
    )
    expect_error(tinker.NotFoundError, lambda: seeded.sc.create_sampling_client(model_path=paths["w1"]))
    tc.load_state(paths["s2"]).result(timeout=30)
    run = rest.get_training_run(seeded.run).result(timeout=30)
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == paths["s2"]
    assert run.last_sampler_checkpoint is None


def test_publish_and_unpublish(seeded: Seeded) -> None:
    rest, paths = seeded.rest, seeded.paths

    def public() -> dict[str, bool]:
        return {c.checkpoint_id: c.public for c in rest.list_checkpoints(seeded.run).result(timeout=30).checkpoints}

    assert rest.publish_checkpoint_from_tinker_path(paths["w1"]).result(timeout=30) is None
    asyncio.run(rest.publish_checkpoint_from_tinker_path_async(paths["s1"]))
    assert public() == {"weights/s1": True, "sampler_weights/w1": True, "weights/s2": False}
    # Publishing again is a fast, clear 4xx (not a retried 409).
    expect_error(
        tinker.BadRequestError,
        lambda: rest.publish_checkpoint_from_tinker_path(paths["w1"]).result(timeout=30),
        "already public",
        within=5,
    )
    expect_error(
        tinker.BadRequestError,
        lambda: asyncio.run(rest.publish_checkpoint_from_tinker_path_async(paths["s1"])),
        "already public",
        within=5,
    )

    asyncio.run(rest.unpublish_checkpoint_from_tinker_path_async(paths["w1"]))
    rest.unpublish_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30)
    assert not any(public().values())
    expect_error(
        tinker.BadRequestError,
        lambda: rest.unpublish_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30),
        "already private",
        within=5,
    )
    expect_error(
        tinker.NotFoundError,
        lambda: rest.publish_checkpoint_from_tinker_path(f"tinker://{seeded.run}/weights/nope").result(timeout=30),
        within=5,
    )


def test_weights_info_and_sampler(seeded: Seeded) -> None:
    rest, paths = seeded.rest, seeded.paths
    info = rest.get_weights_info_by_tinker_path(paths["s1"]).result(timeout=30)
    assert (info.base_model, info.is_lora, info.lora_rank) == (TINY_MODEL, True, 4)

    async def awaited() -> tinker.types.WeightsInfoResponse:
        return await rest.get_weights_info_by_tinker_path(paths["w1"])

    assert asyncio.run(awaited()) == info

    eph = seeded.sampler.sampling_session_id
    got = rest.get_sampler(eph).result(timeout=30)
    assert got.sampler_id == eph and got.base_model == TINY_MODEL
    assert asyncio.run(rest.get_sampler_async(eph)) == got
    named = seeded.sc.create_sampling_client(model_path=paths["w1"])
    by_path = asyncio.run(rest.get_sampler_async(named.sampling_session_id))
    assert (by_path.sampler_id, by_path.base_model, by_path.model_path) == (
        named.sampling_session_id,
        TINY_MODEL,
        paths["w1"],
    )
    base = seeded.sc.create_sampling_client(base_model=TINY_MODEL)
    plain = rest.get_sampler(base.sampling_session_id).result(timeout=30)
    assert plain.base_model == TINY_MODEL and plain.model_path is None


def test_sessions(connect: Callable[..., tinker.ServiceClient]) -> None:
    first = connect()
    tc = first.create_lora_training_client(base_model=TINY_MODEL, rank=2)
    tc2 = first.create_lora_training_client(base_model=TINY_MODEL, rank=2)
    eph = tc.save_weights_and_get_sampling_client()
    base = first.create_sampling_client(base_model=TINY_MODEL)
    time.sleep(0.01)
    second = connect()
    rest = second.create_rest_client()

    listed = both(lambda: rest.list_sessions(), lambda: rest.list_sessions_async())
    assert listed.sessions == [second.holder.session_id, first.holder.session_id]  # newest first
    assert both(
        lambda: rest.list_sessions(limit=1, offset=1), lambda: rest.list_sessions_async(limit=1, offset=1)
    ).sessions == [first.holder.session_id]
    assert both(lambda: rest.list_sessions(offset=2), lambda: rest.list_sessions_async(offset=2)).sessions == []
    expect_error(tinker.BadRequestError, lambda: rest.list_sessions(limit=0).result(timeout=30), "limit", within=5)

    got = both(
        lambda: rest.get_session(first.holder.session_id), lambda: rest.get_session_async(first.holder.session_id)
    )
    assert got.training_run_ids == [tc.model_id, tc2.model_id]
    assert set(got.sampler_ids) == {eph.sampling_session_id, base.sampling_session_id}
    empty = rest.get_session(second.holder.session_id).result(timeout=30)
    assert empty.training_run_ids == [] and empty.sampler_ids == []
    expect_error(
        tinker.NotFoundError,
        lambda: rest.get_session("no-such-session").result(timeout=30),
        "no-such-session",
        within=5,
    )


def test_unknown_ids(sc: tinker.ServiceClient) -> None:
    rest = sc.create_rest_client()
    missing = "00000000-0000-0000-0000-000000000000:train:0"
    cases = [
        (lambda: rest.get_training_run(missing).result(timeout=30), missing),
        (lambda: asyncio.run(rest.get_training_run_async(missing)), missing),
        (lambda: rest.list_checkpoints(missing).result(timeout=30), missing),
        (lambda: rest.get_training_run_by_tinker_path(f"tinker://{missing}/weights/x").result(timeout=30), missing),
        (lambda: rest.get_weights_info_by_tinker_path(f"tinker://{missing}/weights/x").result(timeout=30), "not found"),
        (
            lambda: rest.get_checkpoint_archive_url_from_tinker_path(f"tinker://{missing}/weights/x").result(
                timeout=30
            ),
            "not found",
        ),
        (
            lambda: rest.delete_checkpoint_from_tinker_path(f"tinker://{missing}/weights/x").result(timeout=30),
            "not found",
        ),
        (lambda: rest.get_sampler("no-such-sampler").result(timeout=30), "no-such-sampler"),
        (lambda: asyncio.run(rest.get_sampler_async("no-such-sampler")), "no-such-sampler"),
        (lambda: sc.create_sampling_client(model_path=f"tinker://{missing}/sampler_weights/x"), "not found"),
        (lambda: sc.create_training_client_from_state(f"tinker://{missing}/weights/x"), "not found"),
    ]
    for call, needle in cases:
        expect_error(tinker.NotFoundError, call, needle, within=5)
    assert rest.list_training_runs().result(timeout=30).cursor.total_count == 0


def test_other_tenants_run_is_not_found(seeded: Seeded, connect: Callable[..., tinker.ServiceClient]) -> None:
    owner_rest, paths = seeded.rest, seeded.paths
    intruder = connect(key="e2e-intruder-key")
    rest = intruder.create_rest_client()
    assert rest.list_training_runs().result(timeout=30).training_runs == []
    assert seeded.sc.holder.session_id not in rest.list_sessions().result(timeout=30).sessions
    cases = [
        lambda: rest.get_training_run(seeded.run).result(timeout=30),
        lambda: rest.get_training_run_by_tinker_path(paths["s1"]).result(timeout=30),
        lambda: rest.list_checkpoints(seeded.run).result(timeout=30),
        lambda: rest.get_checkpoint_archive_url_from_tinker_path(paths["w1"]).result(timeout=30),
        lambda: rest.delete_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30),
        lambda: asyncio.run(rest.delete_checkpoint_async(seeded.run, "sampler_weights/w1")),
        lambda: rest.publish_checkpoint_from_tinker_path(paths["s2"]).result(timeout=30),
        lambda: rest.get_weights_info_by_tinker_path(paths["s1"]).result(timeout=30),
        lambda: rest.get_session(seeded.sc.holder.session_id).result(timeout=30),
        lambda: rest.get_sampler(seeded.sampler.sampling_session_id).result(timeout=30),
        lambda: intruder.create_sampling_client(model_path=paths["w1"]),
        lambda: intruder.create_training_client_from_state(paths["s1"]),
    ]
    for call in cases:
        expect_error(tinker.NotFoundError, call, within=5)
    # The intruder's own training client cannot load the owner's private state either.
    mine = intruder.create_lora_training_client(base_model=TINY_MODEL, rank=4)
    expect_error(
        (tinker.NotFoundError, tinker.RequestFailedError),
        lambda: mine.load_state(paths["s1"]).result(timeout=30),
        within=5,
    )
    # Nothing of the owner's was deleted or published.
    listed = owner_rest.list_checkpoints(seeded.run).result(timeout=30).checkpoints
    assert {c.tinker_path for c in listed} == set(paths.values()) and not any(c.public for c in listed)

    # Published checkpoints are readable by others (weights_info, sampling); unpublished ones are not again.
    owner_rest.publish_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30)
    info = rest.get_weights_info_by_tinker_path(paths["s1"]).result(timeout=30)
    assert (info.base_model, info.lora_rank) == (TINY_MODEL, 4)
    expect_error(
        tinker.NotFoundError,
        lambda: rest.unpublish_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30),
        within=5,
    )
    owner_rest.unpublish_checkpoint_from_tinker_path(paths["s1"]).result(timeout=30)
    expect_error(
        tinker.NotFoundError, lambda: rest.get_weights_info_by_tinker_path(paths["s1"]).result(timeout=30), within=5
    )


BAD_PATHS = {
    "empty name": "tinker://{run}/weights/",
    "wrong kind": "tinker://{run}/checkpoints/s1",
    "too many parts": "tinker://{run}/weights/a/b",
    "no scheme": "{run}/weights/s1",
    "dot name": "tinker://{run}/weights/.",
    "dotdot name": "tinker://{run}/weights/..",
    "dotdot run": "tinker://../weights/s1",
    "empty run": "tinker:///weights/s1",
}


def _is_clear(err: BaseException) -> bool:
    """A ValueError, or a 400/404 whose message says more than the router's bare 'Not Found'."""
    if isinstance(err, tinker.APIStatusError):
        text = str(err.body).lower()
        return err.status_code in (400, 404) and text not in ("{'detail': 'not found'}", "not found")
    return isinstance(err, ValueError) and not isinstance(err, tinker.APIResponseValidationError)


@pytest.mark.parametrize(
    "path_template",
    list(BAD_PATHS.values()),
    ids=list(BAD_PATHS),
)
def test_malformed_tinker_paths(seeded: Seeded, path_template: str) -> None:
    rest, tc = seeded.rest, seeded.tc
    path = path_template.format(run=seeded.run)
    calls = {
        "weights_info": lambda: rest.get_weights_info_by_tinker_path(path).result(timeout=30),
        "load_state": lambda: tc.load_state(path).result(timeout=30),
        "archive": lambda: rest.get_checkpoint_archive_url_from_tinker_path(path).result(timeout=30),
        "delete": lambda: rest.delete_checkpoint_from_tinker_path(path).result(timeout=30),
        "publish": lambda: rest.publish_checkpoint_from_tinker_path(path).result(timeout=30),
        "unpublish": lambda: rest.unpublish_checkpoint_from_tinker_path(path).result(timeout=30),
        "sampler": lambda: seeded.sc.create_sampling_client(model_path=path),
        "from_state": lambda: seeded.sc.create_training_client_from_state(path),
        # Only needs the run id: it may find this run, or must fail clearly.
        "training_run": lambda: rest.get_training_run_by_tinker_path(path).result(timeout=30),
    }
    unclear = []
    for what, call in calls.items():
        start = time.monotonic()
        try:
            result = call()
        except (ValueError, tinker.APIStatusError) as err:
            assert time.monotonic() - start < 5, what
            if not _is_clear(err):
                unclear.append(f"{what}: {type(err).__name__}: {str(err)[:120]}")
        else:
            if what == "training_run" and getattr(result, "training_run_id", None) == seeded.run:
                continue
            unclear.append(f"{what}: succeeded with {result!r:.120}")
    assert not unclear, unclear
    # Nothing was deleted or published, and the server still serves.
    listed = rest.list_checkpoints(seeded.run).result(timeout=30).checkpoints
    assert {c.tinker_path for c in listed} == set(seeded.paths.values()) and not any(c.public for c in listed)
    assert tc.forward(token_batch(), "cross_entropy").result(timeout=30).metrics["loss:sum"] > 0


@pytest.mark.parametrize("bad_id", ["", ".", ".."])
def test_empty_or_dot_ids(seeded: Seeded, bad_id: str) -> None:
    """Raw ids: get_training_run('') gets the run *list*, list_checkpoints('..') the user-wide list."""
    rest = seeded.rest
    calls = {
        "get_training_run": lambda: rest.get_training_run(bad_id).result(timeout=30),
        "list_checkpoints": lambda: rest.list_checkpoints(bad_id).result(timeout=30),
        "get_session": lambda: rest.get_session(bad_id).result(timeout=30),
        "get_sampler": lambda: rest.get_sampler(bad_id).result(timeout=30),
        "archive": lambda: rest.get_checkpoint_archive_url(seeded.run, f"weights/{bad_id}").result(timeout=30),
    }
    unclear = []
    for what, call in calls.items():
        try:
            result = call()
        except (ValueError, tinker.APIStatusError) as err:
            if not _is_clear(err):
                unclear.append(f"{what}: {type(err).__name__}: {str(err)[:120]}")
        else:
            unclear.append(f"{what}: succeeded with {result!r:.120}")
    assert not unclear, unclear
