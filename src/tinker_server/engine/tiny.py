"""The test model ``tinker-test/tiny-llama``: a tiny random Llama and a locally built tokenizer.

Nothing is downloaded. The tokenizer is a byte-level BPE (vocabulary
:data:`TINY_VOCAB_SIZE`, ChatML special tokens) trained deterministically on the
small built-in corpus below and cached on disk; the model is a 2-layer Llama
whose weights are drawn from a fixed seed, so every build is identical.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "TINY_CHAT_TEMPLATE",
    "TINY_VOCAB_SIZE",
    "build_tiny_model",
    "ensure_tiny_tokenizer",
    "make_portable_tokenizer_dir",
]

TINY_VOCAB_SIZE = 512
TINY_MAX_CONTEXT = 2048
TINY_WEIGHT_SEED = 20251128
TINY_WEIGHT_STD = 0.08
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A small fixed English corpus; changing it changes the tokenizer (and the
# tokenizer cache key below must change with it).
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Once upon a time there was a little model that wanted to learn. Every morning it read a few pages,
and every evening it tried to write a story of its own. The stories were short at first, then longer.
Training a language model means showing it text and asking it to predict the next token.
The loss goes down when the predictions get better. Learning rate, batch size and rank matter.
Hello, world! How are you today? I am fine, thank you. What is your name? My name is Tinker.
The weather is nice: the sun is shining, the birds are singing and the river is running to the sea.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 2025. Adding two and two gives four; three times three is nine.
User: Please translate this sentence into pig latin. Assistant: Easeplay anslatetray isthay entencesay.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
A researcher writes a training loop on a laptop, and a server runs the model on its own hardware.
Questions and answers: why is the sky blue? Because air scatters blue light more than red light.
The cat sat on the mat. The dog sat on the log. The bird sat in the tree and sang a song.
In the beginning was the word, and the word was a token, and the token had an id.
Good models need good data; good data needs care, patience and a lot of reading.
"""

_TOKENIZER_CACHE_KEY = "bpe512-v2"


def _train_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS.splitlines() * 4
    tok.train_from_iterator(lines, trainer)
    return tok


def make_portable_tokenizer_dir(directory: pathlib.Path) -> None:
    """Make a transformers-5 ``save_pretrained`` tokenizer directory loadable by transformers 4.x too.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (unknown to 4.x),
    keeps the chat template only in ``chat_template.jinja`` and no longer writes
    ``special_tokens_map.json``. SDK users (``transformers>=4.56``) may load this
    directory, so: name the class ``PreTrainedTokenizerFast`` (an alias in 5.x),
    copy the template into ``tokenizer_config.json`` and write the special-tokens map.
    """
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = directory / "chat_template.jinja"
    if template.exists() and "chat_template" not in config:
        config["chat_template"] = template.read_text()
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(k)}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def ensure_tiny_tokenizer(directory: pathlib.Path) -> pathlib.Path:
    """Build the tiny tokenizer into ``directory`` unless it is already there.

    The directory holds ``tokenizer.json``, ``tokenizer_config.json`` and the chat
    template, loadable with ``AutoTokenizer.from_pretrained(directory)``. Written
    atomically (temporary directory, then rename), so concurrent builders are safe.
    """
    marker = directory / f".built-{_TOKENIZER_CACHE_KEY}"
    if marker.exists():
        return directory
    from transformers import PreTrainedTokenizerFast

    tok = _train_tokenizer()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=TINY_MAX_CONTEXT,
    )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
    wrapped.save_pretrained(str(tmp))
    make_portable_tokenizer_dir(tmp)
    (tmp / marker.name).write_text("ok\n")
    if directory.exists():
        trash = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
        try:
            os.rename(directory, trash)
        except OSError:
            pass
        else:
            shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, directory)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def tiny_config(vocab_size: int = TINY_VOCAB_SIZE) -> LlamaConfig:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_MAX_CONTEXT,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    config._attn_implementation = "sdpa"
    return config


def build_tiny_model(dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A 2-layer, hidden-64 Llama with fixed random weights (identical on every call).

    Weights are drawn from their own ``torch.Generator``: N(0, 0.08) for every
    matrix and embedding, ones for the RMSNorm scales; the global RNG is untouched.
    """
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_config())
    gen = torch.Generator().manual_seed(TINY_WEIGHT_SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * TINY_WEIGHT_STD)
    model.to(dtype)  # type: ignore[arg-type]  # transformers' stubs type .to() oddly
    model.train(False)
    return model
