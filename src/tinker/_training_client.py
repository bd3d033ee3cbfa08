"""``TrainingClient``: forward/backward passes, optimizer steps and checkpoints of one model.

Every operation reserves its ``seq_id`` when called and returns an
``APIFuture``; the ``*_async`` twins return the same kind of future once the
request has been submitted, so ``await (await tc.forward_backward_async(...))``
gives the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from ._chunking import chunk_data, merge_outputs
from ._custom_loss import CustomLossFnV1, backward_data, with_user_metrics
from ._futures import APIFuture, InternalFuture
from ._polling import QueueStateLogger, RequestType, start_polling
from ._sampling_client import SamplingClient
from ._sync import on_loop, run_sync, submit, sync_only
from ._tokenizer import load_tokenizer
from ._turns import Turns
from .types import (
    AdamParams,
    Datum,
    ForwardBackwardInput,
    ForwardBackwardOutput,
    GetInfoRequest,
    GetInfoResponse,
    LoadWeightsRequest,
    LoadWeightsResponse,
    LossFnType,
    OptimStepRequest,
    OptimStepResponse,
    SaveWeightsForSamplerRequest,
    SaveWeightsForSamplerResponse,
    SaveWeightsForSamplerResponseInternal,
    SaveWeightsRequest,
    SaveWeightsResponse,
    UntypedAPIFuture,
)
from .types._base import to_wire

if TYPE_CHECKING:
    from ._holder import ClientHolder
    from ._retry_handler import RetryConfig

__all__ = ["CustomLossFnV1", "TrainingClient"]

M = TypeVar("M", bound=pydantic.BaseModel)

_NO_MODEL_ID = (
    "This TrainingClient has no model_id. Training clients are created by "
    "ServiceClient.create_lora_training_client() or create_training_client_from_state(), "
    "which create the model on the server first; do not construct TrainingClient directly."
)


async def _await(future: APIFuture[M]) -> M:
    return await future.result_async()


class TrainingClient:
    """Trains one LoRA model on the server."""

    def __init__(self, holder: ClientHolder, *, model_seq_id: int, model_id: str | None) -> None:
        self.holder = holder
        self.model_seq_id = model_seq_id
        self.model_id = model_id
        self._turns = Turns()
        self._queue_state_logger = QueueStateLogger(f"Training for {model_id}", "concurrent models rate limit hit")
        self._tokenizer: Any = None

    def _guaranteed_model_id(self) -> str:
        if self.model_id is None:
            raise AssertionError(_NO_MODEL_ID)
        return self.model_id

    # -- the request pipeline ---------------------------------------------------------------

    async def _submit(
        self, seq_id: int, path: str, body: dict[str, Any], cast_to: type[M], request_type: RequestType
    ) -> InternalFuture[M]:
        """Wait for ``seq_id``'s turn, submit (layer-B retries), hand the turn on, start polling."""
        holder = self.holder
        try:
            await self._turns.wait(seq_id)
            started = time.monotonic()
            future = await holder.execute_with_retries(
                lambda: holder.http.call("POST", path, UntypedAPIFuture, body={**body, "seq_id": seq_id})
            )
        except Exception as exc:
            holder.report_exception(exc)
            raise
        finally:
            self._turns.release(seq_id)
        return start_polling(
            holder,
            future.request_id,
            cast_to,
            request_type,
            submit_started=started,
            on_queue_state=self._queue_state_logger,
        )

    async def _submit_chunks(
        self, seq_ids: list[int], path: str, key: str, inputs: list[dict[str, Any]], request_type: RequestType
    ) -> InternalFuture[ForwardBackwardOutput]:
        model_id = self._guaranteed_model_id()
        futures: list[InternalFuture[ForwardBackwardOutput]] = []
        try:
            for seq_id, chunk in zip(seq_ids, inputs, strict=True):
                body = {key: chunk, "model_id": model_id}
                futures.append(await self._submit(seq_id, path, body, ForwardBackwardOutput, request_type))
        finally:
            for seq_id in seq_ids[len(futures) + 1 :]:
                self._turns.release(seq_id)

        async def combine() -> ForwardBackwardOutput:
            results = await asyncio.gather(*(asyncio.wrap_future(f.future()) for f in futures))
            return merge_outputs(results)

        return InternalFuture(submit(combine()))

    def _prepare_chunks(
        self, data: Sequence[Datum], loss_fn: LossFnType, loss_fn_config: dict[str, float] | None
    ) -> tuple[list[int], list[dict[str, Any]]]:
        self._guaranteed_model_id()
        inputs = [
            to_wire(ForwardBackwardInput(data=chunk, loss_fn=loss_fn, loss_fn_config=loss_fn_config))
            for chunk in chunk_data(data)
        ]
        return self._turns.reserve(len(inputs)), inputs

    def _prepare(self, request: pydantic.BaseModel) -> tuple[int, dict[str, Any]]:
        """Validate ``request`` first, then reserve its seq_id (no gap on a bad request)."""
        self._guaranteed_model_id()
        body = to_wire(request)
        return self._turns.reserve(1)[0], body

    def _launch(self, submitting: Any) -> InternalFuture[Any]:
        """Run a submit coroutine in the background; the future resolves to the final result."""

        async def run() -> Any:
            future = await submitting
            return await _await(future)

        return InternalFuture(submit(run()))

    # -- forward / backward -----------------------------------------------------------------

    def forward(
        self, data: list[Datum], loss_fn: LossFnType, loss_fn_config: dict[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Compute the loss and its outputs without gradients."""
        seq_ids, inputs = self._prepare_chunks(data, loss_fn, loss_fn_config)
        return self._launch(self._submit_chunks(seq_ids, "api/v1/forward", "forward_input", inputs, "Forward"))

    async def forward_async(
        self, data: list[Datum], loss_fn: LossFnType, loss_fn_config: dict[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        seq_ids, inputs = self._prepare_chunks(data, loss_fn, loss_fn_config)
        return await on_loop(self._submit_chunks(seq_ids, "api/v1/forward", "forward_input", inputs, "Forward"))

    def forward_backward(
        self, data: list[Datum], loss_fn: LossFnType, loss_fn_config: dict[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients on the server until ``optim_step``."""
        seq_ids, inputs = self._prepare_chunks(data, loss_fn, loss_fn_config)
        return self._launch(
            self._submit_chunks(seq_ids, "api/v1/forward_backward", "forward_backward_input", inputs, "ForwardBackward")
        )

    async def forward_backward_async(
        self, data: list[Datum], loss_fn: LossFnType, loss_fn_config: dict[str, float] | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        seq_ids, inputs = self._prepare_chunks(data, loss_fn, loss_fn_config)
        return await on_loop(
            self._submit_chunks(seq_ids, "api/v1/forward_backward", "forward_backward_input", inputs, "ForwardBackward")
        )

    @sync_only
    def forward_backward_custom(self, data: list[Datum], loss_fn: CustomLossFnV1) -> APIFuture[ForwardBackwardOutput]:
        """Train on any differentiable function of the logprobs (two server passes, needs torch)."""
        forward_output = self.forward(data, "cross_entropy").result()
        new_data, metrics = backward_data(data, forward_output, loss_fn)
        backward = self.forward_backward(new_data, "cross_entropy")

        async def merged() -> ForwardBackwardOutput:
            return with_user_metrics(await _await(backward), metrics)

        return InternalFuture(submit(merged()))

    async def forward_backward_custom_async(
        self, data: list[Datum], loss_fn: CustomLossFnV1
    ) -> APIFuture[ForwardBackwardOutput]:
        forward_output = await (await self.forward_async(data, "cross_entropy"))
        new_data, metrics = backward_data(data, forward_output, loss_fn)
        backward = await self.forward_backward_async(new_data, "cross_entropy")

        async def merged() -> ForwardBackwardOutput:
            return with_user_metrics(await _await(backward), metrics)

        return InternalFuture(submit(merged()))

    # -- optimizer ------------------------------------------------------------------------------

    def _optim_step(self, adam_params: AdamParams) -> Any:
        seq_id, body = self._prepare(OptimStepRequest(adam_params=adam_params, model_id=self._guaranteed_model_id()))
        return self._submit(seq_id, "api/v1/optim_step", body, OptimStepResponse, "OptimStep")

    def optim_step(self, adam_params: AdamParams) -> APIFuture[OptimStepResponse]:
        """Apply one Adam step with the gradients accumulated since the last step."""
        return self._launch(self._optim_step(adam_params))

    async def optim_step_async(self, adam_params: AdamParams) -> APIFuture[OptimStepResponse]:
        result: APIFuture[OptimStepResponse] = await on_loop(self._optim_step(adam_params))
        return result

    # -- checkpoints ------------------------------------------------------------------------------

    def _save_state(self, name: str) -> Any:
        seq_id, body = self._prepare(SaveWeightsRequest(model_id=self._guaranteed_model_id(), path=name))
        return self._submit(seq_id, "api/v1/save_weights", body, SaveWeightsResponse, "SaveWeights")

    def save_state(self, name: str) -> APIFuture[SaveWeightsResponse]:
        """Save weights and optimizer state as ``tinker://<model_id>/weights/<name>``."""
        return self._launch(self._save_state(name))

    async def save_state_async(self, name: str) -> APIFuture[SaveWeightsResponse]:
        result: APIFuture[SaveWeightsResponse] = await on_loop(self._save_state(name))
        return result

    def _load(self, path: str, optimizer: bool) -> Any:
        request = LoadWeightsRequest(model_id=self._guaranteed_model_id(), path=path, optimizer=optimizer)
        seq_id, body = self._prepare(request)
        return self._submit(seq_id, "api/v1/load_weights", body, LoadWeightsResponse, "LoadWeights")

    def load_state(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Load the weights (not the optimizer state) of a ``tinker://`` checkpoint."""
        return self._launch(self._load(path, optimizer=False))

    async def load_state_async(self, path: str) -> APIFuture[LoadWeightsResponse]:
        result: APIFuture[LoadWeightsResponse] = await on_loop(self._load(path, optimizer=False))
        return result

    def load_state_with_optimizer(self, path: str) -> APIFuture[LoadWeightsResponse]:
        """Load weights and optimizer state of a ``tinker://`` checkpoint."""
        return self._launch(self._load(path, optimizer=True))

    async def load_state_with_optimizer_async(self, path: str) -> APIFuture[LoadWeightsResponse]:
        result: APIFuture[LoadWeightsResponse] = await on_loop(self._load(path, optimizer=True))
        return result

    def _save_for_sampler(self, name: str) -> Any:
        request = SaveWeightsForSamplerRequest(model_id=self._guaranteed_model_id(), path=name)
        seq_id, body = self._prepare(request)
        return self._submit_then(
            self._submit(
                seq_id,
                "api/v1/save_weights_for_sampler",
                body,
                SaveWeightsForSamplerResponseInternal,
                "SaveWeightsForSampler",
            ),
            _public_sampler_response,
        )

    async def _submit_then(self, submitting: Any, transform: Any) -> InternalFuture[Any]:
        inner = await submitting

        async def run() -> Any:
            return transform(await _await(inner))

        return InternalFuture(submit(run()))

    def save_weights_for_sampler(self, name: str) -> APIFuture[SaveWeightsForSamplerResponse]:
        """Save weights for sampling as ``tinker://<model_id>/sampler_weights/<name>``."""
        return self._launch(self._save_for_sampler(name))

    async def save_weights_for_sampler_async(self, name: str) -> APIFuture[SaveWeightsForSamplerResponse]:
        result: APIFuture[SaveWeightsForSamplerResponse] = await on_loop(self._save_for_sampler(name))
        return result

    async def _ephemeral_sampler(
        self, seq_id: int, body: dict[str, Any], retry_config: RetryConfig | None
    ) -> SamplingClient:
        future = await self._submit(
            seq_id,
            "api/v1/save_weights_for_sampler",
            body,
            SaveWeightsForSamplerResponseInternal,
            "SaveWeightsForSampler",
        )
        result = await _await(future)
        if result.path is not None or result.sampling_session_id is None:
            raise AssertionError(f"unexpected response to an ephemeral sampler save: {result!r}")
        return SamplingClient(self.holder, sampling_session_id=result.sampling_session_id, retry_config=retry_config)

    def save_weights_and_get_sampling_client_submit(
        self, retry_config: RetryConfig | None = None
    ) -> APIFuture[SamplingClient]:
        """Save the current weights ephemerally and return a future SamplingClient for them."""
        request = SaveWeightsForSamplerRequest(
            model_id=self._guaranteed_model_id(),
            sampling_session_seq_id=self.holder.next_sampling_session_seq_id(),
        )
        seq_id, body = self._prepare(request)
        return InternalFuture(submit(self._ephemeral_sampler(seq_id, body, retry_config)))

    def save_weights_and_get_sampling_client(
        self, name: str | None = None, retry_config: RetryConfig | None = None
    ) -> SamplingClient:
        """A SamplingClient for the current weights. ``name`` is ignored (as in 0.5.1)."""
        del name
        return self.save_weights_and_get_sampling_client_submit(retry_config).result()

    async def save_weights_and_get_sampling_client_async(
        self, name: str | None = None, retry_config: RetryConfig | None = None
    ) -> SamplingClient:
        del name
        return await self.save_weights_and_get_sampling_client_submit(retry_config)

    def create_sampling_client(self, model_path: str, retry_config: RetryConfig | None = None) -> SamplingClient:
        return SamplingClient.create(self.holder, model_path=model_path, retry_config=retry_config).result()

    async def create_sampling_client_async(
        self, model_path: str, retry_config: RetryConfig | None = None
    ) -> SamplingClient:
        return await SamplingClient.create(self.holder, model_path=model_path, retry_config=retry_config)

    # -- model info -------------------------------------------------------------------------------

    async def _get_info(self, retries: bool = True) -> GetInfoResponse:
        http = self.holder.http
        body = to_wire(GetInfoRequest(model_id=self._guaranteed_model_id()))

        def call() -> Any:
            return http.call("POST", "api/v1/get_info", GetInfoResponse, body=body)

        if not retries:
            info: GetInfoResponse = await call()
            return info
        return await self.holder.execute_with_retries(call)

    @sync_only
    def get_info(self) -> GetInfoResponse:
        return run_sync(self._get_info())

    async def get_info_async(self) -> GetInfoResponse:
        return await on_loop(self._get_info())

    def get_tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (cached per client; works offline, see ``_tokenizer``)."""
        if self._tokenizer is None:
            info = run_sync(self._get_info(retries=False))
            self._tokenizer = load_tokenizer(self.holder, info)
        return self._tokenizer


def _public_sampler_response(result: SaveWeightsForSamplerResponseInternal) -> SaveWeightsForSamplerResponse:
    if result.path is None:
        raise AssertionError(f"a named save_weights_for_sampler returned no path: {result!r}")
    return SaveWeightsForSamplerResponse(path=result.path)
