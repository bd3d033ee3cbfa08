"""get_tokenizer: id resolution, offline fetch from the server, the local cache."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

import tinker
from tinker._tokenizer import cache_dir, tokenizer_id_for
from tinker.types import GetInfoResponse

from .conftest import FakeServer


def info(**model_data: str) -> GetInfoResponse:
    return GetInfoResponse(model_id="m", model_data=model_data)  # type: ignore[arg-type]


def test_tokenizer_id_resolution() -> None:
    assert tokenizer_id_for(info(tokenizer_id="tok/x", model_name="a/b")) == "tok/x"
    assert tokenizer_id_for(info(model_name="meta-llama/Llama-3.1-8B")) == "baseten/Meta-Llama-3-tokenizer"
    assert tokenizer_id_for(info(model_name="org/model/variant")) == "org/model"
    assert tokenizer_id_for(info(model_name="Qwen/Qwen3-8B")) == "Qwen/Qwen3-8B"


def tiny_tokenizer_files() -> dict[str, str]:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}),
    }


def test_tokenizer_fetched_from_server_then_cached(
    server: FakeServer, training_client: tinker.TrainingClient, client: tinker.ServiceClient
) -> None:
    pytest.importorskip("transformers")
    files = tiny_tokenizer_files()
    server.route("POST", "/api/v1/get_info")(
        lambda r: httpx.Response(200, json={"model_id": "m", "model_data": {"tokenizer_id": "org/tiny"}})
    )
    server.route("POST", "/api/v1/tokenizer_files")(
        lambda r: httpx.Response(200, json={"tokenizer_id": "org/tiny", "files": files})
    )
    tokenizer = training_client.get_tokenizer()
    assert tokenizer.encode("hello world", add_special_tokens=False) == [1, 2]
    assert training_client.get_tokenizer() is tokenizer
    assert server.bodies("/api/v1/tokenizer_files") == [{"tokenizer_id": "org/tiny"}]
    assert (cache_dir("org/tiny") / "tokenizer.json").is_file()
    assert cache_dir("org/tiny").name == "org--tiny"

    other = client.create_lora_training_client("b")
    assert other.get_tokenizer().encode("world", add_special_tokens=False) == [2]
    assert len(server.calls("/api/v1/tokenizer_files")) == 1  # served from the cache


def test_bad_file_names_are_refused(server: FakeServer, training_client: tinker.TrainingClient) -> None:
    server.route("POST", "/api/v1/get_info")(
        lambda r: httpx.Response(200, json={"model_id": "m", "model_data": {"tokenizer_id": "org/evil"}})
    )
    server.route("POST", "/api/v1/tokenizer_files")(
        lambda r: httpx.Response(200, json={"tokenizer_id": "org/evil", "files": {"../x": "boom"}})
    )
    with pytest.raises(ValueError, match="refusing"):
        training_client.get_tokenizer()
    assert not Path(cache_dir("org/evil")).exists()
