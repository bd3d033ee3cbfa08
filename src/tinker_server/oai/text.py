"""Text in and out of the OpenAI-compatible endpoints: a served model's tokenizer and the
assembly of a sample's text from its tokens as they arrive.

Everything here is CPU work on the tokenizer; callers run it off the event loop.
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequest

__all__ = ["TextAssembler", "Tokenizer"]

# Stands in for an assistant reply when the chat template is rendered to find the
# token that closes a turn.
_PROBE = "tinker-end-of-turn-probe"


class Tokenizer:
    """A served model's Hugging Face tokenizer, shared by concurrent requests.

    Calls are serialised by a lock: a fast tokenizer used from several threads at once
    can fail ("Already borrowed"). Text is decoded with special tokens kept and without
    clean-up, as the engine decodes it to match stop strings.
    """

    def __init__(self, hf: Any, model: str) -> None:
        self._hf = hf
        self._lock = threading.Lock()
        self._texts: dict[int, str] = {}
        self.model = model
        self.eos_id: int | None = hf.eos_token_id
        self.has_chat_template = bool(getattr(hf, "chat_template", None))
        self.end_of_turn_id: int | None = self._end_of_turn() if self.has_chat_template else None

    @classmethod
    def load(cls, directory: pathlib.Path, model: str) -> Tokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(directory)), model)

    def _end_of_turn(self) -> int | None:
        """The token the chat template writes right after an assistant reply (``<|im_end|>``
        in ChatML); the EOS token when the template writes no special token there."""
        conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            rendered = str(self._hf.apply_chat_template(conversation, tokenize=False))
        except Exception:  # noqa: BLE001 - a template that refuses the probe: fall back to EOS
            return self.eos_id
        if _PROBE not in rendered:
            return self.eos_id
        after = rendered[rendered.rindex(_PROBE) + len(_PROBE) :]
        ids = self._hf.encode(after, add_special_tokens=False) if after else []
        special = set(self._hf.all_special_ids)
        special.update(i for i, token in self._hf.added_tokens_decoder.items() if getattr(token, "special", False))
        if ids and ids[0] in special:
            return int(ids[0])
        return self.eos_id

    def encode(self, text: str) -> list[int]:
        """A completion prompt's tokens, special tokens added as the model's tokenizer adds them."""
        with self._lock:
            return list(self._hf.encode(text, add_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation rendered by the model's chat template, ready for the assistant's turn."""
        if not self.has_chat_template:
            raise InvalidRequest(
                f"model {self.model} has no chat template, so it cannot serve chat completions; "
                "use /completions with a prompt you format yourself",
                param="messages",
            )
        with self._lock:
            try:
                text = self._hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001 - jinja errors raised by the template itself
                raise InvalidRequest(f"the chat template of {self.model} refused these messages: {exc}",
                                     param="messages") from None
            return list(self._hf.encode(str(text), add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return str(self._hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def token_text(self, token: int) -> str:
        """One token's text, as logprobs show it (remembered: at most one entry per vocabulary id)."""
        text = self._texts.get(token)
        if text is None:
            text = self._texts[token] = self.decode([token])
        return text


class TextAssembler:
    """The text of one sample, built token by token.

    * Tokens are decoded incrementally: each new token is decoded together with the
      few before it, and text waits while it ends in an incomplete character (bytes of
      one character split over several tokens).
    * ``hidden`` token ids (the end-of-turn or EOS token that ended the sample) end the
      text and add nothing to it.
    * The text ends before the first occurrence of a stop string. Text that could still
      turn out to be the start of one is held back until it cannot.

    ``push`` returns the text that may be sent now; ``close`` the rest. Joined, the
    pieces are the sample's final text whether it was streamed or not.
    """

    def __init__(self, tokenizer: Tokenizer, stops: Sequence[str] = (), hidden: frozenset[int] = frozenset()) -> None:
        self._tokenizer = tokenizer
        self._stops = tuple(stops)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._hidden = hidden
        self._ids: list[int] = []
        self._context = 0  # first token of the decode window
        self._read = 0  # tokens whose text has been produced
        self._pending = ""  # text held back: it might begin a stop string
        self._sent = 0  # characters returned so far
        self.ended = False

    @property
    def offset(self) -> int:
        """Characters of text produced so far (sent or held): where the next token's text starts."""
        return self._sent + len(self._pending)

    def push(self, token: int) -> str:
        if self.ended:
            return ""
        if token in self._hidden:
            return self.close()
        self._ids.append(token)
        context = self._tokenizer.decode(self._ids[self._context : self._read])
        text = self._tokenizer.decode(self._ids[self._context :])
        if len(text) <= len(context) or text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self._context, self._read = self._read, len(self._ids)
        return self._release(text[len(context) :])

    def close(self) -> str:
        """The text still held back (the sample has ended)."""
        if self.ended:
            return ""
        out = ""
        if self._read < len(self._ids):
            context = self._tokenizer.decode(self._ids[self._context : self._read])
            out = self._release(self._tokenizer.decode(self._ids[self._context :])[len(context) :])
            self._read = len(self._ids)
        if not self.ended:
            out += self._pending
            self._sent += len(self._pending)
            self._pending = ""
            self.ended = True
        return out

    def _release(self, text: str) -> str:
        pending = self._pending + text
        cut = min((i for i in (pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._pending, self.ended = "", True
            self._sent += cut
            return pending[:cut]
        held = self._held(pending)
        self._pending = pending[len(pending) - held :] if held else ""
        out = pending[: len(pending) - held]
        self._sent += len(out)
        return out

    def _held(self, text: str) -> int:
        """Length of the longest end of ``text`` that a stop string begins with."""
        for size in range(min(self._longest - 1, len(text)), 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0
