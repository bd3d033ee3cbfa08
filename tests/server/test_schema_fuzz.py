"""Schema fuzzing of the HTTP API from its own OpenAPI document (issue 11), with schemathesis.

Every operation of ``/openapi.json`` gets ``EXAMPLES`` generated requests (bodies, paths and
query parameters from the schema, valid and invalid; ``hypothesis`` under the hood), sent to
the real app in-process with the fake engine (``fake_engine.py``) and a real SQLite database,
with an API key, plus a handful of generated requests without one. The server must never
answer 5xx. Which answered status codes an operation does not document is printed (the
document's gaps; not a failure).
"""

from __future__ import annotations

import pathlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,
)

from tinker_server.app import create_app  # noqa: E402
from tinker_server.settings import Settings  # noqa: E402

from .fake_engine import FakeEngine  # noqa: E402

EXAMPLES = 25  # per operation: ~3,000 requests in all, about a minute on 2 cores
KEY = "fuzz-key"
# Streams that only end when the client stops reading, or pages that wait for long polls, are
# still fuzzed, with the long poll cut to a fraction of a second (Settings below).


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp: pathlib.Path = tmp_path_factory.mktemp("fuzz")
    engines: dict[str, FakeEngine] = {}

    def loader(name: str) -> FakeEngine:
        if name not in engines:
            engines[name] = FakeEngine(name, tmp)
        return engines[name]

    settings = Settings(home=tmp / "home", models=["fake/model-a"], long_poll_s=0.05, sample_batch_window_s=0.0)
    application = create_app(settings, engine_loader=loader)
    runtime = application.state.runtime
    runtime.ensure_started()  # what the lifespan does (the ASGI client does not run it)
    yield application
    runtime.stop()


def _fuzz(operation: Any, label: str, seen: dict[str, set[int]], failures: list[str]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(), with_key=st.sampled_from([True, True, True, True, False]))
    def check(case: Any, with_key: bool) -> None:
        headers = {"X-API-Key": KEY} if with_key else {}
        try:
            response = case.call(headers=headers, timeout=30)
        except Exception as exc:  # noqa: BLE001 - an exception escaping the app is a 500
            failures.append(f"{label} raised {type(exc).__name__}: {exc}\n    {case.as_curl_command(headers)}")
            return
        seen[label].add(response.status_code)
        if response.status_code >= 500:
            failures.append(
                f"{label} -> {response.status_code}: {response.text[:300]}\n    {case.as_curl_command(headers)}"
            )

    check()


def test_no_operation_answers_5xx(app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    seen: dict[str, set[int]] = defaultdict(set)
    documented: dict[str, set[str]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40, len(operations)
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        documented[label] = set(operation.definition.raw.get("responses", {}))

        _fuzz(operation, label, seen, failures)
    undocumented = {
        label: sorted(
            code for code in codes if str(code) not in documented[label] and "default" not in documented[label]
        )
        for label, codes in seen.items()
    }
    with capsys.disabled():
        print(f"\nschema fuzzing: {len(operations)} operations, {EXAMPLES} examples each")
        gaps = {label: codes for label, codes in sorted(undocumented.items()) if codes}
        print(f"operations answering status codes their OpenAPI entry does not document: {len(gaps)}")
        for label, codes in gaps.items():
            print(f"  {label}: {codes} (documents {sorted(documented[label])})")
    assert not failures, "\n".join(failures[:20])
    assert not gaps, f"status codes answered but not documented: {gaps}"
