"""The walking skeleton on the real model: pig-latin SFT of SmolLM2 through SDK + HTTP + server."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

import tinker
from tests.support.live_server import live_server
from tinker import types
from tinker_server.engine import DEFAULT_MODEL

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[2] / "examples" / "pig_latin.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pig_latin_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pig_latin_sft_learns_the_targets(model_home: Path, tmp_path: Path) -> None:
    example = load_example()
    (model_home / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(model_home / "models")
    with live_server(tmp_path, [DEFAULT_MODEL], timeout=300) as url:
        sc = tinker.ServiceClient(base_url=url, api_key="slow-test")
        tc = sc.create_lora_training_client(base_model=DEFAULT_MODEL, rank=16, seed=0)
        tok = tc.get_tokenizer()
        data = [example.make_datum(tok, en, pl) for en, pl in example.TRAIN]
        losses = []
        for _ in range(20):
            fb = tc.forward_backward(data, "cross_entropy")
            op = tc.optim_step(types.AdamParams(learning_rate=5e-4))
            losses.append(fb.result().metrics["loss:sum"])
            op.result()
        assert losses[-1] <= 0.1 * losses[0], losses

        sampler = tc.save_weights_and_get_sampling_client(name="final")
        params = types.SamplingParams(max_tokens=20, temperature=0.0, stop=["\n"])
        exact = 0
        for english, pig_latin in example.TRAIN:
            prompt = types.ModelInput.from_ints(tok.encode(example.prompt_text(english), add_special_tokens=False))
            result = sampler.sample(prompt, num_samples=1, sampling_params=params).result()
            exact += tok.decode(result.sequences[0].tokens).strip() == pig_latin
        assert exact >= 2, f"only {exact} of {len(example.TRAIN)} targets reproduced"
