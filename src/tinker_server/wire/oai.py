"""Bodies of the OpenAI-compatible endpoints (``/oai/api/v1``).

Field names and shapes follow the OpenAI API's completions, chat completions and
models resources, so the ``openai`` client parses them. Requests ignore parameters
they do not know; parameters this server cannot honour are declared so that the
service can refuse them by name instead of ignoring them silently. ``top_k`` and
``ignore_eos`` are extensions (vLLM's names).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ._base import Request, Response

__all__ = [
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChatLogprobs",
    "ChatMessage",
    "ChatReply",
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "ContentPart",
    "ErrorBody",
    "ErrorDetail",
    "FinishReason",
    "ModelCard",
    "ModelList",
    "StreamOptions",
    "TokenLogprob",
    "TopLogprob",
    "Usage",
]

FinishReason = Literal["stop", "length"]


# -- requests ----------------------------------------------------------------------------


class StreamOptions(Request):
    include_usage: bool | None = None


class _Sampling(Request):
    """Parameters both endpoints share. ``None`` (or absent) means the default."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_k: int | None = None


class CompletionRequest(_Sampling):
    """``prompt``: a string, a list of strings, a list of token ids or a list of such lists."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None
    ignore_eos: bool | None = None


class ContentPart(Request):
    type: str
    text: str | None = None


class ChatMessage(Request):
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


# -- responses ---------------------------------------------------------------------------


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(Response):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class Completion(Response):
    """A completion, and also each chunk of a streamed one (as the OpenAI API does)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Response):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatReply(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(Response):
    index: int
    message: ChatReply
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(Response):
    """What a chunk adds to a choice; fields left out while unset (the last chunk's is ``{}``)."""

    omit_if_none: ClassVar[frozenset[str]] = frozenset({"role", "content"})
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Response):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(Response):
    error: ErrorDetail
