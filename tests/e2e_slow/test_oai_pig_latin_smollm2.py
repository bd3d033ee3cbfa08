"""The pig-latin adapter, trained on SmolLM2 in its chat format through our SDK, answers
through the OpenAI-compatible chat endpoint, asked with the official ``openai`` client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tinker
from tests.e2e_slow.test_pig_latin_smollm2 import load_example
from tests.support.live_server import live_server
from tinker import types
from tinker_server.engine import DEFAULT_MODEL

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow


def question(english: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Translate into Pig Latin: {english}"}]


def chat_datum(tokenizer: Any, english: str, pig_latin: str) -> types.Datum:
    """The chat template's prompt (weight 0), then the answer and the end of the turn (weight 1)."""
    prompt_text = tokenizer.apply_chat_template(question(english), tokenize=False, add_generation_prompt=True)
    prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
    answer = tokenizer.encode(f"{pig_latin}<|im_end|>", add_special_tokens=False)
    tokens = prompt + answer
    weights = [0.0] * len(prompt) + [1.0] * len(answer)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        # lists: Datum converts them to TensorData (a before-validator the field type cannot show)
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},  # type: ignore[dict-item]
    )


def looks_like_pig_latin(text: str) -> bool:
    words = [w.strip(".,!?").lower() for w in text.split()]
    return bool(words) and sum(w.endswith("ay") for w in words) >= 0.75 * len(words)


def test_the_pig_latin_adapter_answers_through_the_chat_endpoint(model_home: Path, tmp_path: Path) -> None:
    example = load_example()
    (model_home / "models").mkdir(parents=True, exist_ok=True)
    (tmp_path / "models").symlink_to(model_home / "models")
    with live_server(tmp_path, [DEFAULT_MODEL], timeout=300) as url:
        sc = tinker.ServiceClient(base_url=url, api_key="tml-oai-slow")
        try:
            path = train(sc, example)
        finally:
            sc.holder.close()
        with openai.OpenAI(base_url=f"{url}/oai/api/v1", api_key="tml-oai-slow", max_retries=0) as client:
            ask(client, path, example)


def train(sc: tinker.ServiceClient, example: Any) -> str:
    """20 steps of chat-format SFT on the example's pairs; the sampler checkpoint's path."""
    trainer = sc.create_lora_training_client(base_model=DEFAULT_MODEL, rank=16, seed=0)
    tokenizer = trainer.get_tokenizer()
    data = [chat_datum(tokenizer, en, pl) for en, pl in example.TRAIN]
    losses = []
    for _ in range(20):
        fb = trainer.forward_backward(data, "cross_entropy")
        step = trainer.optim_step(types.AdamParams(learning_rate=5e-4))
        losses.append(fb.result().metrics["loss:sum"])
        step.result()
    assert losses[-1] <= 0.1 * losses[0], losses
    return str(trainer.save_weights_for_sampler("pig-latin-chat").result().path)


def ask(client: Any, path: str, example: Any) -> None:
    assert path in [m.id for m in client.models.list()]
    answers = []
    for english, pig_latin in example.TRAIN:
        out = client.chat.completions.create(model=path, messages=question(english), temperature=0, max_tokens=24)
        choice = out.choices[0]
        assert choice.finish_reason == "stop" and "<|im_end|>" not in (choice.message.content or "")
        answers.append((pig_latin, (choice.message.content or "").strip()))
    exact = sum(expected == got for expected, got in answers)
    assert exact >= len(answers) // 2, answers
    assert all(looks_like_pig_latin(got) for _, got in answers), answers

    english, pig_latin = example.TRAIN[0]
    with client.chat.completions.create(
        model=path, messages=question(english), temperature=0, max_tokens=24, stream=True
    ) as streamed:
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).strip() == answers[0][1]
    # The base model, asked the same, is not the one answering in pig latin.
    base = client.chat.completions.create(model=DEFAULT_MODEL, messages=question(english), temperature=0, max_tokens=24)
    assert (base.choices[0].message.content or "").strip() != pig_latin
