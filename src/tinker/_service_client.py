"""``ServiceClient``: the entry point. Opens a session and creates the other clients."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import _env
from ._holder import ClientHolder
from ._polling import poll_future
from ._rest_client import RestClient
from ._sampling_client import SamplingClient
from ._sync import on_loop, run_sync, sync_only
from ._training_client import TrainingClient
from .types import (
    CreateModelRequest,
    CreateModelResponse,
    GetServerCapabilitiesResponse,
    LoraConfig,
    UntypedAPIFuture,
)
from .types._base import to_wire

if TYPE_CHECKING:
    from ._retry_handler import RetryConfig
    from ._telemetry import Telemetry

__all__ = ["ServiceClient"]


def _env_headers() -> dict[str, str]:
    """Headers the ServiceClient adds from the environment (they win over ``api_key``, quirk Q1)."""
    headers: dict[str, str] = {}
    for header, value in (
        ("X-API-Key", _env.api_key()),
        ("CF-Access-Client-Id", _env.cloudflare_access_client_id()),
        ("CF-Access-Client-Secret", _env.cloudflare_access_client_secret()),
    ):
        if value is not None:
            headers[header] = value
    return headers


def _check_lora_targets(train_mlp: bool, train_attn: bool, train_unembed: bool) -> None:
    if not (train_mlp or train_attn or train_unembed):
        raise AssertionError("At least one of train_mlp, train_attn or train_unembed must be True")


class ServiceClient:
    """Connects to a Tinker server and creates training, sampling and REST clients.

    ``kwargs`` go to the HTTP client: ``api_key``, ``base_url``, ``timeout``,
    ``max_retries``, ``default_headers``, ``default_query``, ``http_client``.
    The constructor blocks until the session is created.
    """

    def __init__(self, user_metadata: dict[str, str] | None = None, **kwargs: Any) -> None:
        timings = kwargs.pop("_timings", None)
        default_headers = {**_env_headers(), **(kwargs.pop("default_headers", None) or {})}
        self.holder = ClientHolder(
            user_metadata=user_metadata, timings=timings, default_headers=default_headers, **kwargs
        )

    # -- capabilities -----------------------------------------------------------------------

    async def _get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        http = self.holder.http
        return await self.holder.execute_with_retries(
            lambda: http.call("GET", "api/v1/get_server_capabilities", GetServerCapabilitiesResponse)
        )

    @sync_only
    def get_server_capabilities(self) -> GetServerCapabilitiesResponse:
        return run_sync(self._get_server_capabilities())

    async def get_server_capabilities_async(self) -> GetServerCapabilitiesResponse:
        return await on_loop(self._get_server_capabilities())

    # -- training clients ---------------------------------------------------------------------

    async def _create_lora_training_client(
        self, model_seq_id: int, base_model: str, lora_config: LoraConfig, user_metadata: dict[str, str] | None
    ) -> TrainingClient:
        holder = self.holder
        request = CreateModelRequest(
            session_id=holder.session_id,
            model_seq_id=model_seq_id,
            base_model=base_model,
            user_metadata=user_metadata,
            lora_config=lora_config,
        )
        started = time.monotonic()
        future = await holder.http.call("POST", "api/v1/create_model", UntypedAPIFuture, body=to_wire(request))
        result = await poll_future(
            holder, future.request_id, CreateModelResponse, "CreateModel", submit_started=started
        )
        return TrainingClient(holder, model_seq_id=model_seq_id, model_id=result.model_id)

    def _lora_args(
        self,
        rank: int,
        seed: int | None,
        train_mlp: bool,
        train_attn: bool,
        train_unembed: bool,
    ) -> tuple[int, LoraConfig]:
        _check_lora_targets(train_mlp, train_attn, train_unembed)
        config = LoraConfig(
            rank=rank, seed=seed, train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn
        )
        return self.holder.next_model_seq_id(), config

    @sync_only
    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
    ) -> TrainingClient:
        seq, config = self._lora_args(rank, seed, train_mlp, train_attn, train_unembed)
        return run_sync(self._create_lora_training_client(seq, base_model, config, user_metadata))

    async def create_lora_training_client_async(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
    ) -> TrainingClient:
        seq, config = self._lora_args(rank, seed, train_mlp, train_attn, train_unembed)
        return await on_loop(self._create_lora_training_client(seq, base_model, config, user_metadata))

    @sync_only
    def create_training_client_from_state(
        self, path: str, user_metadata: dict[str, str] | None = None
    ) -> TrainingClient:
        """A new LoRA training client initialised with the weights (not the optimizer) of ``path``."""
        return run_sync(self._from_state(path, user_metadata, optimizer=False))

    async def create_training_client_from_state_async(
        self, path: str, user_metadata: dict[str, str] | None = None
    ) -> TrainingClient:
        return await on_loop(self._from_state(path, user_metadata, optimizer=False))

    @sync_only
    def create_training_client_from_state_with_optimizer(
        self, path: str, user_metadata: dict[str, str] | None = None
    ) -> TrainingClient:
        """Like ``create_training_client_from_state``, also restoring the optimizer state."""
        return run_sync(self._from_state(path, user_metadata, optimizer=True))

    async def create_training_client_from_state_with_optimizer_async(
        self, path: str, user_metadata: dict[str, str] | None = None
    ) -> TrainingClient:
        return await on_loop(self._from_state(path, user_metadata, optimizer=True))

    async def _from_state(self, path: str, user_metadata: dict[str, str] | None, *, optimizer: bool) -> TrainingClient:
        """weights_info -> a LoRA client of the checkpoint's base model and rank -> load the checkpoint."""
        info = await self.create_rest_client().get_weights_info_by_tinker_path(path)
        if not info.is_lora or info.lora_rank is None:
            raise AssertionError(
                f"{path} is not a LoRA checkpoint (is_lora={info.is_lora}, lora_rank={info.lora_rank})"
            )
        client = await self.create_lora_training_client_async(
            info.base_model, rank=info.lora_rank, user_metadata=user_metadata
        )
        load = client.load_state_with_optimizer_async if optimizer else client.load_state_async
        await (await load(path))
        return client

    # -- sampling and REST ----------------------------------------------------------------------

    def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: RetryConfig | None = None,
    ) -> SamplingClient:
        return SamplingClient.create(
            self.holder, model_path=model_path, base_model=base_model, retry_config=retry_config
        ).result()

    async def create_sampling_client_async(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        retry_config: RetryConfig | None = None,
    ) -> SamplingClient:
        return await SamplingClient.create(
            self.holder, model_path=model_path, base_model=base_model, retry_config=retry_config
        )

    def create_rest_client(self) -> RestClient:
        return RestClient(self.holder)

    def get_telemetry(self) -> Telemetry | None:
        return self.holder.telemetry
