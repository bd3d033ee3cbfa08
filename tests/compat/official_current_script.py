"""Drives an OFFICIAL tinker client of the protobuf era (0.25 and later) against our server.

Runs in the client's own virtualenv (``pip install tinker==X``) and imports nothing
of this project. Features that appeared after 0.25 are exercised only when the
installed version has them. Usage::

    python official_current_script.py BASE_URL MODEL TOKENIZER_DIR PHASE [OUT_DIR]

Phases:

* ``loop``: pipelined SFT whose loss falls, forward, sampling with stop strings and
  sequence ids, compute_logprobs, save_state with a TTL, create_training_client_from_state
  with and without the optimizer, REST listing, TTL set/clear, clean errors for bad input.
* ``chunks``: one forward_backward split into several chunks by the server's client
  config (sent concurrently, first chunk last) equals the same call in one chunk.
* ``checkpoint``: saves a training checkpoint and prints its path for the CLI phase.
* ``probes``: client-side behaviours (capabilities without a session, a lazy
  ServiceClient, the ``tml-`` key prefix); the test reads the server's access log.

Prints ``ok: ...`` per check and ``PASSED <phase>`` at the end; exits non-zero on failure.
"""

from __future__ import annotations

import math
import sys
from importlib.metadata import version

from official_common import PAIRS, check, datum
from transformers import AutoTokenizer

import tinker
from tinker import types

VERSION = tuple(int(p) for p in version("tinker").split(".")[:2])
KEY = "tml-local"


def resolved(obj):  # any client type
    """0.38 creation methods return a future of the client; older ones the client."""
    result = getattr(obj, "result", None)
    return result() if callable(result) else obj


def logprobs_of(out: types.ForwardBackwardOutput) -> list[list[float]]:
    return [list(map(float, o["logprobs"].tolist())) for o in out.loss_fn_outputs]


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def adam() -> types.AdamParams:
    if VERSION >= (0, 7):
        return types.AdamParams(learning_rate=1e-3, weight_decay=0.0, grad_clip_norm=10.0)
    return types.AdamParams(learning_rate=1e-3)


def loop(sc: tinker.ServiceClient, model: str, tok) -> None:
    caps = sc.get_server_capabilities()
    check(any(m.model_name == model for m in caps.supported_models), f"{model} is advertised")
    tc = resolved(sc.create_lora_training_client(base_model=model, rank=8))
    check(tc.get_info().model_data.model_name == model, "get_info names the base model")
    data = [datum(tok, e, p) for e, p in PAIRS]

    losses = []
    for _ in range(6):
        fb = tc.forward_backward(data, "cross_entropy")  # pipelined: both submitted before waiting
        op = tc.optim_step(adam())
        out = fb.result()
        op.result()
        check(len(out.loss_fn_outputs) == len(data), "one loss output per datum (protobuf result)")
        losses.append(out.metrics["loss:sum"])
    check(losses[-1] < losses[0], f"loss falls {losses[0]:.3f} -> {losses[-1]:.3f}")
    fwd = tc.forward(data, "cross_entropy").result()
    check(
        [len(x) for x in logprobs_of(fwd)] == [d.model_input.length for d in data],
        "forward (through /forward_backward, forward_only) gives one logprob per token",
    )
    again = tc.forward(data, "cross_entropy").result()
    check(max_diff(logprobs_of(fwd), logprobs_of(again)) == 0.0, "forward accumulates no gradient")

    sampler = resolved(tc.save_weights_and_get_sampling_client())
    prompt = types.ModelInput.from_ints(tok.encode("English: hello world\nPig Latin:", add_special_tokens=False))
    params = types.SamplingParams(max_tokens=12, temperature=0.0, stop=["\n"])
    res = sampler.sample(prompt, num_samples=2, sampling_params=params).result()
    check(len(res.sequences) == 2, "two sequences sampled (protobuf result)")
    check(all(len(s.logprobs or []) == len(s.tokens) for s in res.sequences), "one logprob per sampled token")
    text = tok.decode(res.sequences[0].tokens)
    check(
        text.count("\n") <= 1 and (text.endswith("\n") or len(res.sequences[0].tokens) == 12), f"stop string {text!r}"
    )
    if VERSION >= (0, 26):
        ids = [s.sequence_id for s in res.sequences]
        check(len(set(ids)) == 2 and all(ids), f"sequence ids {ids}")
    lps = sampler.compute_logprobs(prompt).result()
    check(lps[0] is None and len(lps) == prompt.length and all(x is not None for x in lps[1:]), "compute_logprobs")
    extras(sampler, prompt, lps)
    if VERSION >= (0, 26):
        custom(tc, data)

    named = tc.save_weights_for_sampler("s1").result().path
    from_path = resolved(sc.create_sampling_client(model_path=named))
    if VERSION >= (0, 38):
        check(from_path.get_base_model() == model, "a sampler from a path knows its base model (GET /samplers)")
    check(len(from_path.sample(prompt, 1, params).result().sequences) == 1, "sampling from a saved sampler path")

    state = tc.save_state("c1", ttl_seconds=3600).result().path
    rc = sc.create_rest_client()
    listed = {c.tinker_path: c for c in rc.list_checkpoints(tc.model_id).result().checkpoints}
    # expires_at, set_checkpoint_ttl_from_tinker_path: official client API that this SDK lacks
    check(state in listed and listed[state].expires_at is not None, "save_state with ttl_seconds lists expires_at")  # type: ignore[attr-defined]
    if VERSION >= (0, 13):
        rc.set_checkpoint_ttl_from_tinker_path(state, None).result()  # type: ignore[attr-defined]
        listed = {c.tinker_path: c for c in rc.list_checkpoints(tc.model_id).result().checkpoints}
        check(listed[state].expires_at is None, "set_checkpoint_ttl(None) clears the expiry")  # type: ignore[attr-defined]
    runs = rc.list_training_runs(limit=50).result()
    check(any(r.training_run_id == tc.model_id for r in runs.training_runs), "run is listed")
    check(rc.get_training_run(tc.model_id).result().lora_rank == 8, "get_training_run")
    check(
        state in {c.tinker_path for c in rc.list_user_checkpoints(limit=100).result().checkpoints}, "user checkpoints"
    )

    before = logprobs_of(tc.forward(data, "cross_entropy").result())
    restored = resolved(sc.create_training_client_from_state(state))
    check(restored.model_id != tc.model_id, f"from_state makes a new run {restored.model_id}")
    check(max_diff(before, logprobs_of(restored.forward(data, "cross_entropy").result())) < 1e-5, "from_state weights")
    # With the optimizer: one more step from the same state gives the same loss on both runs.
    resumed = resolved(sc.create_training_client_from_state_with_optimizer(state))
    steps = []
    for client in (tc, resumed):
        client.forward_backward(data, "cross_entropy").result()
        client.optim_step(adam()).result()
        steps.append(client.forward(data, "cross_entropy").result().metrics["loss:sum"])
    check(math.isclose(steps[0], steps[1], rel_tol=1e-4), f"from_state_with_optimizer resumes ({steps})")

    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 10**6]),
        # lists: the official client's Datum converts them to TensorData (a before-validator)
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]},  # type: ignore[dict-item]
    )
    try:
        tc.forward_backward([bad], "cross_entropy").result()
    except tinker.BadRequestError as exc:
        check("outside the vocabulary" in str(exc), "an out-of-vocabulary token is a 400 with a sentence")
    else:
        raise SystemExit("FAILED: an out-of-vocabulary token was accepted")
    check(tc.forward(data, "cross_entropy").result() is not None, "the run still serves after the bad request")


def extras(sampler, prompt: types.ModelInput, lps: list[float | None]) -> None:
    """The sampling outputs newer clients ask for, checked against compute_logprobs."""
    params = types.SamplingParams(max_tokens=4, temperature=1.0, seed=7)
    if VERSION >= (0, 29):
        res = sampler.sample(
            prompt, 1, params, include_prompt_logprobs=True, topk_prompt_logprobs=2, topk_sample_logprobs=3
        ).result()
        seq = res.sequences[0]
        rows = seq.topk_logprobs
        check(
            rows is not None and len(rows) == len(seq.tokens) and all(len(r) == 3 for r in rows),
            "top-k sampled logprobs",
        )
        check(all(r[0][1] >= lp - 1e-5 for r, lp in zip(rows, seq.logprobs, strict=True)), "top-k rows are best first")
        top = res.topk_prompt_logprobs
        check(top is not None and top[0] is None and all(len(r) == 2 for r in top[1:]), "top-k prompt logprobs")
    if VERSION >= (0, 30):
        import torch

        ids = torch.full((prompt.length - 1, 2), -1, dtype=torch.int64)
        ids[:, 0] = torch.tensor(prompt.to_ints()[1:])
        res = sampler.sample(prompt, 1, params, target_prompt_logprobs=types.TensorData.from_torch(ids)).result()
        got = res.target_prompt_logprobs.to_torch()
        check(tuple(got.shape) == (prompt.length - 1, 2), "target prompt logprobs shape")
        # ignore: every position after the first has a logprob
        diff = max(abs(float(a) - b) for a, b in zip(got[:, 0], lps[1:], strict=True))  # type: ignore[operator]
        check(
            diff < 1e-4 and bool((got[:, 1] == 0).all()), f"target prompt logprobs equal compute_logprobs ({diff:.1e})"
        )
    if VERSION >= (0, 31):
        res = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=1, seed=3), prompt_alt_tokens_k=2).result()
        alt = res.prompt_alt_tokens
        check(alt is not None and tuple(alt.tokens.shape) == (prompt.length - 1, 2), "prompt alternative tokens")
    if VERSION >= (0, 33):
        last = sampler.compute_logprobs(prompt, prompt_logprobs_last_n=2).result()
        check(all(x is None for x in last[:-2]) and abs(last[-1] - lps[-1]) < 1e-4, "prompt_logprobs_last_n")


def custom(tc, data: list[types.Datum]) -> None:
    """forward_backward_custom: a forward, then a weighted cross_entropy backward (2 seq_ids)."""

    def loss(_data, logprobs):
        total = sum((-lp).sum() for lp in logprobs)
        return total, {"custom_metric": float(total)}

    out = tc.forward_backward_custom(data, loss).result()
    check("loss:sum" in out.metrics, f"forward_backward_custom metrics {sorted(out.metrics)}")
    tc.optim_step(adam()).result()


def chunks(sc: tinker.ServiceClient, model: str, tok) -> None:
    """The server's client config caps chunks at 2 datums: 7 datums go as 4 concurrent submits."""
    data = [datum(tok, e, p) for e, p in PAIRS] + [datum(tok, p, e) for e, p in PAIRS[:3]]
    split = resolved(sc.create_lora_training_client(base_model=model, rank=4, seed=3))
    single = resolved(sc.create_lora_training_client(base_model=model, rank=4, seed=3))
    out = split.forward_backward(data, "cross_entropy").result()
    split.optim_step(adam()).result()
    ref_lps: list[list[float]] = []
    ref_loss = 0.0
    for d in data:  # the same gradient, one datum (one chunk) per call, accumulated
        one = single.forward_backward([d], "cross_entropy").result()
        ref_lps.extend(logprobs_of(one))
        ref_loss += one.metrics["loss:sum"]
    single.optim_step(adam()).result()
    check(len(out.loss_fn_outputs) == 7, "7 outputs from the chunked call, in order")
    check(max_diff(logprobs_of(out), ref_lps) < 1e-5, "chunked logprobs equal the unchunked ones")
    check(math.isclose(out.metrics["loss:sum"], ref_loss, rel_tol=1e-4), f"loss:sum over chunks {ref_loss:.4f}")
    after = [logprobs_of(c.forward(data, "cross_entropy").result()) for c in (split, single)]
    check(max_diff(*after) < 1e-5, "the step after the chunks equals the step after one-datum calls")
    check(max_diff(after[0], ref_lps) > 1e-4, "the step changed the weights")


def probes(base_url: str, model: str) -> None:
    """Client-side behaviours the server relies on (spec 0.38 section 14, P1-P3); the test
    then reads the server's access log to see which requests arrived."""
    if hasattr(tinker, "RestClient"):  # a top-level RestClient (not in 0.25)
        caps = tinker.RestClient(base_url=base_url, api_key=KEY).get_server_capabilities().result()
        check(any(m.model_name == model for m in caps.supported_models), "P1: capabilities through a RestClient")
    print("MARK constructed", flush=True)
    tinker.ServiceClient(base_url=base_url, api_key=KEY)  # P3: lazy, sends nothing (0.23+)
    try:
        resolved(tinker.ServiceClient(base_url=base_url, api_key="sk-x").create_lora_training_client(model, rank=4))
    except tinker.TinkerError as exc:
        check("tml-" in str(exc), "P2: a key without the tml- prefix is refused by the client")
    else:
        raise SystemExit("FAILED: the client accepted an sk- key")


def checkpoint(sc: tinker.ServiceClient, model: str, tok) -> None:
    tc = resolved(sc.create_lora_training_client(base_model=model, rank=4))
    tc.forward_backward([datum(tok, *PAIRS[0])], "cross_entropy").result()
    tc.optim_step(adam()).result()
    print("CHECKPOINT", tc.save_state("for-cli").result().path)


def main() -> None:
    base_url, model, tokenizer_dir, phase = sys.argv[1:5]
    if phase == "probes":
        probes(base_url, model)
        print("PASSED", phase, flush=True)
        return
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    run = {"loop": loop, "chunks": chunks, "checkpoint": checkpoint}[phase]
    if VERSION >= (0, 27):
        # finishes the session at exit; the official client is a context manager from 0.27 (this SDK's is not)
        with tinker.ServiceClient(base_url=base_url, api_key=KEY) as sc:  # type: ignore[attr-defined]
            run(sc, model, tok)
        check(True, "the session finished (ServiceClient context exit)")
    else:
        run(tinker.ServiceClient(base_url=base_url, api_key=KEY), model, tok)
    print("PASSED", phase, flush=True)


if __name__ == "__main__":
    main()
