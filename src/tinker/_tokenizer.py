"""``TrainingClient.get_tokenizer``: find the model's tokenizer, offline when possible.

Resolution order:

1. the tokenizer id: ``model_data.tokenizer_id`` from ``get_info``, else derived
   from the model name (Llama 3 → ``baseten/Meta-Llama-3-tokenizer``;
   ``org/model/variant`` → ``org/model``);
2. the optional ``tml_tokenizers`` package;
3. a local cache directory ``$TINKER_CACHE_DIR/tokenizers/<id>`` (default
   ``~/.cache/tinker``), loaded with ``transformers.AutoTokenizer``;
4. the files served by this project's server (``POST /api/v1/tokenizer_files``),
   written atomically into that cache directory first;
5. ``AutoTokenizer.from_pretrained(<id>)`` (the Hugging Face hub), as 0.5.1 does,
   when the server does not offer the endpoint (404/405).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _env
from ._exceptions import APIStatusError
from ._sync import run_sync
from .types import GetInfoResponse, TokenizerFilesRequest, TokenizerFilesResponse
from .types._base import to_wire

if TYPE_CHECKING:
    from ._holder import ClientHolder

__all__ = ["cache_dir", "load_tokenizer", "tokenizer_id_for"]

_KIMI = "moonshotai/Kimi-K2-Thinking"
_KIMI_REVISION = "612681931a8c906ddb349f8ad0f582cb552189cd"


def tokenizer_id_for(info: GetInfoResponse) -> str:
    if info.model_data.tokenizer_id:
        return info.model_data.tokenizer_id
    name = info.model_data.model_name or info.model_name
    if name is None:
        raise ValueError(f"get_info for {info.model_id} returned neither a tokenizer id nor a model name")
    if name.startswith("meta-llama/Llama-3"):
        return "baseten/Meta-Llama-3-tokenizer"
    parts = name.split("/")
    if len(parts) == 3:
        return "/".join(parts[:2])
    return name


def cache_dir(tokenizer_id: str) -> Path:
    root = _env.cache_dir()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", tokenizer_id.replace("/", "--"))
    return root / "tokenizers" / safe


def _from_pretrained(source: str | Path, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), **kwargs)


def _from_tml_tokenizers(tokenizer_id: str) -> Any:
    try:
        from tml_tokenizers import get_tinker_tokenizer  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return get_tinker_tokenizer(tokenizer_id)


async def _fetch_files(holder: ClientHolder, tokenizer_id: str) -> dict[str, str] | None:
    try:
        response = await holder.http.call(
            "POST",
            "api/v1/tokenizer_files",
            TokenizerFilesResponse,
            body=to_wire(TokenizerFilesRequest(tokenizer_id=tokenizer_id)),
        )
    except APIStatusError as exc:
        if exc.status_code in (404, 405):
            return None
        raise
    return response.files


def _write_atomically(target: Path, files: dict[str, str]) -> None:
    for name in files:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"refusing tokenizer file name {name!r} from the server")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, text in files.items():
            (staging / name).write_text(text, encoding="utf-8")
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # another process did not win the race: a real error
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_tokenizer(holder: ClientHolder, info: GetInfoResponse) -> Any:
    tokenizer_id = tokenizer_id_for(info)
    kwargs: dict[str, Any] = {}
    if tokenizer_id == _KIMI:
        kwargs = {"trust_remote_code": True, "revision": _KIMI_REVISION}
    tokenizer = _from_tml_tokenizers(tokenizer_id)
    if tokenizer is not None:
        return tokenizer
    local = cache_dir(tokenizer_id)
    if local.is_dir() and any(local.iterdir()):
        return _from_pretrained(local, **kwargs)
    files = run_sync(_fetch_files(holder, tokenizer_id))
    if files is not None:
        _write_atomically(local, files)
        return _from_pretrained(local, **kwargs)
    return _from_pretrained(tokenizer_id, **kwargs)
