"""Server configuration: the only place that reads the environment.

Every field can be set through an environment variable named ``TINKER_<FIELD>``
(``TINKER_HOME``, ``TINKER_PORT``, ``TINKER_MODELS`` as a JSON list or a
comma-separated string, ...), or passed to :class:`Settings` directly. Values are
validated when the object is built, and an error names the offending key.
"""

from __future__ import annotations

import pathlib
from typing import Annotated, Any, Literal

import pydantic
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_SERVED_MODELS", "Settings"]

# Served unless TINKER_MODELS / --model say otherwise: the default model and the
# tiny test model. Each is loaded lazily, on first use, so startup stays fast.
DEFAULT_SERVED_MODELS = ("HuggingFaceTB/SmolLM2-135M-Instruct", "tinker-test/tiny-llama")


class Settings(BaseSettings):
    """Validated server settings (environment prefix ``TINKER_``)."""

    model_config = SettingsConfigDict(env_prefix="TINKER_", extra="forbid", validate_default=True)

    home: pathlib.Path = pathlib.Path("~/.tinker")
    host: str = "127.0.0.1"
    port: Annotated[int, pydantic.Field(ge=0, le=65535)] = 8000
    models: Annotated[list[str], NoDecode] = list(DEFAULT_SERVED_MODELS)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    database_url: str | None = None
    session_timeout_s: Annotated[float, pydantic.Field(gt=0)] = 300.0
    long_poll_s: Annotated[float, pydantic.Field(gt=0, lt=45)] = 25.0
    archive_url_ttl_s: Annotated[float, pydantic.Field(gt=0)] = 900.0
    public_base_url: str | None = None
    max_tokens_per_microbatch: Annotated[int, pydantic.Field(ge=1)] = 2048
    # A forward / forward_backward with more input tokens than this runs in parts of whole
    # datums, one per scheduling round, so other runs' and tenants' work goes in between;
    # None: 4 * max_tokens_per_microbatch.
    max_tokens_per_round: Annotated[int | None, pydantic.Field(ge=1)] = None
    # CPU threads for torch (torch.set_num_threads); None keeps torch's default (one per core).
    # On a machine shared with other busy processes, fewer threads avoid OpenMP stalls.
    torch_threads: Annotated[int | None, pydantic.Field(ge=1)] = None
    # On CPU, keep a oneDNN-packed copy of the base model's linear weights for sampling
    # and forward-only passes: faster, but those weights take twice the memory.
    packed_weights: bool = True
    # Scheduler limits: queued requests per base model before submits get HTTP 429.
    max_pending_requests: Annotated[int, pydantic.Field(ge=1)] = 1024
    max_pending_samples: Annotated[int, pydantic.Field(ge=1)] = 256
    # Sampling requests handed to the engine in one batch.
    max_sample_batch: Annotated[int, pydantic.Field(ge=1)] = 32
    # Sampling requests that arrive together (gaps under 20 ms) wait for each other, at
    # most this long after the first, to decode in one batch; 0 turns that off.
    sample_batch_window_s: Annotated[float, pydantic.Field(ge=0, le=1)] = 0.1
    # Sampler adapters kept in memory per base model, least recently used first out
    # (checkpoint samplers reload from disk on demand; snapshots made by
    # save_weights_for_sampler are gone once evicted). At least 2 * max_sample_batch.
    max_checkpoint_samplers: Annotated[int, pydantic.Field(ge=1)] = 64
    # Snapshots (save_weights_for_sampler without a name) kept per training run: the newest.
    snapshots_per_run: Annotated[int, pydantic.Field(ge=1)] = 4
    # Memory for sampler adapters' weights per base model, in MiB (None: no budget).
    sampler_memory_mib: Annotated[float | None, pydantic.Field(gt=0)] = None
    # Run each base model's engine in its own worker process (the default; the API
    # process then never imports torch). False runs it in the API process.
    engine_process: bool = True
    # Load every served model when the server starts, instead of on first use.
    preload_models: bool = False
    # Finished futures are kept this long (their results can be fetched again).
    future_retention_s: Annotated[float, pydantic.Field(gt=0)] = 3600.0
    # How often the sweeper looks for expired sessions and stale futures; default
    # derived from session_timeout_s.
    sweep_interval_s: Annotated[float | None, pydantic.Field(gt=0)] = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Keys merged over the answer to POST /api/v1/client/config (JSON object in the
    # environment), e.g. {"fwdbwd_max_chunk_len": 2, "proto_compress_fwdbwd": true}.
    client_config: dict[str, Any] = {}
    # How long a run holds a forward_backward whose seq_id is ahead of the next expected
    # one (0.20+ clients send the chunks of a large call concurrently, the first last)
    # before failing the held requests; and how many it holds at most.
    seq_gap_timeout_s: Annotated[float, pydantic.Field(gt=0)] = 60.0
    # retrieve_future with allow_metadata_only (0.14+ clients): results at least this large
    # are announced by size first, so the client can reserve memory for them.
    metadata_only_min_bytes: Annotated[int, pydantic.Field(ge=0)] = 4 * 2**20
    max_held_requests: Annotated[int, pydantic.Field(ge=1)] = 256
    # Size caps (docs/server.md, "Limits"). Request bodies of the heavy routes (forward,
    # forward_backward, asample, the OpenAI endpoints, the playground) may be this large,
    # after zstd expansion too; every other body (create_session, telemetry, saves, ...)
    # at most max_small_body_bytes. Larger: 413, refused before the body is read.
    max_body_bytes: Annotated[int, pydantic.Field(ge=1024)] = 64 * 2**20
    max_small_body_bytes: Annotated[int, pydantic.Field(ge=1024)] = 256 * 2**10
    # Tokens one forward / forward_backward may carry (all datums' model inputs), and one
    # sampling request may cost: num_samples * (prompt + max_tokens). Larger: 400.
    max_train_tokens_per_request: Annotated[int, pydantic.Field(ge=1)] = 2**20
    max_sample_tokens_per_request: Annotated[int, pydantic.Field(ge=1)] = 2**20
    # Host names accepted (besides loopback names and public_base_url's host) while the
    # server listens on a loopback address: other Host headers get 421 (DNS rebinding).
    allowed_hosts: list[str] = []

    @pydantic.field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: pathlib.Path) -> pathlib.Path:
        return value.expanduser().absolute()

    @pydantic.field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @pydantic.field_validator("models", mode="after")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model must be served")
        if any(not name.strip() for name in value):
            raise ValueError("model names must be non-empty")
        return list(dict.fromkeys(value))

    @pydantic.field_validator("public_base_url", mode="after")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_base_url must start with http:// or https://")
        return value.rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or a SQLite file under ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'tinker.db'}"

    @property
    def effective_max_tokens_per_round(self) -> int:
        """``max_tokens_per_round``, or four micro-batches' worth when unset."""
        return self.max_tokens_per_round or 4 * self.max_tokens_per_microbatch

    @property
    def checkpoints_dir(self) -> pathlib.Path:
        return self.home / "checkpoints"

    @property
    def effective_sweep_interval_s(self) -> float:
        if self.sweep_interval_s is not None:
            return self.sweep_interval_s
        return min(30.0, max(0.2, self.session_timeout_s / 4))
