"""Extension of this server (not in the 0.5.1 API): fetching tokenizer files offline."""

from __future__ import annotations

from ._base import BaseModel, StrictBase

__all__ = ["TokenizerFilesRequest", "TokenizerFilesResponse"]


class TokenizerFilesRequest(StrictBase):
    """``POST /api/v1/tokenizer_files``: the files of a tokenizer the server knows."""

    tokenizer_id: str


class TokenizerFilesResponse(BaseModel):
    """``files`` maps a file name (no directories) to its text content."""

    tokenizer_id: str
    files: dict[str, str]
