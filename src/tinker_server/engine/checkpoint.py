"""Adapter checkpoints in PEFT's on-disk format, written atomically.

A checkpoint directory holds:

* ``adapter_config.json``: PEFT ``LoraConfig`` fields (``peft_type`` ``LORA``,
  ``r``, ``lora_alpha``, ``target_modules``, ...), so stock PEFT or vLLM load it;
* ``adapter_model.safetensors``: ``base_model.model.<layer path>.lora_A.weight``
  (r, in) and ``...lora_B.weight`` (out, r), float32;
* with the optimizer: ``optimizer.safetensors`` (``<peft key>.exp_avg`` and
  ``<peft key>.exp_avg_sq``) and ``optimizer.json`` (step count).

Everything is written into a temporary directory next to the target, flushed,
then renamed into place, so a crash never leaves a half-written checkpoint at
the target path. Loading also accepts PEFT adapters written elsewhere that
target a subset of our layers (``use_rslora`` included; DoRA and per-layer
rank/alpha patterns are refused).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserInputError
from .lora import ATTN_MODULES, MLP_MODULES, UNEMBED_MODULES, Adapter, LoraLinear, peft_key
from .messages import LoraSpec

__all__ = ["CONFIG_FILE", "OPTIMIZER_FILE", "WEIGHTS_FILE", "LoadedCheckpoint", "read_checkpoint", "write_checkpoint"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
_PREFIX = "base_model.model."


def adapter_config(adapter: Adapter, base_model: str) -> dict[str, Any]:
    targets = sorted({path.rsplit(".", 1)[-1] for path in adapter.weights})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.spec.rank,
        "lora_alpha": adapter.scaling * adapter.spec.rank,
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: pathlib.Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()},
        str(path),
        metadata={"format": "pt"},
    )
    os.chmod(path, 0o600)  # tenants' weights: the server's user only, whatever the umask
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_checkpoint(adapter: Adapter, directory: pathlib.Path, *, base_model: str, optimizer: bool) -> int:
    """Save ``adapter`` (and its optimizer state) to ``directory``; returns bytes written."""
    directory = pathlib.Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp, 0o700)  # mkdir's mode is masked by the umask, never widened
    try:
        _write_json(tmp / CONFIG_FILE, adapter_config(adapter, base_model))
        _write_tensors(tmp / WEIGHTS_FILE, dict(adapter.named_parameters()))
        if optimizer:
            moments: dict[str, torch.Tensor] = {}
            for key, (exp_avg, exp_avg_sq) in adapter.optim_state.items():
                moments[f"{key}.exp_avg"] = exp_avg
                moments[f"{key}.exp_avg_sq"] = exp_avg_sq
            _write_tensors(tmp / OPTIMIZER_FILE, moments)
            _write_json(tmp / OPTIMIZER_META, {"format": "tinker-adamw-v1", "step": adapter.optim_step})
        _fsync_dir(tmp)
        total = sum(f.stat().st_size for f in tmp.iterdir())
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return total


@dataclass
class LoadedCheckpoint:
    """What :func:`read_checkpoint` found: spec, scaling, tensors per layer, optimizer state."""

    spec: LoraSpec
    scaling: float
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer path -> (A (r, in), B (out, r))
    optim_step: int | None
    optim_state: dict[str, tuple[torch.Tensor, torch.Tensor]] | None


def _read_config(directory: pathlib.Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise UserInputError(f"no adapter checkpoint at {directory} (missing {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise UserInputError(f"{path}: only LoRA adapters are supported (peft_type {config.get('peft_type')!r})")
    for key in ("use_dora",):
        if config.get(key):
            raise UserInputError(f"{path}: {key} adapters are not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise UserInputError(f"{path}: per-layer {key} is not supported")
    if config.get("bias", "none") != "none":
        raise UserInputError(f"{path}: bias={config.get('bias')!r} is not supported (only 'none')")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise UserInputError(f"{path}: 'r' must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise UserInputError(f"{path}: 'lora_alpha' must be a number, got {alpha!r}")
    return config


def _layer_path(key: str) -> tuple[str, str] | None:
    """``base_model.model.X.lora_A.weight`` -> (``X``, ``"A"``); PEFT adapter names tolerated."""
    if not key.startswith(_PREFIX):
        return None
    body = key[len(_PREFIX) :]
    for which in ("A", "B"):
        for suffix in (f".lora_{which}.weight", f".lora_{which}.default.weight"):
            if body.endswith(suffix):
                return body[: -len(suffix)], which
    return None


def read_checkpoint(directory: pathlib.Path, layers: dict[str, LoraLinear], *, optimizer: bool) -> LoadedCheckpoint:
    """Read and validate a checkpoint against the model's LoRA layers."""
    directory = pathlib.Path(directory)
    config = _read_config(directory)
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise UserInputError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        parsed = _layer_path(key)
        if parsed is None:
            raise UserInputError(f"{directory / WEIGHTS_FILE}: unsupported tensor {key!r} (only LoRA A/B weights)")
        path, which = parsed
        if path not in layers:
            raise UserInputError(
                f"{directory / WEIGHTS_FILE}: {key!r} targets {path!r}, which this model has no LoRA layer for"
            )
        halves.setdefault(path, {})[which] = value
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path in layers:  # model order
        if path not in halves:
            continue
        pair = halves[path]
        if set(pair) != {"A", "B"}:
            raise UserInputError(
                f"{directory / WEIGHTS_FILE}: layer {path!r} lacks lora_{'A' if 'A' not in pair else 'B'}"
            )
        a, b = pair["A"], pair["B"]
        layer = layers[path]
        if tuple(a.shape) != (rank, layer.in_features) or tuple(b.shape) != (layer.out_features, rank):
            raise UserInputError(
                f"{directory / WEIGHTS_FILE}: layer {path!r} has shapes A {tuple(a.shape)}, B {tuple(b.shape)}; "
                f"this model needs A ({rank}, {layer.in_features}), B ({layer.out_features}, {rank})"
            )
        weights[path] = (a.float(), b.float())
    if not weights:
        raise UserInputError(f"{directory / WEIGHTS_FILE} holds no LoRA weights")
    short = {path.rsplit(".", 1)[-1] for path in weights}
    spec = LoraSpec(
        rank=rank,
        seed=None,
        train_mlp=bool(short & set(MLP_MODULES)),
        train_attn=bool(short & set(ATTN_MODULES)),
        train_unembed=bool(short & set(UNEMBED_MODULES)),
    )
    optim_step: int | None = None
    optim_state: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    if optimizer:
        optim_step, optim_state = _read_optimizer(directory, weights)
    return LoadedCheckpoint(spec, scaling, weights, optim_step, optim_state)


def _read_optimizer(
    directory: pathlib.Path, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    meta_path, state_path = directory / OPTIMIZER_META, directory / OPTIMIZER_FILE
    if not meta_path.is_file() or not state_path.is_file():
        raise UserInputError(f"checkpoint at {directory} has no optimizer state (saved without it)")
    try:
        step = int(json.loads(meta_path.read_text())["step"])
        moments = load_file(str(state_path))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise UserInputError(f"cannot read the optimizer state in {directory}: {exc}") from None
    state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, (a, b) in weights.items():
        for which, param in (("A", a), ("B", b)):
            key = peft_key(path, which)
            m, v = moments.get(f"{key}.exp_avg"), moments.get(f"{key}.exp_avg_sq")
            if m is None and v is None and step == 0:
                continue
            if m is None or v is None or m.shape != param.shape or v.shape != param.shape:
                raise UserInputError(f"optimizer state in {directory} does not match the adapter at {key!r}")
            state[key] = (m.float(), v.float())
    return step, state
