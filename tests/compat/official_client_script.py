"""Drives the OFFICIAL tinker 0.5.1 client against our server.

Runs in its own virtualenv (``pip install tinker==0.5.1``), so it imports nothing
of this project. Usage::

    python official_client_script.py BASE_URL MODEL TOKENIZER_DIR {train,rest}

``train``: a pig-latin SFT loop (forward_backward, optim_step,
save_weights_and_get_sampling_client, sample). ``rest``: the RestClient surface
(runs, checkpoints, archive download, delete, sessions) and
``create_training_client_from_state``. Exits non-zero with a message on failure.
"""

from __future__ import annotations

import io
import sys
import tarfile
import urllib.request

from official_common import PAIRS, check, datum
from transformers import AutoTokenizer

import tinker
from tinker import types


def train(sc: tinker.ServiceClient, model: str, tok) -> None:
    caps = sc.get_server_capabilities()
    check(any(m.model_name == model for m in caps.supported_models), f"{model} is advertised")
    tc = sc.create_lora_training_client(base_model=model, rank=8)
    info = tc.get_info()
    check(info.model_id == tc.model_id, "get_info names the run")
    data = [datum(tok, e, p) for e, p in PAIRS]
    losses = []
    for _ in range(6):
        fb = tc.forward_backward(data, "cross_entropy")  # pipelined: both submitted before waiting
        op = tc.optim_step(types.AdamParams(learning_rate=1e-3))
        out = fb.result()
        op.result()
        check(len(out.loss_fn_outputs) == len(data), "one loss output per datum")
        losses.append(out.metrics["loss:sum"])
    check(losses[-1] < losses[0], f"loss decreases {losses[0]:.3f} -> {losses[-1]:.3f}")
    sampler = tc.save_weights_and_get_sampling_client(name="compat")
    prompt = types.ModelInput.from_ints(tok.encode("English: hello world\nPig Latin:", add_special_tokens=False))
    res = sampler.sample(
        prompt, num_samples=2, sampling_params=types.SamplingParams(max_tokens=12, temperature=0.0, stop=["\n"])
    ).result()
    check(len(res.sequences) == 2, "two sequences sampled")
    check(all(len(s.logprobs or []) == len(s.tokens) for s in res.sequences), "one logprob per sampled token")
    print("sample:", repr(tok.decode(res.sequences[0].tokens)))
    saved = tc.save_weights_for_sampler("compat-final").result()
    check(saved.path.startswith("tinker://") and "/sampler_weights/" in saved.path, f"named sampler save {saved.path}")
    named = sc.create_sampling_client(model_path=saved.path)
    check(
        len(named.sample(prompt, 1, types.SamplingParams(max_tokens=4)).result().sequences) == 1,
        "sampling from a saved path",
    )


def rest(sc: tinker.ServiceClient, model: str, tok) -> None:
    tc = sc.create_lora_training_client(base_model=model, rank=4)
    assert tc.model_id is not None
    data = [datum(tok, e, p) for e, p in PAIRS]
    tc.forward_backward(data, "cross_entropy").result()
    tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    state = tc.save_state("s1").result().path
    weights = tc.save_weights_for_sampler("w1").result().path
    rc = sc.create_rest_client()
    runs = rc.list_training_runs(limit=50).result()
    check(any(r.training_run_id == tc.model_id for r in runs.training_runs), "run is listed")
    run = rc.get_training_run(tc.model_id).result()
    check(run.base_model == model and run.lora_rank == 4, "get_training_run")
    ckpts = rc.list_checkpoints(tc.model_id).result()
    check({c.tinker_path for c in ckpts.checkpoints} == {state, weights}, "list_checkpoints")
    mine = rc.list_user_checkpoints(limit=100).result()
    check(state in {c.tinker_path for c in mine.checkpoints}, "list_user_checkpoints")
    url = rc.get_checkpoint_archive_url_from_tinker_path(weights).result()
    with urllib.request.urlopen(url.url, timeout=30) as resp, tarfile.open(fileobj=io.BytesIO(resp.read())) as tar:
        names = tar.getnames()
    check(any(n.endswith("adapter_model.safetensors") for n in names), f"archive download {names}")
    sessions = rc.list_sessions().result()
    check(len(sessions.sessions) >= 1, "list_sessions")
    found = [s for s in sessions.sessions if tc.model_id in rc.get_session(s).result().training_run_ids]
    check(len(found) == 1, "get_session lists the run")
    if hasattr(rc, "get_weights_info_by_tinker_path"):  # not in the PyPI build of 0.5.1 (spec section 7)
        check(rc.get_weights_info_by_tinker_path(state).result().lora_rank == 4, "weights_info")
    before = tc.forward(data, "cross_entropy").result()
    restored = sc.create_training_client_from_state(state)
    after = restored.forward(data, "cross_entropy").result()
    diff = max(
        abs(a - b)
        for x, y in zip(before.loss_fn_outputs, after.loss_fn_outputs, strict=False)
        for a, b in zip(x["logprobs"].data, y["logprobs"].data, strict=False)
    )
    check(diff < 1e-5, f"create_training_client_from_state reproduces logprobs (max diff {diff:.2e})")
    tc.load_state(state).result()
    check(True, "load_state")
    sampler = sc.create_sampling_client(model_path=weights)
    logprobs = sampler.compute_logprobs(data[0].model_input).result()
    check(logprobs[0] is None and len(logprobs) == data[0].model_input.length, "compute_logprobs")
    rc.publish_checkpoint_from_tinker_path(state).result()
    # ignore: the run has a last checkpoint (state) by now
    check(rc.get_training_run(tc.model_id).result().last_checkpoint.public, "publish")  # type: ignore[union-attr]
    rc.unpublish_checkpoint_from_tinker_path(state).result()
    check(True, "unpublish")
    rc.delete_checkpoint_from_tinker_path(weights).result()
    left = rc.list_checkpoints(tc.model_id).result()
    check({c.tinker_path for c in left.checkpoints} == {state}, "delete_checkpoint")
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 10**6]),
        # lists: the official client's Datum converts them to TensorData (a before-validator)
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1, 1, 1]},  # type: ignore[dict-item]
    )
    try:
        tc.forward_backward([bad], "cross_entropy").result()
    except tinker.BadRequestError as exc:
        check("outside the vocabulary" in str(exc), f"out-of-vocabulary token is a 400: {exc}")
    else:
        raise SystemExit("FAILED: an out-of-vocabulary token was accepted")


def main() -> None:
    base_url, model, tokenizer_dir, phase = sys.argv[1:5]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sc = tinker.ServiceClient(base_url=base_url, api_key="compat-key")
    {"train": train, "rest": rest}[phase](sc, model, tok)
    print("PASSED", phase)


if __name__ == "__main__":
    main()
