"""The web console in a real headless Chromium, against ``tinker serve`` with the tiny model.

Trains a run for a few steps through our SDK, then in the browser: signs in with the
key, opens the run, reads the loss curve (one point per step, the values the SDK got),
downloads a checkpoint, deletes one after confirming, publishes one, samples in the
playground, looks at the sessions and the queue; a second key sees none of it. Every
page is saved as a screenshot (see ``conftest.py``).
"""

from __future__ import annotations

import pathlib
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import tinker
from tinker_server.engine import TINY_MODEL
from tinker_server.launch import background_server

from .conftest import Browser

pytestmark = pytest.mark.browser

KEY = "tml-console-owner"
OTHER_KEY = "tml-console-stranger"
STEPS = 4


@dataclass
class Trained:
    url: str
    home: pathlib.Path
    run_id: str
    session_id: str
    losses: list[float]
    keep: str  # checkpoint ids
    doomed: str
    sampler_path: str


def _datum(tokens: list[int]) -> tinker.Datum:
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[len(tokens) - 1]),
            "weights": tinker.TensorData(data=[1.0] * (len(tokens) - 1), dtype="float32"),
        },
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    home = tmp_path_factory.mktemp("console-home")
    with background_server(home, [TINY_MODEL], env={"TINKER_TORCH_THREADS": "1"}) as url:
        sc = tinker.ServiceClient(base_url=url, api_key=KEY)
        try:
            tc = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=1)
            data = [_datum([(7 * i + 3) % 500 for i in range(12)]), _datum([(11 * i + 40) % 500 for i in range(9)])]
            losses = []
            for _ in range(STEPS):
                losses.append(tc.forward_backward(data, "cross_entropy").result(timeout=120).metrics["loss:sum"])
                tc.optim_step(tinker.AdamParams(learning_rate=0.02)).result(timeout=120)
            keep = tc.save_state("keep").result(timeout=120).path
            doomed = tc.save_state("doomed").result(timeout=120).path
            sampler_path = tc.save_weights_for_sampler("final").result(timeout=120).path
            sampler = sc.create_sampling_client(model_path=sampler_path)
            sampler.sample(
                tinker.ModelInput.from_ints([5, 17, 42]), 2, tinker.SamplingParams(max_tokens=5, temperature=1.0)
            ).result(timeout=120)
            assert tc.model_id is not None
            yield Trained(
                url=url,
                home=home,
                run_id=tc.model_id,
                session_id=tc.model_id.split(":", 1)[0],
                losses=losses,
                keep=keep.split("/", 3)[3],
                doomed=doomed.split("/", 3)[3],
                sampler_path=sampler_path,
            )
        finally:
            sc.holder.close()


# -- page helpers ------------------------------------------------------------------------


def _wait(browser: Browser, condition: Callable[[Any], Any], timeout: float = 30.0, what: str = "") -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Elements go stale when the page re-renders a fragment: look again.
    wait = WebDriverWait(
        browser.driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition, message=what)


def _css(browser: Browser, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return browser.driver.find_elements(By.CSS_SELECTOR, selector)


def _one(browser: Browser, selector: str, timeout: float = 30.0) -> Any:
    return _wait(browser, lambda _d: (_css(browser, selector) or [None])[0], timeout, f"no element {selector!r}")


def _go(browser: Browser, url: str, hash_route: str, ready: str) -> Any:
    browser.driver.get(f"{url}/console{hash_route}")
    return _one(browser, ready)


def _sign_in(browser: Browser, url: str, key: str) -> None:
    browser.driver.get(f"{url}/console")
    field = _one(browser, "#api-key")
    field.send_keys(key)
    _one(browser, "#signin-form button[type=submit]").click()
    _one(browser, "#who-name")
    _wait(browser, lambda _d: _css(browser, "[data-page]"), what="no page after signing in")


def _row(browser: Browser, checkpoint_id: str) -> Any:
    rows = [
        r
        for r in _css(browser, "#checkpoints-table tbody tr")
        if r.get_attribute("data-checkpoint-id") == checkpoint_id
    ]
    return rows[0] if rows else None


def _button(row: Any, action: str) -> Any:
    from selenium.webdriver.common.by import By

    return row.find_element(By.CSS_SELECTOR, f'[data-action="{action}"]')


# -- the test ----------------------------------------------------------------------------


def test_console_end_to_end(trained: Trained, browser: Browser) -> None:
    url = trained.url
    driver = browser.driver

    # Sign in: the key goes into sessionStorage, never into the URL or a cookie.
    driver.get(f"{url}/console")
    _one(browser, "#signin-form")
    browser.screenshot("01-sign-in")
    _sign_in(browser, url, KEY)
    assert KEY not in driver.current_url
    assert driver.execute_script("return document.cookie") == ""
    assert driver.execute_script("return sessionStorage.getItem('tinker.console.apiKey')") == KEY

    # The runs of this key.
    link = _one(browser, "#runs-table a.mono")
    rows = _css(browser, "#runs-table tbody tr")
    assert [r.get_attribute("data-run-id") for r in rows] == [trained.run_id]
    assert TINY_MODEL in rows[0].text and "active" in rows[0].text
    browser.screenshot("02-runs")

    # The run: one point per step, the values the SDK got and the server's JSON has.
    link.click()
    figure = _one(browser, 'figure[data-kind="forward_backward"][data-metric="loss:sum"]')
    points = _css(browser, 'figure[data-kind="forward_backward"][data-metric="loss:sum"] circle.point')
    steps = [int(p.get_attribute("data-step")) for p in points]
    values = [float(p.get_attribute("data-value")) for p in points]
    assert steps == list(range(1, STEPS + 1))
    assert values == trained.losses
    assert figure.get_attribute("data-points") == str(STEPS)
    server = httpx.get(f"{url}/api/v1/console/runs/{trained.run_id}", headers={"X-API-Key": KEY}).json()
    loss = next(s for s in server["metrics"] if s["kind"] == "forward_backward" and s["name"] == "loss:sum")
    assert loss["values"] == values and loss["steps"] == steps
    assert _css(browser, 'figure[data-kind="optim_step"]'), "optimizer metrics are charted too"
    sampling = _css(browser, "#sampling-table tbody tr")
    assert len(sampling) == 1 and "checkpoint" in sampling[0].text
    assert {r.get_attribute("data-checkpoint-id") for r in _css(browser, "#checkpoints-table tbody tr")} == {
        trained.keep,
        trained.doomed,
        "sampler_weights/final",
    }
    browser.screenshot("03-run")

    # Download a checkpoint: a tar of the adapter, through the signed archive link.
    _button(_row(browser, trained.keep), "download").click()
    tar_path = _wait(browser, lambda _d: _finished_download(browser.downloads), 60, "no download arrived")
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names, names

    # Delete one, after a confirmation step (cancelling first changes nothing).
    _button(_row(browser, trained.doomed), "delete").click()
    confirm = _one(browser, f'[data-confirm-for="{trained.doomed}"]:not([hidden])')
    assert "doomed" in confirm.text
    browser.screenshot("04-confirm-delete")
    _button(_row(browser, trained.doomed), "cancel-delete").click()
    _wait(browser, lambda _d: not _css(browser, f'[data-confirm-for="{trained.doomed}"]:not([hidden])'))
    assert _rest_checkpoints(url, KEY, trained.run_id) >= {trained.doomed}
    _button(_row(browser, trained.doomed), "delete").click()
    _button(_row(browser, trained.doomed), "confirm-delete").click()
    _wait(browser, lambda _d: _row(browser, trained.doomed) is None, what="the deleted checkpoint is still listed")
    assert trained.doomed not in _rest_checkpoints(url, KEY, trained.run_id)

    # Publish one.
    _button(_row(browser, trained.keep), "publish").click()
    _wait(browser, lambda _d: "public" in (_row(browser, trained.keep).text or ""), what="not shown as public")
    browser.screenshot("05-run-after-changes")

    # The playground, from the sampler checkpoint's row: sample through the server's sampling path.
    from selenium.webdriver.common.by import By

    _row(browser, "sampler_weights/final").find_element(By.LINK_TEXT, "Playground").click()
    select = _one(browser, "#pg-model")
    assert select.get_attribute("value") == f"path:{trained.sampler_path}"
    _one(browser, "#pg-prompt").send_keys("Tell me a story about a fox.")
    max_tokens = _one(browser, "#pg-max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("12")
    _one(browser, "#pg-submit").click()
    _one(browser, '#pg-result[data-state="done"]', timeout=120)
    meta = _one(browser, "#pg-meta").text
    assert "tokens" in meta and "chat template" in meta, meta
    assert _one(browser, "#pg-output").text.strip(), "the playground showed no text"
    browser.screenshot("06-playground")

    # Sessions: the training session and the playground's own.
    _go(browser, url, "#/sessions", "#sessions-table")
    sessions = {r.get_attribute("data-session-id"): r.text for r in _css(browser, "#sessions-table tbody tr")}
    assert trained.session_id in sessions and "train:0" in sessions[trained.session_id]
    assert any("console playground" in text for text in sessions.values())
    browser.screenshot("07-sessions")

    # The queue of every served model.
    _go(browser, url, "#/queue", "#queue-table")
    queue = _one(browser, f'#queue-table tr[data-model="{TINY_MODEL}"]')
    assert "loaded" in queue.text
    browser.screenshot("08-queue")

    # Another key sees none of it: no runs, the run page is "not found", no checkpoints to sample.
    _one(browser, '[data-action="sign-out"]').click()
    _one(browser, "#signin-form")
    assert driver.execute_script("return sessionStorage.getItem('tinker.console.apiKey')") is None
    _sign_in(browser, url, OTHER_KEY)
    _one(browser, '[data-page="runs"]')
    assert not _css(browser, "#runs-table"), "another tenant's runs are listed"
    browser.screenshot("09-other-key-runs")
    driver.get(f"{url}/console#/runs/{trained.run_id}")
    error = _one(browser, ".error-card")
    assert "not found" in error.text.lower()
    browser.screenshot("10-other-key-run")
    _go(browser, url, "#/playground", "#pg-model")
    assert trained.sampler_path not in _one(browser, "#pg-model").get_attribute("innerHTML")

    # The key never reached the server's log.
    log = (trained.home / "server.log").read_text(errors="replace")
    assert KEY not in log and OTHER_KEY not in log


def _finished_download(folder: pathlib.Path) -> pathlib.Path | None:
    done = [p for p in folder.iterdir() if p.suffix == ".tar"]
    partial = [p for p in folder.iterdir() if p.suffix == ".crdownload"]
    return done[0] if done and not partial else None


def _rest_checkpoints(url: str, key: str, run_id: str) -> set[str]:
    for _ in range(3):
        response = httpx.get(f"{url}/api/v1/training_runs/{run_id}/checkpoints", headers={"X-API-Key": key})
        if response.status_code == 200:
            return {c["checkpoint_id"] for c in response.json()["checkpoints"]}
        time.sleep(0.2)
    raise AssertionError(response.text)
