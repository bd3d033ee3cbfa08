"""``SamplingClient``: text generation and prompt logprobs from a model's weights.

A sample is one operation under the session's ``RetryHandler``: submit to
``/api/v1/asample`` (``seq_id`` counts every submit attempt, from 0), then
poll for the result. On HTTP 429 the whole session backs off for a second and
the submit is tried again; an expired future (410) re-runs the whole sample.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _env
from ._exceptions import RateLimitError
from ._futures import APIFuture, InternalFuture
from ._polling import QueueStateLogger, poll_future
from ._retry_handler import RetryConfig, RetryHandler, get_retry_handler
from ._sync import on_loop, submit
from .types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    ModelInput,
    SampleResponse,
    SamplingParams,
    UntypedAPIFuture,
)
from .types._base import to_wire

if TYPE_CHECKING:
    from ._holder import ClientHolder

__all__ = ["SamplingClient"]

_BACKPRESSURE = {"X-Tinker-Sampling-Backpressure": "1"}


class SamplingClient:
    """Samples from one sampling session (a base model or saved ``tinker://`` weights)."""

    def __init__(
        self, holder: ClientHolder, *, sampling_session_id: str, retry_config: RetryConfig | None = None
    ) -> None:
        self.holder = holder
        self.sampling_session_id = sampling_session_id
        self.retry_config = retry_config
        self.feature_gates = _env.feature_gates()
        self._retry_handler: RetryHandler = get_retry_handler(sampling_session_id, retry_config, holder.timings)
        self._seq_lock = threading.Lock()
        self._next_seq_id = 0
        self._queue_state_logger = QueueStateLogger(
            f"Sampling for sampler {sampling_session_id}", "concurrent LoRA rate limit hit"
        )

    @staticmethod
    def create(
        holder: ClientHolder,
        *,
        model_path: str | None = None,
        base_model: str | None = None,
        sampling_session_id: str | None = None,
        retry_config: RetryConfig | None = None,
    ) -> APIFuture[SamplingClient]:
        """A future SamplingClient; creates a sampling session unless ``sampling_session_id`` is given."""
        if sampling_session_id is None:
            if model_path is None and base_model is None:
                raise ValueError("Either model_path or base_model must be provided")
            if model_path is not None and not model_path.startswith("tinker://"):
                raise ValueError(f"model_path must start with 'tinker://', got {model_path!r}")
            seq_id = holder.next_sampling_session_seq_id()
            request = CreateSamplingSessionRequest(
                session_id=holder.session_id,
                sampling_session_seq_id=seq_id,
                base_model=base_model,
                model_path=model_path,
            )
            return InternalFuture(submit(_create(holder, to_wire(request), retry_config)))

        async def existing() -> SamplingClient:
            assert sampling_session_id is not None
            return SamplingClient(holder, sampling_session_id=sampling_session_id, retry_config=retry_config)

        return InternalFuture(submit(existing()))

    # -- sampling -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        with self._seq_lock:
            value, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
        return value

    async def _submit_once(self, body: dict[str, Any]) -> UntypedAPIFuture:
        holder = self.holder
        async with holder.sample_submit_slot():
            while True:
                await holder.wait_for_sampling_backoff()
                try:
                    return await holder.http.call(
                        "POST",
                        "api/v1/asample",
                        UntypedAPIFuture,
                        body={**body, "seq_id": self._next_seq()},
                        options={"max_retries": 0, "headers": dict(_BACKPRESSURE)},
                    )
                except RateLimitError:
                    holder.back_off_sampling()

    async def _sample_once(self, body: dict[str, Any]) -> SampleResponse:
        started = time.monotonic()
        future = await self.holder.execute_with_retries(lambda: self._submit_once(body))
        return await poll_future(
            self.holder,
            future.request_id,
            SampleResponse,
            "Sample",
            submit_started=started,
            on_queue_state=self._queue_state_logger,
        )

    async def _sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool,
        topk_prompt_logprobs: int,
    ) -> SampleResponse:
        body = {
            "num_samples": num_samples,
            "prompt": to_wire(prompt),
            "sampling_params": to_wire(sampling_params),
            "sampling_session_id": self.sampling_session_id,
            "prompt_logprobs": include_prompt_logprobs,
            "topk_prompt_logprobs": topk_prompt_logprobs,
        }
        try:
            return await self._retry_handler.execute(
                lambda: self._sample_once(body), self.holder.stuck_request("api/v1/asample")
            )
        except Exception as exc:
            self.holder.report_exception(exc)
            raise

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> concurrent.futures.Future[SampleResponse]:
        """Generate ``num_samples`` independent completions of ``prompt``."""
        return submit(self._sample(prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs))

    async def sample_async(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
    ) -> SampleResponse:
        return await on_loop(
            self._sample(prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs)
        )

    async def _compute_logprobs(self, prompt: ModelInput) -> list[float | None]:
        response = await self._sample(prompt, 1, SamplingParams(max_tokens=1), True, 0)
        return list(response.prompt_logprobs or [])

    def compute_logprobs(self, prompt: ModelInput) -> concurrent.futures.Future[list[float | None]]:
        """The logprob of each prompt token given the ones before it (the first is ``None``)."""
        return submit(self._compute_logprobs(prompt))

    async def compute_logprobs_async(self, prompt: ModelInput) -> list[float | None]:
        return await on_loop(self._compute_logprobs(prompt))


async def _create(holder: ClientHolder, body: dict[str, Any], retry_config: RetryConfig | None) -> SamplingClient:
    response = await holder.http.call(
        "POST", "api/v1/create_sampling_session", CreateSamplingSessionResponse, body=body
    )
    return SamplingClient(holder, sampling_session_id=response.sampling_session_id, retry_config=retry_config)
