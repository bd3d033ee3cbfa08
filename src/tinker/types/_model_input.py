"""Model input: a sequence of chunks (token runs and images)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pydantic

from ._base import StrictBase

__all__ = [
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
]


class EncodedTextChunk(StrictBase):
    tokens: Sequence[int]
    type: Literal["encoded_text"] = "encoded_text"

    @property
    def length(self) -> int:
        return len(self.tokens)


class ImageChunk(StrictBase):
    data: bytes
    format: Literal["png", "jpeg"]
    height: int
    width: int
    tokens: int
    expected_tokens: int | None = None
    type: Literal["image"] = "image"

    @pydantic.field_validator("data", mode="before")
    @classmethod
    def _decode_base64(cls, value: Any) -> Any:
        if isinstance(value, str):
            return base64.b64decode(value)
        return value

    @pydantic.field_serializer("data", when_used="json")
    def _encode_base64(self, value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")

    @property
    def length(self) -> int:
        return self.tokens


class ImageAssetPointerChunk(StrictBase):
    format: Literal["png", "jpeg"]
    height: int
    location: str
    tokens: int
    width: int
    type: Literal["image_asset_pointer"] = "image_asset_pointer"

    @property
    def length(self) -> int:
        return self.tokens


def _chunk_kind(value: Any) -> str | None:
    """Tell chunk kinds apart: by ``type`` when present, else by shape.

    The 0.5.1 client never sends ``type`` (it is a default), so a server sees
    ``{"tokens": [...]}`` for text, ``{"data": ...}`` for an inline image and
    ``{"location": ...}`` for an image pointer.
    """
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is not None:
            return str(kind)
        if "location" in value:
            return "image_asset_pointer"
        if "data" in value:
            return "image"
        return "encoded_text"
    return getattr(value, "type", None)


ModelInputChunk = Annotated[
    Annotated[EncodedTextChunk, pydantic.Tag("encoded_text")]
    | Annotated[ImageChunk, pydantic.Tag("image")]
    | Annotated[ImageAssetPointerChunk, pydantic.Tag("image_asset_pointer")],
    pydantic.Discriminator(_chunk_kind),
]


class ModelInput(StrictBase):
    chunks: list[ModelInputChunk]

    @classmethod
    def from_ints(cls, tokens: Sequence[int]) -> ModelInput:
        return cls(chunks=[EncodedTextChunk(tokens=list(tokens))])

    @classmethod
    def empty(cls) -> ModelInput:
        return cls(chunks=[])

    def to_ints(self) -> list[int]:
        """All tokens as one flat list; ``ValueError`` if any chunk is an image."""
        out: list[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise ValueError(f"to_ints() needs text chunks only, found a {chunk.type} chunk")
            out.extend(chunk.tokens)
        return out

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: EncodedTextChunk | ImageChunk | ImageAssetPointerChunk) -> ModelInput:
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """A new input with ``token`` added to the last text chunk (or a new chunk)."""
        if self.chunks and isinstance(self.chunks[-1], EncodedTextChunk):
            last = self.chunks[-1]
            return ModelInput(chunks=[*self.chunks[:-1], EncodedTextChunk(tokens=[*last.tokens, token])])
        return self.append(EncodedTextChunk(tokens=[token]))
