"""RestClient: return kinds, paths, pagination parameters and the archive redirect."""

from __future__ import annotations

import asyncio
import concurrent.futures
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import tinker
from tinker.lib.public_interfaces.rest_client import RestClient

from .conftest import FakeServer

RUN = {
    "training_run_id": "r:train:0",
    "base_model": "b/m",
    "model_owner": "me",
    "is_lora": True,
    "lora_rank": 8,
    "last_request_time": "2025-11-20T10:00:00Z",
}
CKPT = {
    "checkpoint_id": "weights/0001",
    "checkpoint_type": "training",
    "time": "2025-11-20T10:00:00Z",
    "tinker_path": "tinker://r:train:0/weights/0001",
}


@pytest.fixture
def rest(server: FakeServer, client: tinker.ServiceClient) -> RestClient:
    ok = lambda body: lambda r: httpx.Response(200, json=body)  # noqa: E731
    server.route("GET", "/api/v1/training_runs")(
        ok({"training_runs": [RUN], "cursor": {"offset": 0, "limit": 20, "total_count": 1}})
    )
    server.route("GET", "/api/v1/training_runs/r:train:0")(ok(RUN))
    server.route("GET", "/api/v1/training_runs/r:train:0/checkpoints")(ok({"checkpoints": [CKPT]}))
    server.route("GET", "/api/v1/checkpoints")(
        ok({"checkpoints": [CKPT], "cursor": {"offset": 0, "limit": 100, "total_count": 1}})
    )
    server.route("GET", "/api/v1/sessions")(ok({"sessions": ["sess-1"]}))
    server.route("GET", "/api/v1/sessions/sess-1")(ok({"training_run_ids": ["r:train:0"], "sampler_ids": []}))
    server.route("GET", "/api/v1/samplers/s:sample:0")(ok({"sampler_id": "s:sample:0", "base_model": "b/m"}))
    server.route("POST", "/api/v1/weights_info")(ok({"base_model": "b/m", "is_lora": True, "lora_rank": 8}))
    for method, suffix in (("DELETE", ""), ("POST", "/publish"), ("DELETE", "/publish")):
        server.route(method, f"/api/v1/training_runs/r:train:0/checkpoints/weights/0001{suffix}")(
            lambda r: httpx.Response(204)
        )
    return client.create_rest_client()


def test_sync_methods_return_concurrent_futures(server: FakeServer, rest: RestClient) -> None:
    futures: list[concurrent.futures.Future[Any]] = [
        rest.list_training_runs(),
        rest.get_training_run("r:train:0"),
        rest.get_training_run_by_tinker_path("tinker://r:train:0/weights/0001"),
        rest.list_checkpoints("r:train:0"),
        rest.list_user_checkpoints(),
        rest.list_sessions(),
        rest.get_session("sess-1"),
        rest.delete_checkpoint("r:train:0", "weights/0001"),
        rest.delete_checkpoint_from_tinker_path("tinker://r:train:0/weights/0001"),
        rest.publish_checkpoint_from_tinker_path("tinker://r:train:0/weights/0001"),
        rest.unpublish_checkpoint_from_tinker_path("tinker://r:train:0/weights/0001"),
    ]
    for future in futures:
        assert isinstance(future, concurrent.futures.Future)
        future.result(timeout=5)
    assert futures[0].result().training_runs[0].lora_rank == 8
    assert futures[3].result().cursor is None
    assert futures[7].result() is None
    runs = server.calls("/api/v1/training_runs", "GET")[0]
    assert dict(runs.url.params) == {"limit": "20", "offset": "0"}
    assert dict(server.calls("/api/v1/checkpoints", "GET")[0].url.params) == {"limit": "100", "offset": "0"}
    assert dict(server.calls("/api/v1/sessions", "GET")[0].url.params) == {"limit": "20", "offset": "0"}
    deletes = server.calls("/checkpoints/weights/0001", "DELETE")
    assert len(deletes) == 2 and deletes[0].headers["content-type"] == "application/json"
    publish = server.calls("/checkpoints/weights/0001/publish", "POST")[0]
    assert publish.content == b"" and publish.headers["content-type"] == "application/json"
    assert len(server.calls("/checkpoints/weights/0001/publish", "DELETE")) == 1


def test_api_future_methods_and_async_twins(rest: RestClient) -> None:
    info = rest.get_weights_info_by_tinker_path("tinker://r:train:0/weights/0001")
    sampler = rest.get_sampler("s:sample:0")
    assert isinstance(info, tinker.APIFuture) and isinstance(sampler, tinker.APIFuture)
    assert info.result(timeout=5).lora_rank == 8
    assert sampler.result(timeout=5).model_path is None

    async def main() -> None:
        assert (await rest.list_training_runs_async(limit=5, offset=1)).cursor.total_count == 1
        assert (await rest.get_training_run_async("r:train:0")).base_model == "b/m"
        assert (await rest.get_training_run_by_tinker_path_async("tinker://r:train:0/weights/0001")).is_lora
        assert len((await rest.list_checkpoints_async("r:train:0")).checkpoints) == 1
        assert len((await rest.list_user_checkpoints_async()).checkpoints) == 1
        assert (await rest.list_sessions_async()).sessions == ["sess-1"]
        assert (await rest.get_session_async("sess-1")).sampler_ids == []
        assert (await rest.get_sampler_async("s:sample:0")).base_model == "b/m"
        # The four below return None (their annotation says so; mypy checks it).
        await rest.delete_checkpoint_async("r:train:0", "weights/0001")
        await rest.publish_checkpoint_from_tinker_path_async("tinker://r:train:0/weights/0001")
        await rest.unpublish_checkpoint_from_tinker_path_async("tinker://r:train:0/weights/0001")
        await rest.delete_checkpoint_from_tinker_path_async("tinker://r:train:0/weights/0001")
        assert await info  # APIFuture is awaitable

    asyncio.run(main())


def test_bad_arguments(rest: RestClient) -> None:
    with pytest.raises(ValueError):
        rest.list_checkpoints("")
    with pytest.raises(ValueError, match="Invalid tinker path"):
        rest.delete_checkpoint_from_tinker_path("tinker://a/b")


def test_archive_url_redirect(server: FakeServer, rest: RestClient) -> None:
    archive = "/api/v1/training_runs/r:train:0/checkpoints/weights/0001/archive"
    server.route("GET", archive)(
        lambda r: httpx.Response(
            302, headers={"Location": "https://signed.example/a.tar", "Expires": "Thu, 20 Nov 2025 11:00:00 GMT"}
        )
    )
    result = rest.get_checkpoint_archive_url_from_tinker_path("tinker://r:train:0/weights/0001").result(timeout=5)
    assert result.url == "https://signed.example/a.tar"
    assert result.expires == datetime(2025, 11, 20, 11, 0, tzinfo=UTC)
    request = server.calls("/archive")[0]
    assert request.headers.get_list("accept") == ["application/json", "application/gzip"]
    assert not server.calls("/a.tar")  # redirect not followed

    server.route("GET", archive)(lambda r: httpx.Response(302, headers={"Location": "https://signed.example/b"}))
    result = asyncio.run(rest.get_checkpoint_archive_url_async("r:train:0", "weights/0001"))
    assert timedelta(minutes=14) < result.expires - datetime.now(UTC) <= timedelta(minutes=15)

    server.route("GET", archive)(lambda r: httpx.Response(200, json={}))
    with pytest.raises(tinker.APIStatusError):
        rest.get_checkpoint_archive_url("r:train:0", "weights/0001").result(timeout=5)
    server.route("GET", archive)(lambda r: httpx.Response(404, json={"detail": "no"}))
    with pytest.raises(tinker.NotFoundError):
        rest.get_checkpoint_archive_url("r:train:0", "weights/0001").result(timeout=5)
    assert len(server.calls("/archive")) == 4  # no layer-B retries
