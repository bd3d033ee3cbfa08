"""The parameters of the OpenAI-compatible requests: defaults, refusals, prompts, and the
engine's sampling-rule messages told in OpenAI parameter names."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidRequest
from ..wire import oai as w
from .generation import Decoding
from .text import Tokenizer

__all__ = ["Names", "chat_messages", "completion_prompts", "decoding_of", "refuse_unsupported", "renamed"]


@dataclass(frozen=True)
class Names:
    """The OpenAI names of the engine's sampling fields, for one endpoint."""

    prompt: str
    max_tokens: str
    logprobs: str


def refuse_unsupported(req: w.CompletionRequest | w.ChatCompletionRequest) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise InvalidRequest(f"{name} is not supported by this server; leave it unset or 0", param=name)
    if req.logit_bias:
        raise InvalidRequest("logit_bias is not supported by this server", param="logit_bias")


def decoding_of(
    req: w.CompletionRequest | w.ChatCompletionRequest,
    n: int,
    max_tokens: int | None,
    limit_name: str,
    hidden: frozenset[int],
    *,
    logprobs: bool,
    top: int,
) -> Decoding:
    """What the request's jobs share; ``max_tokens`` as the caller named it (``limit_name``)."""
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(f"{limit_name} must be at least 1, got {max_tokens}", param=limit_name)
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return Decoding(
        n=n,
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=-1 if req.top_k is None else req.top_k,
        seed=req.seed,
        stops=stops,
        hidden=hidden,
        logprobs=logprobs,
        top=top,
    )


def renamed(message: str, names: Names) -> InvalidRequest:
    """An engine sampling rule's message, told in the OpenAI parameter names."""
    field = message.split(" ", 1)[0]
    if field == "prompt" and "max_tokens" in message:
        return InvalidRequest(message, param=names.max_tokens)
    renamed = {"num_samples": "n", "topk_sample_logprobs": names.logprobs, "max_tokens": names.max_tokens}
    if field in renamed:
        return InvalidRequest(renamed[field] + message[len(field) :], param=renamed[field])
    params = {
        "prompt": names.prompt,
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "seed": "seed",
        "stop": "stop",
    }
    return InvalidRequest(message, param=params.get(field))


def completion_prompts(tokenizer: Tokenizer, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if not prompt:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        return [tokenizer.encode(p) for p in prompt]  # type: ignore[arg-type]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return [list(p) for p in prompt]  # type: ignore[arg-type]


def chat_messages(messages: list[w.ChatMessage]) -> list[dict[str, str]]:
    if not messages:
        raise InvalidRequest("messages must hold at least one message", param="messages")
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise InvalidRequest(
                        f"messages[{i}].content[{j}]: only text parts are supported, got {part.type!r}",
                        param="messages",
                    )
            content = "\n".join(part.text or "" for part in content)
        out.append({"role": message.role, "content": content or ""})
    return out
