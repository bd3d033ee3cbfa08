"""Sampler/trainer agreement on the real model (issue 5): through SDK + HTTP + a real
``tinker serve`` process on SmolLM2 (fp32, CPU).

The logprobs the sampler reports for the tokens it sampled at temperature 1 must
equal the logprobs ``forward`` computes for the same tokens (teacher-forced, the
training path): max abs difference ≤ 1e-4. Both are checked for a trained adapter
(sampling an adapter snapshot) and for the base model, and ``compute_logprobs``
must agree with ``forward`` on the prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinker
from tests.support.live_server import live_server
from tinker import types
from tinker_server.engine import DEFAULT_MODEL

pytestmark = pytest.mark.slow

TEXT = "The quick brown fox jumps over the lazy dog. Then it"


def _datum(tokens: list[int]) -> types.Datum:
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "weights": types.TensorData(data=[1.0] * n, dtype="float32", shape=[n]),
        },
    )


def _logprobs(out: types.ForwardBackwardOutput) -> list[np.ndarray]:
    return [np.asarray(o["logprobs"].data, dtype=np.float64) for o in out.loss_fn_outputs]


def test_sampler_logprobs_equal_forward_logprobs_on_smollm2(model_home: Path, tmp_path: Path) -> None:
    (model_home / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(model_home / "models")
    with live_server(tmp_path, [DEFAULT_MODEL], timeout=300, env={"OMP_NUM_THREADS": "1"}) as url:
        sc = tinker.ServiceClient(base_url=url, api_key="slow-semantics")
        try:
            tc = sc.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8, seed=0)
            tok = tc.get_tokenizer()
            prompt = tok.encode(TEXT, add_special_tokens=False)
            # one real step so the adapter is not the identity (B != 0)
            tc.forward_backward([_datum(prompt)], "cross_entropy").result(timeout=120)
            tc.optim_step(types.AdamParams(learning_rate=1e-3)).result(timeout=120)

            samplers = {
                "adapter": tc.save_weights_and_get_sampling_client(),
                "base": sc.create_sampling_client(base_model=DEFAULT_MODEL),
            }
            params = types.SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
            for name, sampler in samplers.items():
                res = sampler.sample(types.ModelInput.from_ints(prompt), 2, params).result(timeout=120)
                assert len(res.sequences) == 2
                if name == "adapter":
                    fwd = _logprobs(
                        tc.forward([_datum(prompt + s.tokens) for s in res.sequences], "cross_entropy").result(
                            timeout=120
                        )
                    )
                else:  # the base model = a fresh adapter (B = 0) of another run
                    base_tc = sc.create_lora_training_client(base_model=DEFAULT_MODEL, rank=8, seed=1)
                    fwd = _logprobs(
                        base_tc.forward([_datum(prompt + s.tokens) for s in res.sequences], "cross_entropy").result(
                            timeout=120
                        )
                    )
                for seq, lp in zip(res.sequences, fwd, strict=False):
                    assert len(seq.tokens) == 16 and seq.logprobs is not None
                    ours = np.asarray(seq.logprobs, dtype=np.float64)
                    diff = np.abs(ours - lp[len(prompt) - 1 :]).max()
                    assert diff <= 1e-4, f"{name}: max |sampler - forward| = {diff:.2e}"
                    assert np.all(ours < 0)

            computed = samplers["adapter"].compute_logprobs(types.ModelInput.from_ints(prompt)).result(timeout=120)
            assert computed[0] is None and len(computed) == len(prompt)
            fwd_prompt = _logprobs(tc.forward([_datum(prompt)], "cross_entropy").result(timeout=120))[0]
            assert np.abs(np.asarray(computed[1:], dtype=np.float64) - fwd_prompt).max() <= 1e-4
        finally:
            sc.holder.close()
