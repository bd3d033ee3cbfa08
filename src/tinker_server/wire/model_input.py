"""Model input on the wire: a list of chunks (token runs, images, audio)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import pydantic

from ._base import Request, StrictRequest

__all__ = ["DmelChunk", "EncodedTextChunk", "ImageAssetPointerChunk", "ImageChunk", "ModelInput", "ModelInputChunk"]


def _b64(value: Any) -> Any:
    return base64.b64decode(value) if isinstance(value, str) else value


class EncodedTextChunk(StrictRequest):
    tokens: list[int]
    type: Literal["encoded_text"] = "encoded_text"


class ImageChunk(Request):
    """An inline image. 0.5.1 sends ``height``/``width``/``tokens``; 0.6+ only ``expected_tokens``."""

    data: bytes
    format: str
    height: int | None = None
    width: int | None = None
    tokens: int | None = None
    expected_tokens: int | None = None
    type: Literal["image"] = "image"

    _decode = pydantic.field_validator("data", mode="before")(_b64)


class ImageAssetPointerChunk(Request):
    format: str
    location: str
    height: int | None = None
    width: int | None = None
    tokens: int | None = None
    expected_tokens: int | None = None
    type: Literal["image_asset_pointer"] = "image_asset_pointer"


class DmelChunk(Request):
    """Audio features (0.23+); accepted on the wire, refused by the engine."""

    dmel: bytes
    type: Literal["dmel"] = "dmel"

    _decode = pydantic.field_validator("dmel", mode="before")(_b64)


def _chunk_kind(value: Any) -> str | None:
    """``type`` when present (0.18+), else the chunk's shape (0.5.1 never sends ``type``)."""
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is not None:
            return str(kind)
        if "location" in value:
            return "image_asset_pointer"
        if "dmel" in value:
            return "dmel"
        if "data" in value:
            return "image"
        return "encoded_text"
    return getattr(value, "type", None)


ModelInputChunk = Annotated[
    Annotated[EncodedTextChunk, pydantic.Tag("encoded_text")]
    | Annotated[ImageChunk, pydantic.Tag("image")]
    | Annotated[ImageAssetPointerChunk, pydantic.Tag("image_asset_pointer")]
    | Annotated[DmelChunk, pydantic.Tag("dmel")],
    pydantic.Discriminator(_chunk_kind),
]


class ModelInput(StrictRequest):
    chunks: list[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: list[int]) -> ModelInput:
        return cls(chunks=[EncodedTextChunk(tokens=list(tokens))])
