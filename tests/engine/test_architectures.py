"""Every supported architecture through the engine's public entry point.

For each of Llama, Qwen2 (qkv bias), Qwen3 (q/k norm), Mistral (sliding window),
Gemma 2 (scaled embeddings, attention and final logit softcapping, hybrid
sliding / full layers, eager attention), Gemma 3 text (hybrid layers, scaled
embeddings) and Phi-3 (fused ``qkv_proj`` / ``gate_up_proj``, sliding window), a
tiny random model is built from its transformers config class, saved to a
directory with the tiny tokenizer and loaded with ``load_engine(path)``. Checked
against plain HF with the adapter merged (``W + s * B @ A``): LoRA gradients on
attention, MLP and ``lm_head``; greedy sampling against ``generate``; the saved
adapter in stock PEFT. Sliding windows are 8 tokens and sequences longer, so
the windows matter.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from transformers import GenerationMixin

from tinker_server.engine import Engine, LoraSpec, ModelLoadError, SampleJob, load_engine
from tinker_server.engine.tiny import ensure_tiny_tokenizer

from .conftest import MergedReference, adapter_grads, assert_tensors_close, ok, random_datums, randomize_adapter

VOCAB = 512
WINDOW = 8
COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as t

    return {
        "llama": lambda: t.LlamaConfig(**COMMON),
        "qwen2": lambda: t.Qwen2Config(**COMMON),
        "qwen3": lambda: t.Qwen3Config(**COMMON, head_dim=16),
        "mistral": lambda: t.MistralConfig(**COMMON, head_dim=16, sliding_window=WINDOW),
        "gemma2": lambda: t.Gemma2Config(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=4.0,
            attn_logit_softcapping=5.0,
        ),
        "gemma3_text": lambda: t.Gemma3TextConfig(
            **COMMON,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        ),
        "phi3": lambda: t.Phi3Config(**COMMON, sliding_window=WINDOW),
    }


ARCHS = list(_configs())
# Sequences longer than the sliding window, of different lengths (padding in a batch).
PROMPTS = [
    [5, 17, 200, 33, 9, 41, 77, 12, 3, 99, 150],
    [300, 4, 8],
    [44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56],
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return ensure_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


def _save_model(config: Any, directory: pathlib.Path, tokenizer_dir: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random model of ``config``'s architecture (seeded; N(0, 0.08), norm scales 1) saved
    to ``directory`` with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.08)
    model.save_pretrained(str(directory))
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            shutil.copy(f, directory / f.name)
    return directory


def _hf_model(engine: Engine, directory: pathlib.Path) -> torch.nn.Module:
    """A plain HF copy of the engine's base model (same attention implementation)."""
    from transformers import AutoModelForCausalLM

    attention = engine._parts.model.config._attn_implementation
    return AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation=attention
    ).eval()


@pytest.fixture(scope="module", params=ARCHS)
def arch(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: pathlib.Path
) -> tuple[str, pathlib.Path, Engine]:
    """(architecture, model directory, engine with adapter ``a``: all targets, random A and B)."""
    name = request.param
    directory = _save_model(_configs()[name](), tmp_path_factory.mktemp(name), tokenizer_dir)
    engine = load_engine(str(directory), home=tmp_path_factory.mktemp(f"{name}-home"))
    assert engine.info.arch == name
    engine.create_adapter("a", LoraSpec(rank=4, seed=7, train_attn=True, train_mlp=True, train_unembed=True))
    randomize_adapter(engine, "a", seed=3, scale=0.05)
    return name, directory, engine


EXPECTED_TARGETS = {
    "phi3": ["down_proj", "gate_up_proj", "lm_head", "o_proj", "qkv_proj"],
}
LLAMA_TARGETS = ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_lora_gradients_match_the_merged_reference(arch: tuple[str, pathlib.Path, Engine]) -> None:
    name, directory, engine = arch
    engine._adapters["a"].zero_grad()
    data = random_datums(3, seed=11, lengths=(5, 20), vocab=VOCAB)
    out = engine.forward_backward("a", data, "cross_entropy", None, backward=True)
    ref = MergedReference(engine, "a", _hf_model(engine, directory))
    total = torch.zeros(())
    for datum, output in zip(data, out.loss_fn_outputs, strict=True):
        lp = ref.logprobs(datum)
        torch.testing.assert_close(torch.from_numpy(output["logprobs"]), lp.detach(), rtol=1e-5, atol=1e-5)
        total = total - (lp * torch.as_tensor(datum.loss_fn_inputs["weights"])).sum()
    total.backward()
    assert out.metrics["loss:sum"] == pytest.approx(float(total.detach()), rel=1e-5)
    grads = adapter_grads(engine, "a")
    assert_tensors_close(grads, ref.grads())
    for group in EXPECTED_TARGETS.get(name, LLAMA_TARGETS):  # every target group has LoRA and a gradient
        assert any(f".{group}.lora_A" in k and float(g.abs().max()) > 0 for k, g in grads.items()), group
    engine._adapters["a"].zero_grad()


def test_greedy_sampling_equals_hf_generate(arch: tuple[str, pathlib.Path, Engine]) -> None:
    _, directory, engine = arch
    jobs = [SampleJob("a", prompt, max_tokens=12, temperature=0.0) for prompt in PROMPTS]
    ours = [ok(out).sequences[0].tokens for out in engine.sample(jobs)]
    model = MergedReference(engine, "a", _hf_model(engine, directory)).merged_model()
    assert isinstance(model, GenerationMixin)
    for prompt, tokens in zip(PROMPTS, ours, strict=True):
        with torch.no_grad():
            mask = torch.ones(1, len(prompt), dtype=torch.long)
            generated = model.generate(
                torch.tensor([prompt]),
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=12,
                min_new_tokens=12,
                eos_token_id=None,
                pad_token_id=2,
            )
        assert tokens == generated[0, len(prompt) :].tolist(), prompt


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_saved_adapter_loads_in_stock_peft(arch: tuple[str, pathlib.Path, Engine], tmp_path: pathlib.Path) -> None:
    peft = pytest.importorskip("peft")
    name, directory, engine = arch
    engine.save_adapter("a", tmp_path / "ckpt", optimizer=False)
    config = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    assert config["target_modules"] == EXPECTED_TARGETS.get(name, LLAMA_TARGETS)
    model = peft.PeftModel.from_pretrained(_hf_model(engine, directory), str(tmp_path / "ckpt")).eval()
    data = random_datums(3, seed=5, lengths=(5, 20), vocab=VOCAB)
    ours = engine.forward_backward("a", data, "cross_entropy", None, backward=False).loss_fn_outputs
    with torch.no_grad():
        for datum, output in zip(data, ours, strict=True):
            logits = model(input_ids=torch.tensor([datum.tokens])).logits[0]
            targets = torch.as_tensor(datum.loss_fn_inputs["target_tokens"])[:, None]
            theirs = torch.log_softmax(logits.float(), -1).gather(1, targets)[:, 0].numpy()
            np.testing.assert_allclose(output["logprobs"], theirs, rtol=1e-5, atol=1e-5)
    # and back: the engine reads its own checkpoint to the same logprobs
    engine.load_adapter("b", tmp_path / "ckpt", optimizer=False)
    again = engine.forward_backward("b", data, "cross_entropy", None, backward=False).loss_fn_outputs
    for x, y in zip(ours, again, strict=True):
        np.testing.assert_array_equal(x["logprobs"], y["logprobs"])
    engine.drop_adapter("b")


def test_unsupported_architectures_are_refused_by_name(tmp_path: pathlib.Path, tokenizer_dir: pathlib.Path) -> None:
    import transformers as t

    # A causal LM without LoRA-targetable linear layers (GPT-2's fused Conv1D layers).
    gpt2 = _save_model(
        t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=1, n_head=4, n_positions=64), tmp_path / "gpt2", tokenizer_dir
    )
    supported = r"supported architectures: llama, qwen2, qwen3, mistral, gemma2, gemma3_text, phi3"
    with pytest.raises(ModelLoadError, match=rf"architecture gpt2 \(GPT2LMHeadModel\) is not supported: .*{supported}"):
        load_engine(str(gpt2), home=tmp_path / "home")
    # Not a causal LM at all: refused before any weights are read.
    t5 = tmp_path / "t5"
    t.T5Config(vocab_size=VOCAB, d_model=64, num_layers=1, num_heads=4).save_pretrained(str(t5))
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, t5 / f.name)
    with pytest.raises(
        ModelLoadError,
        match=r"architecture t5 .*is not supported: it is not a causal language model;"
        r" supported architectures: llama, ",
    ):
        load_engine(str(t5), home=tmp_path / "home")
    # A multimodal checkpoint (Gemma 3 4B and up): only its text model would be a causal LM.
    gemma3 = tmp_path / "gemma3"
    t.Gemma3Config().save_pretrained(str(gemma3))
    shutil.copy(tokenizer_dir / "tokenizer.json", gemma3 / "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"architecture gemma3 .*is not supported: it is a multimodal model"):
        load_engine(str(gemma3), home=tmp_path / "home")
    # A model directory without a tokenizer is refused with a sentence saying so.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(gpt2 / "config.json", bare / "config.json")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_engine(str(bare), home=tmp_path / "home")
