"""Text in and out of the OpenAI-compatible endpoints: a served model's tokenizer and the
assembly of a sample's text from its tokens as they arrive.

The tokenizer is read from the model's Hugging Face tokenizer directory with the
``tokenizers`` library alone, and its chat template is rendered here on jinja2's
sandbox: nothing on this path imports ``transformers`` (and so ``torch``), so the API
process stays free of the compute engine.

Everything here is CPU work on the tokenizer; callers run it off the event loop.
"""

from __future__ import annotations

import datetime
import functools
import json
import pathlib
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequest

__all__ = ["ChatTemplate", "TextAssembler", "Tokenizer"]

# Stands in for an assistant reply when the chat template is rendered to find the
# token that closes a turn.
_PROBE = "tinker-end-of-turn-probe"

# The named special tokens of a Hugging Face tokenizer config, as chat templates see them.
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _token_spec(value: Any) -> dict[str, Any] | None:
    """A special token as the config writes it (``"<s>"`` or ``{"content": "<s>", ...}``), as a dict."""
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return dict(value)
    return None


def _default_template(directory: pathlib.Path, config: dict[str, Any]) -> str | None:
    """The chat template a plain ``apply_chat_template`` uses: ``chat_template.jinja`` when present,
    else the config's ``chat_template`` (a string, or named templates of which "default")."""
    file = directory / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8") or None
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    elif isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) and template else None


class ChatTemplate:
    """A Hugging Face chat template, rendered on jinja2's immutable sandbox.

    The environment is the one chat templates are written for: blocks trimmed
    (``trim_blocks``, ``lstrip_blocks``), loop controls (``break``/``continue``), a
    ``{% generation %}`` block that only marks text, a ``tojson`` filter that does not
    escape HTML, and the globals ``raise_exception``, ``strftime_now``, ``dict`` and a
    ``namespace`` that refuses underscore names. Compiled on first use, so a template
    that does not compile fails the render, not the load.
    """

    def __init__(self, source: str) -> None:
        self.source = source

    @functools.cached_property
    def _compiled(self) -> Any:
        return _environment().from_string(self.source)

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool, **variables: Any) -> str:
        return str(
            self._compiled.render(
                messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **variables
            )
        )


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: marks the assistant's text for training
        masks; rendering it is rendering its body."""

        tags = {"generation"}  # noqa: RUF012 - jinja2.ext.Extension declares it a plain set

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    class Namespace(jinja2.utils.Namespace):
        """jinja2's ``namespace()``, refusing attribute names that start with an underscore."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            for name in dict(*rest, **kwargs):
                _plain_name(name)
            jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

        def __setitem__(self, name: str, value: Any) -> None:
            _plain_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _plain_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.datetime.now().strftime(format)

    def make_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=make_dict, namespace=Namespace)
    return env


class Tokenizer:
    """A served model's tokenizer (``tokenizer.json`` and its config), shared by concurrent requests.

    It gives what the model's Hugging Face ``AutoTokenizer`` gives: ``encode`` adds special
    tokens as the tokenizer's post-processor does, chat prompts are the chat template's
    text encoded without added special tokens, and text is decoded with special tokens
    kept and without clean-up, as the engine decodes it to match stop strings.

    Calls are serialised by a lock: a Rust tokenizer used from several threads at once
    can fail ("Already borrowed").
    """

    def __init__(
        self,
        backend: Any,
        model: str,
        *,
        special_tokens: dict[str, str] | None = None,
        chat_template: str | None = None,
        special_ids: Sequence[int] = (),
    ) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._texts: dict[int, str] = {}
        self.model = model
        self._special_tokens = dict(special_tokens or {})  # bos_token, eos_token, ...: as templates see them
        self._template = ChatTemplate(chat_template) if chat_template else None
        added = backend.get_added_tokens_decoder()
        self._special_ids = frozenset(int(i) for i in special_ids) | {int(i) for i, t in added.items() if t.special}
        eos = self._special_tokens.get("eos_token")
        self.eos_id: int | None = backend.token_to_id(eos) if eos is not None else None
        self.has_chat_template = self._template is not None
        self.end_of_turn_id: int | None = self._end_of_turn() if self.has_chat_template else None

    @classmethod
    def load(cls, directory: pathlib.Path, model: str) -> Tokenizer:
        """Read ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
        ``chat_template.jinja`` from a Hugging Face tokenizer directory."""
        from tokenizers import AddedToken, Tokenizer as Backend

        directory = pathlib.Path(directory)
        backend = Backend.from_file(str(directory / "tokenizer.json"))
        backend.no_truncation()  # a prompt is encoded whole: its length is checked by the engine
        backend.no_padding()
        config = _read_json(directory / "tokenizer_config.json")
        named = {key: config[key] for key in _NAMED_SPECIAL if config.get(key) is not None}
        if "added_tokens_decoder" not in config:  # older directories: the map has the last word
            for key, value in _read_json(directory / "special_tokens_map.json").items():
                if key in _NAMED_SPECIAL and value is not None:
                    named[key] = value
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = list(extra.values()) if isinstance(extra, dict) else list(extra)

        # Tokens the config names that tokenizer.json lacks are added, as Hugging Face adds them.
        decoder = config.get("added_tokens_decoder")
        missing = [spec for spec in (decoder.values() if isinstance(decoder, dict) else ()) if isinstance(spec, dict)]
        specials = [s for s in (_token_spec(v) for v in [*named.values(), *extra]) if s is not None]
        missing += [{**s, "special": True} for s in specials]
        seen: set[str] = set()
        for spec in missing:
            content = spec.get("content")
            if not isinstance(content, str) or content in seen or backend.token_to_id(content) is not None:
                continue
            seen.add(content)
            flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
            options = {k: bool(spec[k]) for k in flags if k in spec}
            backend.add_tokens([AddedToken(content, **options)])

        special_tokens = {key: spec["content"] for key, spec in ((k, _token_spec(v)) for k, v in named.items()) if spec}
        special_ids = [i for i in (backend.token_to_id(s["content"]) for s in specials) if i is not None]
        return cls(
            backend,
            model,
            special_tokens=special_tokens,
            chat_template=_default_template(directory, config),
            special_ids=special_ids,
        )

    def _render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool) -> str:
        assert self._template is not None
        plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return self._template.render(plain, add_generation_prompt=add_generation_prompt, **self._special_tokens)

    def _end_of_turn(self) -> int | None:
        """The token the chat template writes right after an assistant reply (``<|im_end|>``
        in ChatML); the EOS token when the template writes no special token there."""
        conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
        try:
            rendered = self._render(conversation, add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - a template that cannot render the probe: fall back to EOS
            return self.eos_id
        if _PROBE not in rendered:
            return self.eos_id
        after = rendered[rendered.rindex(_PROBE) + len(_PROBE) :]
        ids = self._backend.encode(after, add_special_tokens=False).ids if after else []
        if ids and ids[0] in self._special_ids:
            return int(ids[0])
        return self.eos_id

    def encode(self, text: str) -> list[int]:
        """A completion prompt's tokens, special tokens added as the model's tokenizer adds them."""
        with self._lock:
            return list(self._backend.encode(text, add_special_tokens=True).ids)

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
                text = self._render(messages, add_generation_prompt=True)
            except Exception as exc:  # noqa: BLE001 - whatever the model's template raises is the client's 400
                raise InvalidRequest(
                    f"the chat template of {self.model} refused these messages: {exc}", param="messages"
                ) from None
            return list(self._backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        with self._lock:
            return str(self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token's text (``None`` when the tokenizer names none)."""
        return self._special_tokens.get("eos_token") or None

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
