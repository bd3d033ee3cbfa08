"""One OpenAI-compatible request in flight: its choices and how tokens become their text.

A request of ``P`` prompts with ``n`` samples each has ``P * n`` choices; choice
``p * n + s`` is sample ``s`` of prompt ``p``. Tokens reach a choice either as
:class:`TokenEvent`\\ s while the engine decodes (streaming) or in the finished
:class:`SampleOutput`; the output is the authority, and whatever the events did not
deliver is taken from it. An event for a position the choice already has (an engine
that repeats a batch after an error) is dropped.

Pure CPU work on the tokenizer, run off the event loop.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from typing import Any, Literal

from ..engine import SampleOutput, TokenEvent
from .text import TextAssembler, Tokenizer

__all__ = ["Choice", "Decoding", "Delta", "Entry", "Generation"]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Decoding:
    """What every sampling job of one request shares (engine conventions: ``top_k=-1`` off)."""

    n: int
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stops: tuple[str, ...]
    hidden: frozenset[int]  # stop token ids that end a choice without showing in its text
    logprobs: bool  # report the chosen tokens' logprobs
    top: int  # alternatives per token in those logprobs


@dataclass(frozen=True)
class Entry:
    """A generated token as logprobs show it; ``offset``: where its text starts in the choice's text."""

    token: int
    logprob: float
    top: list[tuple[int, float]]
    offset: int


@dataclass
class Choice:
    index: int
    text: TextAssembler
    tokens: int = 0  # generated tokens taken so far (the position of the next one)
    finish_reason: FinishReason | None = None
    parts: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    @property
    def full_text(self) -> str:
        return "".join(self.parts)


@dataclass
class Delta:
    """What a choice gained from one batch of tokens."""

    choice: Choice
    text: str = ""
    entries: list[Entry] = field(default_factory=list)
    finish_reason: FinishReason | None = None


class Generation:
    def __init__(self, tokenizer: Tokenizer, decoding: Decoding, prompts: list[list[int]]) -> None:
        self.decoding = decoding
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.choices = [
            Choice(index=p * decoding.n + s, text=TextAssembler(tokenizer, decoding.stops, decoding.hidden))
            for p in range(len(prompts))
            for s in range(decoding.n)
        ]

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def _of_prompt(self, prompt: int) -> list[Choice]:
        n = self.decoding.n
        return self.choices[prompt * n : (prompt + 1) * n]

    def apply(self, items: list[tuple[int, Any]]) -> list[Delta]:
        """Take ``(prompt index, TokenEvent | SampleOutput | finished task future)`` items in
        arrival order; return what each touched choice gained, one delta per choice. A failed
        task raises its error unless its choices had already finished."""
        deltas: dict[int, Delta] = {}
        for prompt, item in items:
            if isinstance(item, TokenEvent):
                self._event(prompt, item, deltas)
                continue
            if isinstance(item, concurrent.futures.Future):
                error = item.exception()
                if error is not None:
                    if any(c.finish_reason is None for c in self._of_prompt(prompt)):
                        raise error
                    continue
                item = item.result()
            self._output(prompt, item, deltas)
        return list(deltas.values())

    def _event(self, prompt: int, event: TokenEvent, deltas: dict[int, Delta]) -> None:
        choice = self._of_prompt(prompt)[event.sample]
        if choice.finish_reason is not None or event.position != choice.tokens:
            return
        delta = deltas.setdefault(choice.index, Delta(choice))
        self._take(choice, delta, event.token, event.logprob, event.topk)
        if event.stop_reason is not None:
            self._finish(choice, delta, event.stop_reason)

    def _output(self, prompt: int, output: SampleOutput, deltas: dict[int, Delta]) -> None:
        for choice, seq in zip(self._of_prompt(prompt), output.sequences, strict=True):
            if choice.finish_reason is not None:
                continue
            delta = deltas.setdefault(choice.index, Delta(choice))
            for position in range(choice.tokens, len(seq.tokens)):
                top = seq.topk_logprobs[position] if seq.topk_logprobs is not None else None
                self._take(choice, delta, seq.tokens[position], seq.logprobs[position], top)
            self._finish(choice, delta, seq.stop_reason)

    def _take(
        self, choice: Choice, delta: Delta, token: int, logprob: float, top: list[tuple[int, float]] | None
    ) -> None:
        offset = choice.text.offset
        text = choice.text.push(token)
        choice.tokens += 1
        delta.text += text
        choice.parts.append(text)
        if self.decoding.logprobs and token not in self.decoding.hidden:
            entry = Entry(token=token, logprob=float(logprob), top=list(top or []), offset=offset)
            choice.entries.append(entry)
            delta.entries.append(entry)

    @staticmethod
    def _finish(choice: Choice, delta: Delta, reason: FinishReason) -> None:
        rest = choice.text.close()
        delta.text += rest
        choice.parts.append(rest)
        choice.finish_reason = delta.finish_reason = reason
