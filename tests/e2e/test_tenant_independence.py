"""Tenant independence through the server: two tenants' training steps that share one engine
pass (different LoRA rank, seed and targets) give each tenant what its step gives alone."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import tinker

from .conftest import TINY_MODEL, adam, datum, serve

CONFIGS: dict[str, dict[str, Any]] = {
    "tml-tenant-a": {"rank": 4, "seed": 1, "train_mlp": False},
    "tml-tenant-b": {"rank": 16, "seed": 2, "train_attn": False, "train_unembed": False},
}


def _data(key: str) -> list[tinker.Datum]:
    offset = 5 if key.endswith("a") else 50
    return [datum([(offset + 7 * i) % 512 for i in range(14)]), datum([(offset + 3 * i) % 512 for i in range(9)])]


def _fb_rounds(url: str) -> float:
    """How many forward_backward engine rounds the server has run (its metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(r'tinker_engine_step_seconds_count\{base_model="[^"]+",kind="forward_backward"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def _step(tc: Any, key: str) -> dict[str, Any]:
    out = tc.forward_backward(_data(key), "cross_entropy").result()
    tc.optim_step(adam(0.05)).result()
    after = tc.forward(_data(key), "cross_entropy").result()
    return {
        "loss": out.metrics["loss:sum"],
        "logprobs": [np.asarray(o["logprobs"].data) for o in out.loss_fn_outputs],
        "after": after.metrics["loss:sum"],  # equal only if the gradients and the update were
    }


def test_co_tenants_in_one_pass_get_what_they_get_alone(tmp_path: Path) -> None:
    with serve(tmp_path / "home") as server:
        clients = {key: tinker.ServiceClient(base_url=server.url, api_key=key) for key in CONFIGS}
        try:
            alone = {}
            for key, config in CONFIGS.items():
                tc = clients[key].create_lora_training_client(TINY_MODEL, **config)
                alone[key] = _step(tc, key)
            # The same steps on fresh runs of the same configs, sent together behind a busy
            # engine so that the scheduler takes both in one round.
            fresh = {key: clients[key].create_lora_training_client(TINY_MODEL, **cfg) for key, cfg in CONFIGS.items()}
            blocker = clients["tml-tenant-a"].create_lora_training_client(TINY_MODEL, rank=2)
            busy = blocker.forward([datum(list(range(1, 500))) for _ in range(24)], "cross_entropy")
            rounds_before = _fb_rounds(server.url)
            together: dict[str, dict[str, Any]] = {}
            futures = {key: fresh[key].forward_backward(_data(key), "cross_entropy") for key in CONFIGS}
            busy.result()
            for key, fut in futures.items():
                out = fut.result()
                together[key] = {
                    "loss": out.metrics["loss:sum"],
                    "logprobs": [np.asarray(o["logprobs"].data) for o in out.loss_fn_outputs],
                }
            assert _fb_rounds(server.url) - rounds_before == 1  # both steps went through one pass

            def finish(key: str) -> None:
                fresh[key].optim_step(adam(0.05)).result()
                together[key]["after"] = fresh[key].forward(_data(key), "cross_entropy").result().metrics["loss:sum"]

            threads = [threading.Thread(target=finish, args=(key,)) for key in CONFIGS]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for key in CONFIGS:
                a, b = alone[key], together[key]
                assert abs(a["loss"] - b["loss"]) <= 1e-6 * max(1.0, abs(a["loss"])), (key, a["loss"], b["loss"])
                for x, y in zip(a["logprobs"], b["logprobs"], strict=True):
                    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6)
                assert abs(a["after"] - b["after"]) <= 1e-5 * max(1.0, abs(a["after"])), (key, a["after"], b["after"])
        finally:
            for sc in clients.values():
                sc.holder.close()
