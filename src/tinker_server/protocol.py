"""What the server tells official clients about the protocol it speaks.

``POST /api/v1/client/config`` is the first call of every 0.18+ client; its
answer switches client features on or off. Each flag below is on only when this
server implements the feature behind it. ``Settings.client_config`` overrides
single keys (tests use it to force small chunks, zstd bodies, ...).
"""

from __future__ import annotations

from typing import Any

from .settings import Settings

__all__ = ["client_config", "client_dynamic_config"]

# Flags of the 0.38 client, with the value this server answers.
_CLIENT_CONFIG: dict[str, Any] = {
    # Chunks of one forward_backward may arrive out of order; runs execute them in seq_id order.
    "parallel_fwdbwd_chunks": True,
    # Plain API keys; no JWT exchange (/auth/token) on this server.
    "pjwt_auth_enabled": False,
    # Sampling clients learn which of their requests finished from one long poll per sampler
    # (/retrieve_futures), then fetch each payload.
    "sample_use_retrieve_futures": True,
    # Custom losses run client-side (forward + weighted cross_entropy), never uploaded.
    "custom_loss_server_side": False,
    "sample_join_sampling_session": False,
    # 0.19-0.24 clients: send forward_backward as protobuf, forward through /forward_backward,
    # and create models from checkpoints with a session-addressed load_weights.
    "proto_write_fwdbwd": True,
    "fwd_via_fwdbwd": True,
    "create_model_via_load_weights": True,
}

_DYNAMIC_CONFIG: dict[str, Any] = {
    "refresh_interval_sec": 300,
    # Abandoned sampling requests are taken out of the queue (/cancel_future).
    "sample_cancel_enabled": True,
    "sample_cancel_max_batch_size": 64,
}


def client_config(settings: Settings) -> dict[str, Any]:
    return {**_CLIENT_CONFIG, **settings.client_config}


def client_dynamic_config(settings: Settings) -> dict[str, Any]:
    return dict(_DYNAMIC_CONFIG)
