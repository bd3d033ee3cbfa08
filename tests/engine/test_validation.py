"""Bad requests raise UserInputError (or AdapterNotFound) with messages that say what is wrong."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tinker_server.engine import (
    AdamConfig,
    AdapterNotFound,
    Engine,
    LoraSpec,
    SampleJob,
    TrainDatum,
    UserInputError,
)

from .conftest import ok


@pytest.fixture
def eng(engine: Engine) -> Engine:
    engine.create_adapter("a", LoraSpec(rank=2, seed=1))
    return engine


def datum(n: int = 5, **inputs) -> TrainDatum:
    base: dict[str, np.ndarray | None] = {"target_tokens": np.arange(n), "weights": np.ones(n, np.float32)}
    base.update(inputs)
    return TrainDatum(tokens=list(range(10, 10 + n)), loss_fn_inputs={k: v for k, v in base.items() if v is not None})


def rl_datum(n: int = 5) -> TrainDatum:
    return datum(n, weights=None, logprobs=np.full(n, -2.0, np.float32), advantages=np.ones(n, np.float32))


TRAIN_CASES = [
    (
        "cross_entropy",
        [datum(), TrainDatum(tokens=[1, 99999], loss_fn_inputs={"target_tokens": np.array([1, 2])})],
        None,
        "datum 1: token id 99999 is outside the vocabulary (size 512)",
    ),
    (
        "cross_entropy",
        [datum(target_tokens=np.array([1, 2, 3, 4, 600]))],
        None,
        "datum 0: target token id 600 is outside the vocabulary (size 512)",
    ),
    (
        "cross_entropy",
        [datum(7, weights=np.ones(5, np.float32))],
        None,
        "datum 0: loss_fn_inputs['weights'] has 5 values but model_input has 7 tokens",
    ),
    (
        "cross_entropy",
        [datum(target_tokens=np.arange(4))],
        None,
        "datum 0: loss_fn_inputs['target_tokens'] has 4 values but model_input has 5 tokens",
    ),
    (
        "foo",
        [datum()],
        None,
        "unknown loss_fn 'foo'; expected one of: cross_entropy, importance_sampling, ppo, cispo, dro",
    ),
    (
        "stable_reinforce",
        [rl_datum()],
        None,
        "loss_fn 'stable_reinforce' is not supported by this server: its objective is not publicly specified",
    ),
    (
        "ppo",
        [rl_datum(), datum(weights=None, logprobs=np.zeros(5, np.float32))],
        None,
        "datum 1: loss_fn_inputs is missing 'advantages' (required by loss_fn 'ppo')",
    ),
    (
        "cross_entropy",
        [datum(weights=None, target_tokens=None)],
        None,
        "datum 0: loss_fn_inputs is missing 'target_tokens' (required by loss_fn 'cross_entropy')",
    ),
    (
        "cross_entropy",
        [datum(advantages=np.ones(5, np.float32))],
        None,
        "datum 0: loss_fn_inputs key 'advantages' is not used by cross_entropy",
    ),
    ("ppo", [rl_datum()], {"clip_ratio": 0.2}, "unknown loss_fn_config key 'clip_ratio' for ppo"),
    ("cross_entropy", [datum()], {"beta": 1.0}, "unknown loss_fn_config key 'beta' for cross_entropy"),
    ("ppo", [rl_datum()], {"clip_low_threshold": 1.5}, "clip_low_threshold (1.5) is greater than"),
    ("dro", [rl_datum()], {"beta": float("nan")}, "loss_fn_config['beta'] must be a finite number"),
    ("dro", [rl_datum()], {"beta": "0.1"}, "loss_fn_config['beta'] must be a finite number, got '0.1'"),
    (
        "gspo",
        [rl_datum()],
        {"clip_low_threshold": "low"},
        "loss_fn_config['clip_low_threshold'] must be a finite number",
    ),
    ("gspo", [rl_datum()], {"clip_low_threshold": 1.3}, "clip_low_threshold (1.3) is greater than"),
    (
        "gspo",
        [
            datum(
                weights=None,
                logprobs=np.zeros(5, np.float32),
                advantages=np.ones(5, np.float32),
                sequence_ratio_mask=np.ones(3, np.float32),
            )
        ],
        None,
        "datum 0: loss_fn_inputs['sequence_ratio_mask'] has 3 values but model_input has 5 tokens",
    ),
    (
        "ppo",
        [
            datum(
                weights=None,
                logprobs=np.zeros(5, np.float32),
                advantages=np.ones(5, np.float32),
                sequence_ratio_mask=np.ones(5, np.float32),
            )
        ],
        None,
        "datum 0: loss_fn_inputs key 'sequence_ratio_mask' is not used by ppo",
    ),
    (
        "cross_entropy",
        [TrainDatum(tokens=[], loss_fn_inputs={"target_tokens": np.array([], np.int64)})],
        None,
        "datum 0: the input has no tokens",
    ),
    ("cross_entropy", [datum(weights=np.array([1, 1, np.nan, 1, 1], np.float32))], None, "contains NaN"),
    ("cross_entropy", [datum(target_tokens=np.array([0.5, 1, 2, 3, 4]))], None, "must be integers"),
    (
        "cross_entropy",
        # deliberately not ints: the engine must refuse them
        [TrainDatum(tokens=[1.5, 2], loss_fn_inputs={"target_tokens": np.array([1, 2])})],  # type: ignore[list-item]
        None,
        "datum 0: tokens must be integers",
    ),
    ("cross_entropy", [datum(weights=np.array(["a"] * 5))], None, "must be numbers"),
]


@pytest.mark.parametrize(("loss_fn", "data", "config", "message"), TRAIN_CASES)
def test_bad_training_requests(eng: Engine, loss_fn, data, config, message) -> None:
    with pytest.raises(UserInputError) as info:
        eng.forward_backward("a", data, loss_fn, config, backward=True)
    assert message in str(info.value)
    assert all(p.grad is None for p in eng._adapters["a"].parameters())


def test_context_overflow(eng: Engine) -> None:
    n = eng.info.max_context + 1
    with pytest.raises(UserInputError, match=f"datum 0 has {n} tokens, more than the model's context of 2048"):
        eng.forward_backward("a", [datum(n)], "cross_entropy", None, backward=False)


def test_forward_ignores_inputs_its_loss_does_not_use(eng: Engine) -> None:
    out = eng.forward_backward("a", [datum(advantages=np.ones(5, np.float32))], "cross_entropy", None, backward=False)
    assert out.loss_fn_outputs[0]["logprobs"].shape == (5,)


def test_multi_dimensional_inputs_are_flattened(eng: Engine) -> None:
    out = eng.forward_backward(
        "a", [datum(6, weights=np.ones((2, 3), np.float32))], "cross_entropy", None, backward=False
    )
    assert out.loss_fn_outputs[0]["logprobs"].shape == (6,)


def test_unknown_adapters(eng: Engine) -> None:
    with pytest.raises(AdapterNotFound, match="'zzz'"):
        eng.forward_backward("zzz", [datum()], "cross_entropy", None, backward=True)
    for call in (
        lambda: eng.optim_step("zzz", AdamConfig()),
        lambda: eng.drop_adapter("zzz"),
        lambda: eng.adapter_spec("zzz"),
        lambda: eng.copy_adapter("zzz", "y"),
        lambda: eng.save_adapter("zzz", pathlib.Path("/tmp/never"), optimizer=False),
    ):
        with pytest.raises(AdapterNotFound):
            call()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (LoraSpec(rank=0), "rank must be between 1 and"),
        (LoraSpec(rank=2.5), "rank must be an integer"),  # type: ignore[arg-type]
        (LoraSpec(rank=2, seed="x"), "seed must be an integer"),  # type: ignore[arg-type]
        (LoraSpec(rank=2, train_mlp=False, train_attn=False, train_unembed=False), "trains nothing"),
    ],
)
def test_bad_lora_specs(eng: Engine, spec: LoraSpec, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        eng.create_adapter("b", spec)


def test_duplicate_adapter_id(eng: Engine) -> None:
    with pytest.raises(UserInputError, match="adapter 'a' already exists"):
        eng.create_adapter("a", LoraSpec(rank=2))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (AdamConfig(learning_rate=-1.0), "learning_rate must be between 0 and 10"),
        (AdamConfig(beta1=1.0), "beta1 must be in"),
        (AdamConfig(beta2=float("nan")), "beta2 must be a finite number"),
        (AdamConfig(eps=-1e-8), "eps must be > 0"),
        (AdamConfig(grad_clip_norm=-1), "grad_clip_norm must be >= 0"),
    ],
)
def test_bad_adam_configs(eng: Engine, cfg: AdamConfig, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        eng.optim_step("a", cfg)
    assert eng._adapters["a"].optim_step == 0


SAMPLE_CASES = [
    (dict(prompt=[]), "prompt has no tokens"),
    (dict(prompt=[1, 512]), "prompt token id 512 is outside the vocabulary (size 512)"),
    (dict(prompt=[1, -1]), "prompt token id -1 is outside the vocabulary"),
    (dict(prompt=["a"]), "prompt must be a list of integer token ids"),
    (dict(num_samples=0), "num_samples must be an integer from 1 to"),
    (dict(max_tokens=-1), "max_tokens must be a non-negative integer"),
    (dict(max_tokens=2047), "prompt (3 tokens) plus max_tokens (2047) exceeds the model's context of 2048"),
    (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
    (dict(top_k=-2), "top_k must be -1 (off) or a positive integer"),
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1]"),
    (dict(seed=1.5), "seed must be an integer or None"),
    (dict(stop_strings=[""]), "stop strings must be non-empty strings"),
    (dict(stop_token_ids=[9999]), "stop token id 9999 is outside the vocabulary"),
    (dict(topk_prompt_logprobs=-1), "topk_prompt_logprobs must be an integer from 0 to 512"),
    (dict(prompt=[1] * 2049), "prompt has 2049 tokens, more than the model's context of 2048"),
    (dict(topk_sample_logprobs=21), "topk_sample_logprobs must be an integer from 0 to 20, got 21"),
    (dict(topk_sample_logprobs=1.0), "topk_sample_logprobs must be an integer from 0 to 20"),
    (dict(prompt_alt_tokens_k=-1), "prompt_alt_tokens_k must be an integer from 0 to 20, got -1"),
    (dict(prompt_logprobs_last_n=2), "prompt_logprobs_last_n requires prompt_logprobs"),
    (dict(prompt_logprobs=True, prompt_logprobs_last_n=0), "prompt_logprobs_last_n must be a positive integer"),
    (
        dict(target_prompt_logprobs=np.zeros((3, 2), np.int64)),
        "target_prompt_logprobs must have shape [len(prompt) - 1, K] = [2, K], got [3, 2]",
    ),
    (dict(target_prompt_logprobs=np.zeros(2, np.int64)), "target_prompt_logprobs must have shape"),
    (
        dict(target_prompt_logprobs=np.array([[1, 512], [0, -1]])),
        "target_prompt_logprobs token id 512 is outside the vocabulary (size 512; -1 means no request)",
    ),
    (dict(target_prompt_logprobs=np.array([[1, -2], [0, -1]])), "target_prompt_logprobs token id -2 is outside"),
    (dict(target_prompt_logprobs=np.array([[1.5], [0.0]])), "target_prompt_logprobs must hold integer token ids"),
]


@pytest.mark.parametrize(("fields", "message"), SAMPLE_CASES)
def test_bad_sample_jobs(eng: Engine, fields: dict, message: str) -> None:
    job = SampleJob(**{"adapter_id": "a", "prompt": [1, 2, 3], "max_tokens": 2, **fields})
    good = SampleJob("a", [1, 2, 3], max_tokens=2, seed=1)
    bad_result, good_result = eng.sample([job, good])
    assert isinstance(bad_result, UserInputError) and message in str(bad_result)
    assert len(ok(good_result).sequences[0].tokens) == 2


def test_top_k_zero_means_off(eng: Engine) -> None:
    a = eng.sample([SampleJob("a", [1, 2, 3], max_tokens=4, seed=1, top_k=0)])[0]
    b = eng.sample([SampleJob("a", [1, 2, 3], max_tokens=4, seed=1, top_k=-1)])[0]
    assert ok(a).sequences[0].tokens == ok(b).sequences[0].tokens


def test_nested_tokens_are_refused(eng: Engine) -> None:
    bad = TrainDatum(tokens=[[1, 2], [3, 4]], loss_fn_inputs={"target_tokens": np.arange(4)})  # type: ignore[list-item]
    with pytest.raises(UserInputError, match="datum 0: tokens must be a flat list"):
        eng.forward_backward("a", [bad], "cross_entropy", None, backward=False)


def test_numpy_scalars_are_accepted_in_sample_jobs(eng: Engine) -> None:
    # numpy scalars where the job's fields say int and float: what the test is about
    job = SampleJob(
        "a",
        [np.int64(1), np.int64(2)],  # type: ignore[list-item]
        num_samples=np.int64(2),  # type: ignore[arg-type]
        max_tokens=np.int64(3),  # type: ignore[arg-type]
        temperature=np.float32(0.5),  # type: ignore[arg-type]
        top_k=np.int64(5),  # type: ignore[arg-type]
        seed=np.int64(4),  # type: ignore[arg-type]
        stop_token_ids=[np.int64(7)],  # type: ignore[list-item]
    )
    out = eng.sample([job])[0]
    assert not isinstance(out, Exception) and len(out.sequences) == 2
