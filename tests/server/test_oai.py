"""The OpenAI-compatible endpoints, driven by the official ``openai`` client against the
real app under uvicorn (tiny model, real engine).

The engine loader is the seam: every served model is the tiny engine behind
:class:`RecordingEngine`, which notes each ``sample`` batch, and one extra name serves
it with a tokenizer whose chat template was removed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

import tinker  # noqa: E402
from tinker_server.app import create_app  # noqa: E402
from tinker_server.engine import TINY_MODEL, SampleJob  # noqa: E402
from tinker_server.runtime import default_engine_loader  # noqa: E402
from tinker_server.settings import Settings  # noqa: E402

NO_TEMPLATE = "test/tiny-without-chat-template"
KEY = "oai-key-1"
OTHER_KEY = "oai-key-2"
PROMPT = "Hello, world! How are you today?"
CHAT = [{"role": "user", "content": "What is your name?"}]


class RecordingEngine:
    """The real engine, noting the jobs of each ``sample`` call and of the one running now."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.batches: list[list[SampleJob]] = []
        self.running: list[SampleJob] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def sample(self, jobs: list[SampleJob]) -> list[Any]:
        self.batches.append(list(jobs))
        self.running = list(jobs)
        try:
            return self._engine.sample(jobs)
        finally:
            self.running = []


@dataclasses.dataclass
class Server:
    url: str
    engines: dict[str, RecordingEngine]
    clients: list[Any] = dataclasses.field(default_factory=list)

    def client(self, key: str = KEY) -> Any:
        """An openai client with ``key`` (closed with the server)."""
        self.clients.append(openai.OpenAI(base_url=f"{self.url}/oai/api/v1", api_key=key, max_retries=0))
        return self.clients[-1]

    def post(self, path: str, body: Any, key: str | None = KEY) -> httpx.Response:
        headers = {"X-API-Key": key} if key is not None else {}
        return httpx.post(f"{self.url}/oai/api/v1/{path}", json=body, headers=headers, timeout=60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _without_chat_template(source: Path, target: Path) -> Path:
    if not target.exists():
        shutil.copytree(source, target)
        (target / "chat_template.jinja").unlink(missing_ok=True)
        config_path = target / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config.pop("chat_template", None)
        config_path.write_text(json.dumps(config))
    return target


@contextlib.contextmanager
def serve(home: Path) -> Iterator[Server]:
    port = _free_port()
    settings = Settings(home=home, host="127.0.0.1", port=port, models=[TINY_MODEL, NO_TEMPLATE], log_level="warning")
    load = default_engine_loader(settings)
    engines: dict[str, RecordingEngine] = {}

    def loader(name: str) -> RecordingEngine:
        engine = load(TINY_MODEL)
        if name == NO_TEMPLATE:
            directory = _without_chat_template(engine.info.tokenizer_dir, home / "no-template-tokenizer")
            engine.info = dataclasses.replace(engine.info, name=NO_TEMPLATE, tokenizer_dir=directory)
        engines[name] = RecordingEngine(engine)
        return engines[name]

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, engine_loader=loader), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, name="oai-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    served = Server(f"http://127.0.0.1:{port}", engines)
    try:
        yield served
    finally:
        for client in served.clients:
            client.close()
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from intra-op threads
    try:
        with serve(tmp_path_factory.mktemp("oai-home")) as srv:
            yield srv
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def client(server: Server) -> Any:
    return server.client()


@pytest.fixture
def service(server: Server) -> Iterator[Callable[..., tinker.ServiceClient]]:
    """Our SDK against the same server (Tinker sampling and training), closed after the test."""
    opened: list[tinker.ServiceClient] = []

    def make(key: str = KEY) -> tinker.ServiceClient:
        opened.append(tinker.ServiceClient(base_url=server.url, api_key=key))
        return opened[-1]

    yield make
    for sc in opened:
        sc.holder.close()
    opened.clear()
    gc.collect()


def _engine(server: Server) -> RecordingEngine:
    if TINY_MODEL not in server.engines:  # models load on first use
        assert server.post("completions", {"model": TINY_MODEL, "prompt": [1], "max_tokens": 1}).status_code == 200
    return server.engines[TINY_MODEL]


def _tokenizer(server: Server) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_engine(server).info.tokenizer_dir))


def _tinker_greedy(sc: tinker.ServiceClient, tokens: list[int], max_tokens: int, model_path: str | None = None) -> Any:
    sampler = (
        sc.create_sampling_client(model_path=model_path)
        if model_path
        else sc.create_sampling_client(base_model=TINY_MODEL)
    )
    params = tinker.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return (
        sampler.sample(tinker.ModelInput.from_ints(tokens), num_samples=1, sampling_params=params).result().sequences[0]
    )


def _cut(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The tokens before the first stop token (which the OpenAI text leaves out)."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i]
    return tokens


# -- completions -----------------------------------------------------------------------------


def test_greedy_completion_equals_tinker_sample(server: Server, client: Any, service: Callable[..., Any]) -> None:
    tok = _tokenizer(server)
    tokens = tok.encode(PROMPT, add_special_tokens=True)
    expected = _tinker_greedy(service(), tokens, 12)
    kept = _cut(list(expected.tokens), {tok.eos_token_id})
    text = tok.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for prompt in (PROMPT, tokens):
        out = client.completions.create(model=TINY_MODEL, prompt=prompt, max_tokens=12, temperature=0, logprobs=2)
        choice = out.choices[0]
        assert choice.text == text
        assert choice.finish_reason == ("stop" if len(kept) < len(expected.tokens) else "length")
        assert choice.logprobs.token_logprobs == pytest.approx(list(expected.logprobs[: len(kept)]), abs=1e-5)
        # Two alternatives per token (one key when both decode to the same text, e.g. a lone byte).
        assert [1 <= len(top) <= 2 for top in choice.logprobs.top_logprobs] == [True] * len(kept)
        assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.created > 0
        assert out.model == TINY_MODEL
        assert out.usage.prompt_tokens == len(tokens)
        assert out.usage.completion_tokens == min(len(kept) + 1, len(expected.tokens))
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_max_tokens_length_and_the_default_of_16(client: Any) -> None:
    out = client.completions.create(model=TINY_MODEL, prompt=PROMPT, max_tokens=5, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"
    out = client.completions.create(model=TINY_MODEL, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16


def test_stop_strings_end_the_text_before_them(client: Any) -> None:
    base = (
        client.completions.create(
            model=TINY_MODEL, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    # A stop string from the middle of the greedy text, as a string and in a list, streamed and not.
    middle = base[len(base) // 2 :][:3]
    assert middle and "\ufffd" not in middle, base
    expected = base[: base.index(middle)]
    for stop in (middle, [middle, "never appears"]):
        out = client.completions.create(
            model=TINY_MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, extra_body={"ignore_eos": True}
        )
        assert out.choices[0].text == expected and out.choices[0].finish_reason == "stop"
        chunks = list(
            client.completions.create(
                model=TINY_MODEL,
                prompt=PROMPT,
                max_tokens=24,
                temperature=0,
                stop=stop,
                stream=True,
                extra_body={"ignore_eos": True},
            )
        )
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_several_prompts_and_n(client: Any) -> None:
    out = client.completions.create(model=TINY_MODEL, prompt=[PROMPT, "The cat sat"], n=2, max_tokens=4, seed=7)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    single = client.completions.create(model=TINY_MODEL, prompt="The cat sat", n=2, max_tokens=4, seed=7)
    assert [c.text for c in out.choices[2:]] == [c.text for c in single.choices]


def test_seed_reproduces_samples(client: Any) -> None:
    def texts(seed: int) -> list[str]:
        out = client.completions.create(
            model=TINY_MODEL,
            prompt=PROMPT,
            n=3,
            max_tokens=8,
            seed=seed,
            temperature=1.0,
            extra_body={"ignore_eos": True},
        )
        return [c.text for c in out.choices]

    first = texts(11)
    assert texts(11) == first
    assert texts(12) != first
    assert len(set(first)) > 1


def test_streamed_completion_equals_the_whole_one(client: Any) -> None:
    args = dict(model=TINY_MODEL, prompt=[PROMPT, "The cat"], n=2, max_tokens=10, seed=3, logprobs=1)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True, **args))
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert mine[-1].finish_reason == choice.finish_reason
        assert all(c.finish_reason is None for c in mine[:-1])
        assert [lp for c in mine for lp in c.logprobs.token_logprobs] == choice.logprobs.token_logprobs


# -- chat ------------------------------------------------------------------------------------


def test_chat_applies_the_template_and_stops_at_the_end_of_turn(
    server: Server, client: Any, service: Callable[..., Any]
) -> None:
    tok = _tokenizer(server)
    prompt = tok.encode(
        tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    )
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    expected = _tinker_greedy(service(), prompt, 40)
    kept = _cut(list(expected.tokens), {end_of_turn, tok.eos_token_id})
    out = client.chat.completions.create(
        model=TINY_MODEL, messages=CHAT, max_tokens=40, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == tok.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert "<|im_end|>" not in choice.message.content
    assert [e.logprob for e in choice.logprobs.content] == pytest.approx(list(expected.logprobs[: len(kept)]), abs=1e-5)
    assert all(len(e.top_logprobs) == 3 and e.bytes == list(e.token.encode()) for e in choice.logprobs.content)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.usage.prompt_tokens == len(prompt)


def test_chat_stops_at_end_of_turn_when_the_model_says_it(client: Any, server: Server) -> None:
    """With a stop-free prompt the tiny model rarely emits <|im_end|>; the trained checkpoint
    test covers that path. Here: the end-of-turn token the server found is <|im_end|>."""
    tok = _tokenizer(server)
    client.chat.completions.create(model=TINY_MODEL, messages=CHAT, max_tokens=1)
    job = _engine(server).batches[-1][0]
    assert tok.convert_tokens_to_ids("<|im_end|>") in job.stop_token_ids


def test_streamed_chat_equals_the_whole_one(client: Any) -> None:
    args = dict(model=TINY_MODEL, messages=CHAT, max_tokens=30, n=2, seed=5, logprobs=True)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert [c.choices[0].delta.role for c in chunks[:2]] == ["assistant", "assistant"]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks[:-1] if c.choices[0].index == choice.index]
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert mine[-1].finish_reason == choice.finish_reason
        streamed = [e.logprob for c in mine if c.logprobs for e in c.logprobs.content]
        assert streamed == [e.logprob for e in choice.logprobs.content]


LONG = 600


def _long_stream(client: Any) -> Any:
    """A streamed completion that keeps the engine decoding for a while (EOS does not end it)."""
    return client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=LONG, stream=True, seed=1, extra_body={"ignore_eos": True}
    )


def _decoding_long(engine: RecordingEngine) -> bool:
    return any(job.max_tokens == LONG for job in engine.running)


def _first_text(stream: Any) -> None:
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            return
    pytest.fail("the stream sent no text")


def test_streaming_sends_text_while_the_engine_is_still_decoding(server: Server) -> None:
    """The first text arrives before the engine's sample call has returned."""
    engine = _engine(server)
    with _long_stream(server.client()) as stream:
        _first_text(stream)
        assert _decoding_long(engine), "the text came only after the batch had finished"


def test_a_stream_closed_while_queued_is_not_decoded(server: Server) -> None:
    engine = _engine(server)
    client = server.client()
    with _long_stream(client) as busy:
        _first_text(busy)
        with client.chat.completions.create(model=TINY_MODEL, messages=CHAT, max_tokens=7, seed=99, stream=True) as s:
            assert next(iter(s)).choices[0].delta.role == "assistant"  # sent once its job is queued
        assert _decoding_long(engine)
    # A later request runs after the closed stream's turn has come.
    client.completions.create(model=TINY_MODEL, prompt=[5, 6], max_tokens=1)
    assert not [j for b in engine.batches for j in b if j.seed == 99 and j.max_tokens == 7]


def test_oai_requests_batch_with_tinker_sampling(server: Server, service: Callable[..., Any]) -> None:
    engine = _engine(server)
    sampler = service().create_sampling_client(base_model=TINY_MODEL)
    client = server.client()
    # A long stream keeps the worker busy; what is queued meanwhile is taken as one batch.
    with _long_stream(client) as stream, concurrent.futures.ThreadPoolExecutor(1) as pool:
        _first_text(stream)
        oai = pool.submit(client.completions.create, model=TINY_MODEL, prompt=[17, 18, 19], max_tokens=3)
        tinker_future = sampler.sample(
            tinker.ModelInput.from_ints([21, 22, 23]),
            num_samples=1,
            sampling_params=tinker.SamplingParams(max_tokens=3),
        )
        time.sleep(0.2)
        assert _decoding_long(engine), "the long stream ended before the two requests were queued"
    oai.result(timeout=60)
    tinker_future.result(timeout=60)
    together = [b for b in engine.batches if {tuple(j.prompt) for j in b} >= {(17, 18, 19), (21, 22, 23)}]
    assert together, [[j.prompt for j in b] for b in engine.batches]


# -- checkpoints and tenants -----------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(server: Server) -> Iterator[dict[str, str]]:
    """A few training steps on the tiny model, saved as sampler weights and as a full state."""
    sc = tinker.ServiceClient(base_url=server.url, api_key=KEY)
    try:
        trainer = sc.create_lora_training_client(base_model=TINY_MODEL, rank=4, seed=0)
        tokens = [(7 * i + 3) % 512 for i in range(12)]
        datum = tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[len(tokens) - 1])
            },
        )
        for _ in range(3):
            trainer.forward_backward([datum], "cross_entropy").result()
            trainer.optim_step(tinker.AdamParams(learning_rate=0.05)).result()
        assert trainer.model_id is not None
        yield {
            "sampler": trainer.save_weights_for_sampler("oai-sampler").result().path,
            "state": trainer.save_state("oai-state").result().path,
            "run": trainer.model_id,
        }
    finally:
        sc.holder.close()
        gc.collect()


def test_a_checkpoint_path_is_a_model(
    server: Server, client: Any, service: Callable[..., Any], checkpoints: dict[str, str]
) -> None:
    tokens = [(7 * i + 3) % 512 for i in range(6)]
    base = client.completions.create(
        model=TINY_MODEL, prompt=tokens, max_tokens=8, temperature=0, logprobs=0, extra_body={"ignore_eos": True}
    )
    for path in (checkpoints["sampler"], checkpoints["state"]):
        expected = _tinker_greedy(service(), tokens, 8, model_path=path)
        out = client.completions.create(
            model=path, prompt=tokens, max_tokens=8, temperature=0, logprobs=0, extra_body={"ignore_eos": True}
        )
        assert out.model == path
        assert out.choices[0].logprobs.token_logprobs == pytest.approx(list(expected.logprobs), abs=1e-5)
        assert out.choices[0].logprobs.token_logprobs != pytest.approx(
            base.choices[0].logprobs.token_logprobs, abs=1e-3
        )
    chat = client.chat.completions.create(model=checkpoints["sampler"], messages=CHAT, max_tokens=5)
    assert chat.model == checkpoints["sampler"] and chat.choices[0].message.content is not None
    listed = [m.id for m in client.models.list()]
    assert listed[:2] == [TINY_MODEL, NO_TEMPLATE] and checkpoints["sampler"] in listed
    assert checkpoints["state"] not in listed  # training states are usable, listed are the sampler checkpoints
    assert client.models.retrieve(checkpoints["sampler"]).owned_by.startswith("user-")


def test_another_tenants_checkpoint_reads_as_missing_until_published(
    server: Server, checkpoints: dict[str, str]
) -> None:
    other = server.client(OTHER_KEY)
    path = checkpoints["sampler"]
    with pytest.raises(openai.NotFoundError) as info:
        other.completions.create(model=path, prompt=[1, 2, 3], max_tokens=2)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    assert path not in [m.id for m in other.models.list()]
    missing = path.replace("oai-sampler", "no-such-checkpoint")
    with pytest.raises(openai.NotFoundError) as absent:
        server.client().completions.create(model=missing, prompt=[1, 2, 3], max_tokens=2)
    assert str(absent.value.body["message"]).replace(missing, path) == info.value.body["message"]

    run_id, checkpoint_id = path.removeprefix("tinker://").split("/", 1)
    published = httpx.post(
        f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}/publish", headers={"X-API-Key": KEY}
    )
    assert published.status_code == 200, published.text
    try:
        out = other.chat.completions.create(model=path, messages=CHAT, max_tokens=3)
        assert out.choices[0].message.content is not None
    finally:
        httpx.delete(
            f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}/publish",
            headers={"X-API-Key": KEY},
        )


# -- authentication and bad input ------------------------------------------------------------


def test_the_key_comes_as_bearer_or_x_api_key(server: Server) -> None:
    body = {"model": TINY_MODEL, "prompt": [1, 2], "max_tokens": 1}
    assert server.post("completions", body).status_code == 200
    bearer = httpx.post(f"{server.url}/oai/api/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    missing = server.post("completions", body, key=None)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]


def _error(call: Callable[[], Any], status: type[Exception] = openai.BadRequestError) -> dict[str, Any]:
    with pytest.raises(status) as info:
        call()
    body = info.value.body  # type: ignore[attr-defined]
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["type"] == "invalid_request_error"
    return body


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"temperature": -1}, "temperature", "temperature must be"),
        ({"top_p": 0}, "top_p", "top_p must be"),
        ({"n": 0}, "n", "n must be"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
        ({"max_tokens": 100000}, "max_tokens", "context"),
        ({"logprobs": 50}, "logprobs", "logprobs must be"),
        ({"echo": True}, "echo", "echo is not supported"),
        ({"stop": [""]}, "stop", "stop strings"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"best_of": 3}, "best_of", "best_of"),
        ({"prompt": [1, 99999]}, "prompt", "outside the vocabulary"),
        ({"prompt": ""}, "prompt", "no tokens"),
        ({"prompt": []}, "prompt", "must not be empty"),
    ],
)
def test_bad_completion_parameters_are_400_naming_them(
    client: Any, kwargs: dict[str, Any], param: str, words: str
) -> None:
    args = {"model": TINY_MODEL, "prompt": PROMPT, "max_tokens": 4, **kwargs}
    body = _error(lambda: client.completions.create(**args))
    assert body["param"] == param and words in body["message"], body


def test_bad_chat_parameters_are_400_naming_them(client: Any) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs", "top_logprobs must be"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "at least 1"),
        ({"messages": []}, "messages", "at least one message"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages",
            "only text parts",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
    ]
    for kwargs, param, words in cases:
        args = {"model": TINY_MODEL, "messages": CHAT, "max_tokens": 4, **kwargs}
        body = _error(lambda: client.chat.completions.create(**args))  # noqa: B023 - called at once
        assert body["param"] == param and words in body["message"], (kwargs, body)


def test_a_model_without_chat_template_refuses_chat_but_completes(client: Any) -> None:
    body = _error(lambda: client.chat.completions.create(model=NO_TEMPLATE, messages=CHAT, max_tokens=2))
    assert body["param"] == "messages" and "has no chat template" in body["message"]
    assert client.completions.create(model=NO_TEMPLATE, prompt=PROMPT, max_tokens=2).choices[0].text is not None


def test_unknown_models_and_schema_errors(server: Server, client: Any) -> None:
    body = _error(lambda: client.completions.create(model="no/such-model", prompt=PROMPT), openai.NotFoundError)
    assert body["param"] == "model" and body["code"] == "model_not_found" and TINY_MODEL in body["message"]
    body = _error(lambda: client.completions.create(model="tinker://bad path", prompt=PROMPT))
    assert body["param"] == "model"
    missing = server.post("completions", {"model": TINY_MODEL}).json()["error"]
    assert missing["param"] == "prompt" and "missing required parameter" in missing["message"]
    wrong = server.post("chat/completions", {"model": TINY_MODEL, "messages": CHAT, "temperature": "hot"}).json()
    assert wrong["error"]["param"] == "temperature" and "temperature" in wrong["error"]["message"]
    raw = httpx.post(
        f"{server.url}/oai/api/v1/completions",
        content=b"{not json",
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]


def test_unknown_parameters_are_ignored(client: Any) -> None:
    out = client.completions.create(
        model=TINY_MODEL, prompt=PROMPT, max_tokens=2, extra_body={"some_new_option": {"a": 1}, "user": "me"}
    )
    assert out.choices[0].finish_reason in ("stop", "length")


def test_completions_count_in_the_tenants_usage(server: Server) -> None:
    """Tokens generated through the OpenAI endpoints count in the key's usage, like Tinker samples."""
    key = "tml-oai-usage"
    oai_client = server.client(key)

    def sampled() -> int:
        answer = httpx.get(f"{server.url}/api/v1/usage", headers={"X-API-Key": key}, timeout=30)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["sampled_tokens"])

    before = sampled()
    out = oai_client.completions.create(model=TINY_MODEL, prompt=[PROMPT, "The cat sat"], n=2, max_tokens=4, seed=7)
    deadline = time.monotonic() + 10
    while sampled() - before != out.usage.completion_tokens:  # counted as each prompt's samples finish
        assert time.monotonic() < deadline, (sampled() - before, out.usage.completion_tokens)
        time.sleep(0.05)
