"""OpenAI-compatible completions, chat completions and model listing (``/oai/api/v1``).

A ``model`` is a served base model or a ``tinker://`` checkpoint path (``sampler_weights/``
or ``weights/``, whatever ``create_sampling_session`` accepts) that the caller may read:
its own, or a public one. A checkpoint's adapter is loaded by the engine on demand (a
``Sample`` command with ``reload_from``) under an id of its own (the path and the
checkpoint's save time, so an overwritten checkpoint is loaded afresh), as a sampler
that the engine's residency policy may evict like Tinker samplers.

Each prompt becomes one :class:`SampleJob` (``n`` samples) on the base model's worker,
a ``Sample`` task like Tinker ``asample``, so OpenAI requests batch with Tinker
sampling. Nothing is recorded: the HTTP request waits for its tasks. Streamed requests
give their jobs an ``on_token`` sink and send text as the engine decodes it.

Parameters are checked before anything is queued; the engine's own sampling rules
(:func:`~tinker_server.engine.rules.check_sample_job`) decide the ranges, their messages renamed to the OpenAI
parameter names. Tokenizing and detokenizing run in worker threads
(``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import pathlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..admission import Admission, Charge, sample_estimate
from ..catalog import Catalog
from ..context import Context
from ..convert import check_sample_tokens
from ..db import CheckpointRow, as_utc
from ..engine import SampleJob, TokenEvent, UserInputError, rules
from ..engine.api import Sample
from ..errors import InvalidRequest, NotFound
from ..paths import checkpoint_dir, parse_tinker_path
from ..records import not_expired, readable_checkpoint
from ..scheduler import Task, Worker
from ..usage import add_sampled
from ..wire import oai as w
from .generation import Decoding, Delta, Entry, Generation
from .params import Names, chat_messages, completion_prompts, decoding_of, refuse_unsupported, renamed
from .text import Tokenizer

__all__ = ["OaiService"]

log = logging.getLogger(__name__)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default
BASE_MODEL_OWNER = "tinker-server"


@dataclass(frozen=True)
class _Target:
    """Where a request's ``model`` samples: a base model, and a checkpoint adapter or none."""

    base_model: str
    adapter_id: str | None = None
    reload_from: pathlib.Path | None = None  # the checkpoint folder of the adapter


class OaiService:
    def __init__(self, ctx: Context, catalog: Catalog) -> None:
        self._ctx = ctx
        self._catalog = catalog
        self._tokenizers: dict[str, Tokenizer] = {}
        self._lock = threading.Lock()
        self._created = int(time.time())

    # -- models ------------------------------------------------------------------------------

    def list_models(self, owner: str) -> w.ModelList:
        """The served base models, then the caller's sampler checkpoints, oldest first."""
        cards = [
            w.ModelCard(id=m, created=self._created, owned_by=BASE_MODEL_OWNER) for m in self._ctx.scheduler.models
        ]
        with self._ctx.db.session() as s:
            rows = s.scalars(
                sa.select(CheckpointRow)
                .where(CheckpointRow.owner == owner, CheckpointRow.checkpoint_type == "sampler", not_expired())
                .order_by(CheckpointRow.time, CheckpointRow.pk)
            ).all()
            cards += [
                w.ModelCard(id=r.tinker_path, created=int(as_utc(r.time).timestamp()), owned_by=owner) for r in rows
            ]
        return w.ModelList(data=cards)

    def get_model(self, owner: str, model: str) -> w.ModelCard:
        if model in self._ctx.scheduler.models:
            return w.ModelCard(id=model, created=self._created, owned_by=BASE_MODEL_OWNER)
        ref = self._checkpoint_ref(model)
        with self._ctx.db.session() as s:
            run, row = self._readable(s, ref, model, owner)
            return w.ModelCard(id=row.tinker_path, created=int(as_utc(row.time).timestamp()), owned_by=run.owner)

    def _checkpoint_ref(self, model: str) -> Any:
        if not model.startswith("tinker://"):
            served = ", ".join(self._ctx.scheduler.models)
            raise NotFound(
                f"model {model!r} does not exist: give a served base model ({served}) or a tinker:// checkpoint path",
                param="model",
            )
        try:
            return parse_tinker_path(model)
        except InvalidRequest as exc:
            raise InvalidRequest(str(exc), param="model") from None

    @staticmethod
    def _readable(s: Any, ref: Any, model: str, owner: str) -> Any:
        try:
            return readable_checkpoint(s, ref, owner)
        except NotFound:
            raise NotFound(f"model {model!r} does not exist or you do not have access to it", param="model") from None

    def _target(self, owner: str, model: str) -> _Target:
        if model in self._ctx.scheduler.models:
            return _Target(model)
        ref = self._checkpoint_ref(model)
        with self._ctx.db.session() as s:
            run, row = self._readable(s, ref, model, owner)
            base_model, saved = run.base_model, as_utc(row.time).isoformat()
        if base_model not in self._ctx.scheduler.models:
            raise InvalidRequest(
                f"{model} was trained on {base_model}, which this server does not serve", param="model"
            )
        adapter_id = f"oai:{ref.tinker_path}@{saved}"
        directory = checkpoint_dir(self._ctx.settings.checkpoints_dir, ref)
        return _Target(base_model, adapter_id, directory)

    async def _tokenizer(self, base_model: str) -> Tokenizer:
        tokenizer = self._tokenizers.get(base_model)
        if tokenizer is None:
            info = await self._catalog.model_info(base_model)  # loads the model on first use
            tokenizer = await asyncio.to_thread(self._load_tokenizer, base_model, info.tokenizer_dir)
        return tokenizer

    def _load_tokenizer(self, base_model: str, directory: Any) -> Tokenizer:
        with self._lock:
            tokenizer = self._tokenizers.get(base_model)
            if tokenizer is None:
                tokenizer = self._tokenizers[base_model] = Tokenizer.load(directory, base_model)
            return tokenizer

    # -- completions -------------------------------------------------------------------------

    async def completion(self, owner: str, req: w.CompletionRequest) -> w.Completion | AsyncIterator[w.Completion]:
        n = 1 if req.n is None else req.n
        refuse_unsupported(req)
        if req.echo:
            raise InvalidRequest("echo is not supported by this server: it returns generated text only", param="echo")
        if req.best_of is not None and req.best_of != n:
            raise InvalidRequest(
                "best_of is not supported by this server; leave it unset or equal to n", param="best_of"
            )
        if req.suffix:
            raise InvalidRequest("suffix is not supported by this server", param="suffix")
        target = await asyncio.to_thread(self._target, owner, req.model)  # database reads
        tokenizer = await self._tokenizer(target.base_model)
        prompts = await asyncio.to_thread(completion_prompts, tokenizer, req.prompt)
        hidden = frozenset() if req.ignore_eos or tokenizer.eos_id is None else frozenset({tokenizer.eos_id})
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
        decoding = decoding_of(
            req, n, max_tokens, "max_tokens", hidden, logprobs=req.logprobs is not None, top=req.logprobs or 0
        )
        names = Names(prompt="prompt", max_tokens="max_tokens", logprobs="logprobs")
        flight = self._start(owner, target, tokenizer, prompts, decoding, names, stream=bool(req.stream))
        rid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())

        def chunk(deltas: list[Delta]) -> list[w.Completion]:
            return [
                w.Completion(
                    id=rid,
                    created=created,
                    model=req.model,
                    choices=[
                        w.CompletionChoice(
                            index=d.choice.index,
                            text=d.text,
                            finish_reason=d.finish_reason,
                            logprobs=_completion_logprobs(tokenizer, d.entries, decoding),
                        )
                    ],
                )
                for d in deltas
                if d.text or d.entries or d.finish_reason
            ]

        if req.stream:

            def usage_chunk(gen: Generation) -> w.Completion:
                return w.Completion(id=rid, created=created, model=req.model, choices=[], usage=_usage(gen))

            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return flight.stream([], chunk, usage_chunk if include_usage else None)

        def whole(gen: Generation) -> w.Completion:
            choices = [
                w.CompletionChoice(
                    index=c.index,
                    text=c.full_text,
                    finish_reason=c.finish_reason,
                    logprobs=_completion_logprobs(tokenizer, c.entries, decoding),
                )
                for c in gen.choices
            ]
            return w.Completion(id=rid, created=created, model=req.model, choices=choices, usage=_usage(gen))

        return await flight.result(whole)

    # -- chat completions --------------------------------------------------------------------

    async def chat(
        self, owner: str, req: w.ChatCompletionRequest
    ) -> w.ChatCompletion | AsyncIterator[w.ChatCompletionChunk]:
        n = 1 if req.n is None else req.n
        refuse_unsupported(req)
        if req.tools:
            raise InvalidRequest("tools (function calling) are not supported by this server", param="tools")
        kind = (req.response_format or {}).get("type", "text")
        if kind != "text":
            raise InvalidRequest(
                f"response_format {kind!r} is not supported by this server; only 'text' is", param="response_format"
            )
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
        messages = chat_messages(req.messages)
        target = await asyncio.to_thread(self._target, owner, req.model)  # database reads
        tokenizer = await self._tokenizer(target.base_model)
        prompt = await asyncio.to_thread(tokenizer.chat_prompt, messages)
        hidden = frozenset(t for t in (tokenizer.end_of_turn_id, tokenizer.eos_id) if t is not None)
        limit_name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        decoding = decoding_of(
            req, n, max_tokens, limit_name, hidden, logprobs=bool(req.logprobs), top=req.top_logprobs or 0
        )
        names = Names(prompt="messages", max_tokens=limit_name, logprobs="top_logprobs")
        flight = self._start(owner, target, tokenizer, [prompt], decoding, names, stream=bool(req.stream))
        rid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())

        def logprobs(entries: list[Entry]) -> w.ChatLogprobs | None:
            return w.ChatLogprobs(content=_chat_logprobs(tokenizer, entries)) if decoding.logprobs else None

        if req.stream:

            def chunk(deltas: list[Delta]) -> list[w.ChatCompletionChunk]:
                return [
                    w.ChatCompletionChunk(
                        id=rid,
                        created=created,
                        model=req.model,
                        choices=[
                            w.ChatChunkChoice(
                                index=d.choice.index,
                                delta=w.ChatDelta(content=d.text or None),
                                logprobs=logprobs(d.entries),
                                finish_reason=d.finish_reason,
                            )
                        ],
                    )
                    for d in deltas
                    if d.text or d.entries or d.finish_reason
                ]

            def usage_chunk(gen: Generation) -> w.ChatCompletionChunk:
                return w.ChatCompletionChunk(id=rid, created=created, model=req.model, choices=[], usage=_usage(gen))

            opening = [
                w.ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=req.model,
                    choices=[w.ChatChunkChoice(index=i, delta=w.ChatDelta(role="assistant", content=""))],
                )
                for i in range(n)
            ]
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return flight.stream(opening, chunk, usage_chunk if include_usage else None)

        def whole(gen: Generation) -> w.ChatCompletion:
            choices = [
                w.ChatChoice(
                    index=c.index,
                    message=w.ChatReply(content=c.full_text),
                    logprobs=logprobs(c.entries),
                    # ignore: every choice has finished (finish_reason set) once the generation is whole
                    finish_reason=c.finish_reason,  # type: ignore[arg-type]
                )
                for c in gen.choices
            ]
            return w.ChatCompletion(id=rid, created=created, model=req.model, choices=choices, usage=_usage(gen))

        return await flight.result(whole)

    # -- submitting --------------------------------------------------------------------------

    def _start(
        self,
        owner: str,
        target: _Target,
        tokenizer: Tokenizer,
        prompts: list[list[int]],
        decoding: Decoding,
        names: Names,
        *,
        stream: bool,
    ) -> _Flight:
        """Check every job by the engine's rules and the key's quota, then queue them all on the
        base model's worker. Over the tokens per minute or the queued requests: 429 with
        ``Retry-After`` (what OpenAI clients wait on)."""
        worker = self._ctx.scheduler.worker(target.base_model)
        info = worker.model_info()  # loaded: the tokenizer came from it
        limit = self._ctx.settings.max_pending_samples
        if len(prompts) > limit:
            raise InvalidRequest(
                f"prompt holds {len(prompts)} prompts; at most {limit} per request", param=names.prompt
            )
        jobs = [
            SampleJob(
                adapter_id=target.adapter_id,
                prompt=prompt,
                num_samples=decoding.n,
                max_tokens=decoding.max_tokens,
                temperature=decoding.temperature,
                top_k=decoding.top_k,
                top_p=decoding.top_p,
                seed=decoding.seed,
                stop_strings=list(decoding.stops),
                stop_token_ids=sorted(decoding.hidden),
                topk_sample_logprobs=decoding.top,
            )
            for prompt in prompts
        ]
        for job in jobs:
            try:
                rules.check_sample_job(job, vocab_size=int(info.vocab_size), max_context=int(info.max_context))
            except UserInputError as exc:
                raise renamed(str(exc), names) from None
        check_sample_tokens(jobs, self._ctx.settings.max_sample_tokens_per_request)
        scheduler = self._ctx.scheduler
        quota = self._ctx.tenants.quota(owner)
        Admission.check_base_model(quota, target.base_model)
        Admission.check_queued(quota, scheduler.queued(owner))
        worker.check_capacity(sampling=True, strict=False, owner=owner)
        estimates = [sample_estimate(job.num_samples, job.max_tokens) for job in jobs]
        charge = scheduler.admission.admit(owner, quota, sum(estimates))
        flight = _Flight(Generation(tokenizer, decoding, prompts), stream, worker)
        for index, (job, estimate) in enumerate(zip(jobs, estimates, strict=True)):
            if stream:
                job.on_token = flight.sink(index)
            task = Task(
                Sample(job, reload_from=target.reload_from),
                owner=owner,
                weight=quota.weight,
                cost=len(job.prompt) + estimate,
            )
            task.done.add_done_callback(functools.partial(_settle, scheduler.admission, charge, estimate))
            task.done.add_done_callback(functools.partial(self._count_usage, owner))
            flight.watch(index, worker.submit(task))
        return flight

    def _count_usage(self, owner: str, done: concurrent.futures.Future[Any]) -> None:
        """A finished prompt's generated tokens go into the tenant's usage (as Tinker samples do)."""
        if done.cancelled() or done.exception() is not None:
            return
        try:
            add_sampled(self._ctx.db, owner, sum(len(seq.tokens) for seq in done.result().sequences))
        except Exception:  # usage accounting never fails the request it counts
            log.exception("counting the usage of an OpenAI-compatible request failed")


class _Flight:
    """The queued tasks of one request and the way their tokens come back."""

    def __init__(self, generation: Generation, stream: bool, worker: Worker) -> None:
        self.generation = generation
        self.tasks: list[Task] = []
        self._worker = worker
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, Any]] | None = asyncio.Queue() if stream else None

    def _put(self, item: tuple[int, Any]) -> None:
        if self._queue is None:
            return
        with contextlib.suppress(RuntimeError):  # RuntimeError: the event loop has closed; nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def sink(self, prompt: int) -> Callable[[TokenEvent], None]:
        return lambda event: self._put((prompt, event))

    def watch(self, prompt: int, task: Task) -> None:
        self.tasks.append(task)
        task.done.add_done_callback(lambda future: self._put((prompt, future)))

    def cancel(self) -> None:
        """The client went away: its jobs still queued leave the queue (running ones finish)."""
        for task in self.tasks:
            if self._worker.withdraw(task):
                task.done.set_exception(InvalidRequest("the client closed the stream before sampling started"))

    async def result(self, render: Callable[[Generation], Any]) -> Any:
        outputs = await asyncio.gather(*(asyncio.wrap_future(t.done) for t in self.tasks))

        def build() -> Any:
            self.generation.apply(list(enumerate(outputs)))
            return render(self.generation)

        return await asyncio.to_thread(build)

    async def stream(
        self, opening: list[Any], render: Callable[[list[Delta]], list[Any]], usage: Callable[[Generation], Any] | None
    ) -> AsyncIterator[Any]:
        """Chunks as tokens arrive: each wait takes every item queued meanwhile, so a busy
        server sends fewer, larger chunks."""
        assert self._queue is not None
        queue, generation = self._queue, self.generation
        try:
            for chunk in opening:
                yield chunk
            while not generation.done:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                for chunk in await asyncio.to_thread(lambda: render(generation.apply(items))):  # noqa: B023 - awaited at once
                    yield chunk
            if usage is not None:
                yield usage(generation)
        finally:
            self.cancel()


# -- rendering -------------------------------------------------------------------------------


def _settle(admission: Admission, charge: Charge | None, estimate: int, done: Any) -> None:
    """A job finished: its part of the request's token charge becomes what it generated."""
    output = None if done.cancelled() or done.exception() is not None else done.result()
    used = sum(len(seq.tokens) for seq in output.sequences) if output is not None else 0
    admission.adjust(charge, used - estimate)


def _usage(generation: Generation) -> w.Usage:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return w.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _completion_logprobs(tokenizer: Tokenizer, entries: list[Entry], decoding: Decoding) -> w.CompletionLogprobs | None:
    if not decoding.logprobs:
        return None
    top = [{tokenizer.token_text(t): lp for t, lp in e.top} for e in entries] if decoding.top else None
    return w.CompletionLogprobs(
        tokens=[tokenizer.token_text(e.token) for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=top,
        text_offset=[e.offset for e in entries],
    )


def _chat_logprobs(tokenizer: Tokenizer, entries: list[Entry]) -> list[w.TokenLogprob]:
    def text(token: int) -> tuple[str, list[int]]:
        piece = tokenizer.token_text(token)
        return piece, list(piece.encode("utf-8"))

    out = []
    for e in entries:
        token, raw = text(e.token)
        top = [w.TopLogprob(token=t, logprob=lp, bytes=b) for (t, b), lp in ((text(i), lp) for i, lp in e.top)]
        out.append(w.TokenLogprob(token=token, logprob=e.logprob, bytes=raw, top_logprobs=top))
    return out
