"""The console's playground: sample a checkpoint or a base model from a text prompt.

It goes the way every client goes (no second sampling implementation): a session of
the caller's (display name "console playground", made once per caller and server
process), a sampler per model made with :meth:`SamplingService.create_sampling_session`,
:meth:`SamplingService.asample`, and the durable future's stored result. The text is
tokenized here with the model's own tokenizer (:class:`~tinker_server.oai.text.Tokenizer`
over the engine's tokenizer folder); with ``chat`` the prompt becomes a user turn of the model's
chat template, and the tokenizer's end-of-sequence token stops the answer.
"""

from __future__ import annotations

import asyncio

from .. import wire
from ..catalog import Catalog
from ..db import Database
from ..errors import InvalidRequest, NotFound, Unavailable
from ..futures import FutureHub
from ..oai.text import Tokenizer
from ..paths import parse_tinker_path
from ..records import owned_session, readable_checkpoint
from ..sampling import SamplingService
from ..sessions import SessionService
from ..wire import codec
from .views import PlaygroundRequest, PlaygroundResult

__all__ = ["PLAYGROUND_TIMEOUT_S", "Playground"]

PLAYGROUND_TIMEOUT_S = 300.0
SESSION_NAME = "console playground"


class _Tokenizer:
    """The served model's tokenizer (the OpenAI endpoints' :class:`Tokenizer`: no torch in
    the API process) as the playground uses it."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def encode(self, prompt: str, chat: bool) -> tuple[list[int], bool]:
        if chat and self.tokenizer.has_chat_template:
            return self.tokenizer.chat_prompt([{"role": "user", "content": prompt}]), True
        return self.tokenizer.encode(prompt), False

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @property
    def eos(self) -> str | None:
        return self.tokenizer.eos_token


class Playground:
    def __init__(
        self,
        db: Database,
        futures: FutureHub,
        catalog: Catalog,
        sessions: SessionService,
        sampling: SamplingService,
        served: list[str],
        long_poll_s: float,
    ) -> None:
        self._db = db
        self._futures = futures
        self._catalog = catalog
        self._sessions = sessions
        self._sampling = sampling
        self._served = list(served)
        self._poll_s = long_poll_s
        self._lock = asyncio.Lock()
        self._session_of: dict[str, str] = {}  # owner → playground session
        self._next_seq: dict[str, int] = {}  # session → next sampling_session_seq_id
        self._sampler_of: dict[tuple[str, str], str] = {}  # (session, model) → sampler id
        self._tokenizers: dict[str, _Tokenizer] = {}

    async def sample(self, owner: str, req: PlaygroundRequest) -> PlaygroundResult:
        base_model, model_path = await asyncio.to_thread(self._target, owner, req)  # database reads
        tokenizer = await self._tokenizer(base_model)
        tokens, templated = await asyncio.to_thread(tokenizer.encode, req.prompt, req.chat)
        stop = [s for s in req.stop if s]
        if templated and tokenizer.eos is not None and tokenizer.eos not in stop:
            stop.append(tokenizer.eos)
        sampler_id = await self._sampler(owner, base_model, model_path)
        request = wire.SampleRequest(
            sampling_session_id=sampler_id,
            num_samples=1,
            prompt=wire.ModelInput(chunks=[wire.EncodedTextChunk(tokens=tokens)]),
            sampling_params=wire.SamplingParams(
                max_tokens=req.max_tokens, temperature=req.temperature, stop=stop or None, seed=req.seed
            ),
        )
        future = await asyncio.to_thread(self._sampling.asample, owner, request, backpressure=True)
        result = await self._outcome(future.request_id)
        sequence = result.sequences[0]
        out_tokens = [int(t) for t in sequence.tokens.tolist()]
        return PlaygroundResult(
            text=await asyncio.to_thread(tokenizer.decode, out_tokens),
            tokens=out_tokens,
            stop_reason=sequence.stop_reason,
            prompt_tokens=len(tokens),
            chat_template=templated,
            base_model=base_model,
            model_path=model_path,
            request_id=future.request_id,
        )

    def _target(self, owner: str, req: PlaygroundRequest) -> tuple[str, str | None]:
        """``(base model, checkpoint path or None)``; a checkpoint must be the caller's or public."""
        if req.model_path:
            ref = parse_tinker_path(req.model_path)
            with self._db.session() as s:
                run, _row = readable_checkpoint(s, ref, owner)
                return run.base_model, ref.tinker_path
        if req.base_model:
            if req.base_model not in self._served:
                raise InvalidRequest(
                    f"base model {req.base_model!r} is not served here; served models: {', '.join(self._served)}"
                )
            return req.base_model, None
        raise InvalidRequest("pick a model: a model_path (tinker://...) or a base_model")

    async def _tokenizer(self, base_model: str) -> _Tokenizer:
        found = self._tokenizers.get(base_model)
        if found is not None:
            return found
        info = await self._catalog.model_info(base_model)

        def load() -> _Tokenizer:
            return _Tokenizer(Tokenizer.load(info.tokenizer_dir, base_model))

        try:
            loaded = await asyncio.to_thread(load)
        except Exception as exc:  # any loader failure is the same answer
            raise Unavailable(f"the tokenizer of {base_model} could not be loaded: {exc}") from exc
        return self._tokenizers.setdefault(base_model, loaded)

    async def _sampler(self, owner: str, base_model: str, model_path: str | None) -> str:
        """The caller's playground sampler for this model, made on first use."""
        async with self._lock:
            session_id = await asyncio.to_thread(self._session, owner)  # database work
            key = (session_id, model_path or f"base:{base_model}")
            sampler_id = self._sampler_of.get(key)
            if sampler_id is not None:
                return sampler_id
            seq = self._next_seq.get(session_id, 0)
            self._next_seq[session_id] = seq + 1
        response = await asyncio.to_thread(
            self._sampling.create_sampling_session,
            owner,
            wire.CreateSamplingSessionRequest(
                session_id=session_id,
                sampling_session_seq_id=seq,
                base_model=None if model_path else base_model,
                model_path=model_path,
            ),
        )
        self._sampler_of[key] = response.sampling_session_id
        return response.sampling_session_id

    def _session(self, owner: str) -> str:
        """The caller's playground session; a new one when the last was finished or is gone."""
        session_id = self._session_of.get(owner)
        if session_id is not None:
            try:
                with self._db.session() as s:
                    if owned_session(s, session_id, owner).finished_reason is None:
                        return session_id
            except NotFound:
                pass
        created = self._sessions.create(
            owner, wire.CreateSessionRequest(tags=["console"], sdk_version="console", display_name=SESSION_NAME)
        )
        self._session_of[owner] = created.session_id
        return created.session_id

    async def _outcome(self, request_id: str) -> wire.SampleResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PLAYGROUND_TIMEOUT_S
        while True:
            row = await self._futures.wait(request_id, min(self._poll_s, max(0.0, deadline - loop.time())))
            if row is not None:
                break
            if loop.time() >= deadline:
                raise Unavailable(f"sampling did not finish within {PLAYGROUND_TIMEOUT_S:g} s; try again")
        if row.status != "done":
            message = row.error or "sampling failed"
            if row.category == "user":
                raise InvalidRequest(message)
            raise Unavailable(message)
        stored = self._futures.stored_result(row)
        return codec.decode_sample_result(stored.body, stored.sequence_ids)
