"""The official 0.38 client against a key with a tokens-per-minute quota: over the limit, its
training calls are held (polls answer ``paused_rate_limit``) and its sampling calls get 429
with ``Retry-After``; the client waits and every call succeeds, none fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.interpreters import python_from_env
from tests.support.live_server import live_server
from tinker_server.engine import TINY_MODEL

pytestmark = [pytest.mark.compat, pytest.mark.slow]

CLIENT = textwrap.dedent(
    """
    import sys, time
    import tinker
    from tinker import types

    url, model, key = sys.argv[1:4]
    sc = tinker.ServiceClient(base_url=url, api_key=key)
    tc = sc.create_lora_training_client(base_model=model, rank=4)
    tokens = list(range(1, 201))
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[199])},
    )
    start = time.time()
    for step in range(3):  # 597 tokens against a limit of 300 per minute: the third waits
        out = tc.forward_backward([datum], "cross_entropy").result()
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
        print("step", step, "loss", out.metrics["loss:sum"], "at", round(time.time() - start, 1), flush=True)
    sampler = tc.save_weights_and_get_sampling_client(name="s")
    for _ in range(2):
        result = sampler.sample(types.ModelInput.from_ints([1, 2, 3]), 1, types.SamplingParams(max_tokens=40)).result()
        assert len(result.sequences) == 1
    print("ELAPSED", round(time.time() - start, 1))
    print("PASSED")
    """
)


def test_official_client_waits_out_a_tokens_per_minute_quota(tmp_path: Path) -> None:
    python = python_from_env("TINKER_COMPAT38_PYTHON", "the official 0.38 client's virtualenv")
    home = tmp_path / "home"
    created = subprocess.run(
        [
            str(Path(sys.executable).with_name("tinker-server")),
            "admin",
            "key",
            "create",
            "quota-test",
            "--tokens-per-minute",
            "300",
            "--home",
            str(home),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tml-")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with live_server(home, [TINY_MODEL]) as url:
        proc = subprocess.run(
            [python, str(script), url, TINY_MODEL, key],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    log = (home / "server.log").read_text(errors="replace")
    assert proc.returncode == 0 and "PASSED" in proc.stdout, proc.stdout + proc.stderr[-4000:] + log[-3000:]
    elapsed = float(proc.stdout.split("ELAPSED")[1].split()[0])
    assert elapsed > 40, proc.stdout  # the quota made it wait (a 60 s window), it did not fail
    assert '"POST /api/v1/retrieve_future HTTP/1.1" 408' in log
