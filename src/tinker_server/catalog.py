"""The served base models: capabilities, model info, and tokenizer files."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from typing import Any

from . import wire
from .context import Context
from .engine import ModelInfo
from .errors import NotFound
from .records import owned_run
from .training import DEFAULT_OPTIMIZER

__all__ = ["Catalog"]

log = logging.getLogger(__name__)

MAX_TOKENIZER_FILE_BYTES = 64 * 1024 * 1024


class Catalog:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._tokenizer_cache: dict[str, wire.TokenizerFilesResponse] = {}

    def capabilities(self) -> wire.GetServerCapabilitiesResponse:
        models = []
        for name in self._ctx.scheduler.models:
            info = self._ctx.scheduler.worker(name).info  # None until the model is first loaded
            models.append(
                wire.SupportedModel(
                    model_name=name,
                    max_context_length=None if info is None else int(info.max_context),
                    trainable=True,
                    sampleable=True,
                )
            )
        return wire.GetServerCapabilitiesResponse(supported_models=models)

    async def model_info(self, model_name: str) -> ModelInfo:
        """The engine's :class:`ModelInfo`, loading the model first if needed."""
        worker = self._ctx.scheduler.worker(model_name)
        if worker.info is not None:
            return worker.info
        return await asyncio.to_thread(worker.model_info)

    async def get_info(self, owner: str, model_id: str) -> wire.GetInfoResponse:
        run = await asyncio.to_thread(self._owned_run, owner, model_id)
        info = await self.model_info(run.base_model)
        return wire.GetInfoResponse(
            type="get_info",
            model_data=wire.ModelData(arch=info.arch, model_name=run.base_model, tokenizer_id=run.base_model),
            model_id=run.id,
            is_lora=True,
            lora_rank=run.lora_rank,
            model_name=run.base_model,
            optimizer_config=run.optimizer_config or DEFAULT_OPTIMIZER,
        )

    def _owned_run(self, owner: str, model_id: str) -> Any:
        with self._ctx.db.session() as s:
            return owned_run(s, model_id, owner)

    async def tokenizer_files(self, tokenizer_id: str) -> wire.TokenizerFilesResponse:
        """The text files of a served model's tokenizer folder (binary files are skipped)."""
        if tokenizer_id not in self._ctx.scheduler.models:
            served = ", ".join(self._ctx.scheduler.models)
            raise NotFound(f"tokenizer {tokenizer_id!r} is not served here; served models: {served}")
        cached = self._tokenizer_cache.get(tokenizer_id)
        if cached is not None:
            return cached
        info = await self.model_info(tokenizer_id)
        files = await asyncio.to_thread(_text_files, info.tokenizer_dir)
        result = wire.TokenizerFilesResponse(tokenizer_id=tokenizer_id, files=files)
        self._tokenizer_cache[tokenizer_id] = result
        return result


def _text_files(directory: pathlib.Path) -> dict[str, str]:
    """The text files of a tokenizer folder by name (hidden, binary and huge ones skipped)."""
    files: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.stat().st_size > MAX_TOKENIZER_FILE_BYTES:
            continue
        try:
            files[path.name] = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            log.warning("tokenizer file %s is not text; not served", path)
    return files
