"""Issued API keys, the two modes, tenants' quotas and usage accounting (``auth.py``,
``tenants.py``, ``usage.py``), through the API with the fake engine."""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Callable

import pytest

from tinker_server.auth import Authenticator, KeyStore, check_bind, hash_key, is_loopback, owner_for_key
from tinker_server.db import Database
from tinker_server.errors import InvalidRequest, NotAuthenticated
from tinker_server.tenants import UNLIMITED, DatabaseTenants, Quota

from .conftest import FAKE_MODEL, Api, datum, fb_body


@pytest.fixture
def store(tmp_path: pathlib.Path) -> KeyStore:
    """The key table of the home the fake server uses (``tmp_path/home``)."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{home / 'tinker.db'}")
    db.create_tables()
    return KeyStore(db)


def test_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "", "localhost.evil.com"):
        assert not is_loopback(host), host


def test_keys_are_random_prefixed_and_stored_only_as_hashes(store: KeyStore, tmp_path: pathlib.Path) -> None:
    a = store.create("alice")
    b = store.create("bob", Quota(max_lora_rank=16, base_models=(FAKE_MODEL,), weight=2.0))
    assert a.secret.startswith("tml-") and len(a.secret) >= 40 and a.secret != b.secret
    assert a.key.owner.startswith("key-") and a.key.owner != b.key.owner
    assert store.lookup(a.secret) == a.key and store.lookup(b.secret) == b.key
    assert store.lookup("tml-" + "x" * 43) is None
    assert b.key.quota == Quota(max_lora_rank=16, base_models=(FAKE_MODEL,), weight=2.0)
    # The database file holds no key text, only hashes.
    raw = (tmp_path / "home" / "tinker.db").read_bytes()
    for p in (tmp_path / "home").glob("tinker.db-wal"):
        raw += p.read_bytes()
    for created in (a, b):
        assert created.secret.encode() not in raw
        assert created.secret.removeprefix("tml-").encode() not in raw
    with sqlite3.connect(tmp_path / "home" / "tinker.db") as conn:
        hashes = {row[0] for row in conn.execute("SELECT key_hash FROM api_keys")}
    assert hashes == {hash_key(a.secret), hash_key(b.secret)}


def test_names_quota_checks_and_revocation(store: KeyStore) -> None:
    first = store.create("alice")
    with pytest.raises(InvalidRequest, match="exists"):
        store.create("alice")
    for bad in ("", "   ", "12", "x" * 200, "a\nb"):
        with pytest.raises(InvalidRequest):
            store.create(bad)
    with pytest.raises(InvalidRequest, match="weight"):
        store.create("w", Quota(weight=0))
    revoked = store.revoke("alice")
    assert revoked.revoked and store.revoke(str(first.key.id)).revoked_at == revoked.revoked_at  # idempotent
    second = store.create("alice")  # a revoked key's name can be used again
    assert store.get("alice").id == second.key.id  # the name means the key not revoked
    assert [k.id for k in store.list()] == [first.key.id, second.key.id]


def test_authenticator_modes(store: KeyStore) -> None:
    open_auth = Authenticator(store, issued_only=False)
    assert not open_auth.issued_mode
    assert open_auth.owner("anything") == owner_for_key("anything")
    with pytest.raises(NotAuthenticated, match="missing API key"):
        open_auth.owner("  ")
    strict = Authenticator(store, issued_only=True)
    with pytest.raises(NotAuthenticated, match="not one this server issued"):
        strict.owner("tml-local")
    created = store.create("alice")
    assert open_auth.issued_mode  # a key issued while the server runs switches it on its next request
    assert open_auth.owner(created.secret) == created.key.owner
    with pytest.raises(NotAuthenticated, match="not one this server issued"):
        open_auth.owner("tml-local")
    store.revoke("alice")
    with pytest.raises(NotAuthenticated, match="revoked"):
        open_auth.owner(created.secret)
    assert open_auth.issued_mode  # revoked keys still count: no way back to open mode by accident


def test_non_loopback_bind_needs_an_issued_key(store: KeyStore, tmp_path: pathlib.Path) -> None:
    check_bind("127.0.0.1", store)
    with pytest.raises(ValueError, match="tinker-server admin key create NAME") as info:
        check_bind("0.0.0.0", store, tmp_path / "home")
    assert "refusing to listen on 0.0.0.0" in str(info.value) and str(tmp_path / "home") in str(info.value)
    # A fresh database without the table is the same as no key.
    check_bind("::1", KeyStore(Database(f"sqlite:///{tmp_path / 'fresh.db'}")))
    with pytest.raises(ValueError):
        check_bind("10.1.2.3", KeyStore(Database(f"sqlite:///{tmp_path / 'fresh.db'}")))
    store.create("ops")
    check_bind("0.0.0.0", store)


def test_create_app_refuses_a_public_bind_without_keys(make_fake_server: Callable[..., Api]) -> None:
    with pytest.raises(ValueError, match="no API key has been issued"):
        make_fake_server(host="0.0.0.0")


def test_open_mode_on_loopback_accepts_any_key(api: Api) -> None:
    for key in ("tml-local", "test-key-1", "whatever"):
        assert api.as_key(key).get("get_server_capabilities").status_code == 200
    me = api.as_key("tml-local").get("auth/apikey/me").json()
    assert me["name"] == owner_for_key("tml-local")
    assert api.as_key(None).get("get_server_capabilities").status_code == 401
    assert api.as_key("").get("get_server_capabilities").status_code == 401
    assert api.as_key("tml-local").delete("auth/apikey/me").json()["revoked"] is False


def test_issued_mode(make_fake_server: Callable[..., Api], store: KeyStore) -> None:
    alice = store.create("alice")
    api = make_fake_server().as_key(alice.secret)
    assert api.get("get_server_capabilities").status_code == 200
    sid = api.session()
    model_id = api.create_model(sid)
    me = api.get("auth/apikey/me").json()
    assert me["key_id"] == alice.key.id and me["name"] == "alice"
    assert me["details"]["tenant"] == alice.key.owner
    # Unknown keys, the open-mode default and missing keys: 401 with a sentence.
    for key in ("tml-local", "test-key-1", alice.secret + "x"):
        response = api.as_key(key).get("get_server_capabilities")
        assert response.status_code == 401 and "not one this server issued" in response.json()["detail"]
        assert api.as_key(key).post("forward_backward", fb_body(model_id, 1)).status_code == 401
    assert api.as_key(None).get("auth/apikey/me").status_code == 401
    # The OpenAI-compatible endpoints follow the same mode.
    assert api.client.get("/oai/api/v1/models", headers={"Authorization": "Bearer tml-local"}).status_code == 401
    oai = api.client.get("/oai/api/v1/models", headers={"Authorization": f"Bearer {alice.secret}"})
    assert oai.status_code == 200
    # Owners of issued keys are what the rows hold.
    run = api.get(f"training_runs/{model_id}").json()
    assert run["model_owner"] == alice.key.owner
    # Revoked from outside (the CLI's store): its next request fails.
    store.revoke("alice")
    response = api.get(f"training_runs/{model_id}")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert api.post("forward_backward", fb_body(model_id, 1)).status_code == 401


def test_a_key_issued_while_the_server_runs_ends_open_mode(api: Api, store: KeyStore) -> None:
    assert api.as_key("tml-local").get("get_server_capabilities").status_code == 200
    bob = store.create("bob")
    assert api.as_key("tml-local").get("get_server_capabilities").status_code == 401
    assert api.as_key(bob.secret).get("get_server_capabilities").status_code == 200


def test_logout_revokes_the_key_in_use(make_fake_server: Callable[..., Api], store: KeyStore) -> None:
    carol = store.create("carol")
    api = make_fake_server().as_key(carol.secret)
    answer = api.delete("auth/apikey/me")
    assert answer.status_code == 200 and answer.json()["revoked"] is True
    assert api.get("auth/apikey/me").status_code == 401
    assert store.get("carol").revoked


def test_public_bind_with_a_key_starts_in_issued_mode(make_fake_server: Callable[..., Api], store: KeyStore) -> None:
    dave = store.create("dave")
    store.revoke("dave")
    erin = store.create("erin")
    api = make_fake_server(host="0.0.0.0")
    assert api.as_key(erin.secret).get("get_server_capabilities").status_code == 200
    assert api.as_key(dave.secret).get("get_server_capabilities").status_code == 401
    assert api.as_key("tml-local").get("get_server_capabilities").status_code == 401


def test_database_tenants(make_fake_server: Callable[..., Api], store: KeyStore) -> None:
    quota = Quota(max_training_runs=2, max_lora_rank=8, base_models=(FAKE_MODEL,), tokens_per_minute=1000, weight=3)
    frank = store.create("frank", quota)
    runtime = make_fake_server().runtime
    assert isinstance(runtime.tenants, DatabaseTenants)
    assert runtime.tenants.quota(frank.key.owner) == quota
    assert runtime.tenants.quota(owner_for_key("tml-local")) is UNLIMITED
    assert runtime.tenants.quota("key-unknown") is UNLIMITED
    assert runtime.training._ctx.tenants is runtime.tenants


def _train_and_sample(api: Api, lengths: list[int], max_tokens: int, samples: int) -> None:
    sid = api.session()
    model_id = api.create_model(sid)
    data = [datum(list(range(1, n + 1))) for n in lengths]
    api.result("forward_backward", fb_body(model_id, 1, data))
    forward = fb_body(model_id, 2, data)
    api.result("forward", {"forward_input": forward["forward_backward_input"], "model_id": model_id, "seq_id": 2})
    sampler = api.ok(
        "create_sampling_session",
        {"session_id": sid, "sampling_session_seq_id": 0, "base_model": FAKE_MODEL, "model_path": None},
    )["sampling_session_id"]
    body = {
        "num_samples": samples,
        "prompt": {"chunks": [{"tokens": [1, 2]}]},
        "sampling_params": {"max_tokens": max_tokens},
        "sampling_session_id": sampler,
        "seq_id": 0,
    }
    api.result("asample", body)
    api.result("asample", {**body, "seq_id": 1})
    saved = api.result("save_weights", {"model_id": model_id, "path": "w1", "seq_id": 3})
    assert saved["path"].endswith("/weights/w1")


def test_usage_is_counted_per_key(make_fake_server: Callable[..., Api], store: KeyStore) -> None:
    a = store.create("alice")
    b = store.create("bob")
    server = make_fake_server()
    alice, bob = server.as_key(a.secret), server.as_key(b.secret)
    _train_and_sample(alice, [3, 5], max_tokens=4, samples=2)
    _train_and_sample(bob, [7], max_tokens=6, samples=1)
    mine = alice.get("usage").json()
    assert mine["name"] == "alice" and mine["key_id"] == a.key.id and mine["owner"] == a.key.owner
    assert (mine["train_tokens"], mine["train_requests"]) == (8, 1)  # forward (no backward) is not training
    assert (mine["sampled_tokens"], mine["sample_requests"]) == (2 * 2 * 4, 2)
    assert mine["checkpoints"] == 1 and mine["checkpoint_bytes"] > 0
    assert mine["quota"]["max_lora_rank"] is None and mine["quota"]["weight"] == 1.0
    theirs = bob.get("usage").json()
    assert (theirs["train_tokens"], theirs["sampled_tokens"], theirs["sample_requests"]) == (7, 2 * 6, 2)
    from tinker_server.usage import read_usage

    rows = {u.name: u for u in read_usage(server.runtime.db)}
    assert rows["alice"].train_tokens == 8 and rows["bob"].train_tokens == 7
    assert rows["bob"].checkpoint_bytes == theirs["checkpoint_bytes"]
    assert server.as_key("tml-local").get("usage").status_code == 401


def test_usage_in_open_mode(api: Api) -> None:
    _train_and_sample(api, [4], max_tokens=3, samples=1)
    mine = api.get("usage").json()
    assert mine["key_id"] is None and mine["owner"] == owner_for_key("test-key-1")
    assert (mine["train_tokens"], mine["sampled_tokens"]) == (4, 6)
    other = api.as_key("someone-else").get("usage").json()
    assert (other["train_tokens"], other["sampled_tokens"], other["checkpoints"]) == (0, 0, 0)


def test_access_log_names_the_issued_tenant(
    make_fake_server: Callable[..., Api], store: KeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    g = store.create("gina")
    api = make_fake_server().as_key(g.secret)
    with caplog.at_level("INFO", logger="tinker_server.access"):
        assert api.get("get_server_capabilities").status_code == 200
    lines = [r.getMessage() for r in caplog.records if "get_server_capabilities" in r.getMessage()]
    assert lines and f"owner={g.key.owner}" in lines[-1]
    assert g.secret not in caplog.text


def test_an_older_database_gains_the_tables(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.db"
    db = Database(f"sqlite:///{path}")
    db.create_tables()
    with sqlite3.connect(path) as conn:  # a database from before keys: the same without their tables
        conn.execute("DROP TABLE api_keys")
        conn.execute("DROP TABLE usage")
    store = KeyStore(db)
    assert not store.any_issued()
    db.create_tables()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"api_keys", "usage"} <= tables
    store.create("first")
    assert store.any_issued()
