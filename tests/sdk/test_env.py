"""tinker._env: the one module that reads the SDK's and CLI's environment variables."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from tinker import _env

SRC = Path(_env.__file__).resolve().parent
# The terminal's width is the terminal's business (rich reads it as well), not a Tinker setting.
ALLOWED = {("cli/_output.py", "COLUMNS")}
_OS_NAMES = ("environ", "environb", "getenv", "getenvb")


def _environment_reads(tree: ast.AST) -> list[tuple[int, str | None]]:
    """(line, variable or None when not a constant) for each use of os.environ / os.getenv / their imports."""
    reads: list[tuple[int, str | None]] = []
    named: set[int] = set()
    for node in ast.walk(tree):
        # os.environ.get("X"), os.environ["X"], os.getenv("X"): the variable's name is known.
        target: ast.expr | None = None
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault"):
                target, key = func.value, node.args[0]
            elif isinstance(func, ast.Attribute) and func.attr == "getenv":
                target, key = func, node.args[0]
        elif isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        if target is not None and _is_os_environ(target):
            named.add(id(target))
            name = key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
            reads.append((getattr(node, "lineno", 0), name))
    for node in ast.walk(tree):
        if _is_os_environ(node) and id(node) not in named:
            reads.append((getattr(node, "lineno", 0), None))
        if isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in _OS_NAMES for a in node.names):
            reads.append((node.lineno, None))
    return reads


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in _OS_NAMES
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def test_no_other_module_reads_the_environment() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative == "_env.py":
            continue
        for line, name in _environment_reads(ast.parse(path.read_text(encoding="utf-8"))):
            if (relative, name) not in ALLOWED:
                found.append(f"src/tinker/{relative}:{line} reads {name or 'the environment'}")
    assert found == [], "read it through tinker._env instead:\n" + "\n".join(found)


def test_the_scan_sees_each_form() -> None:
    code = (
        "import os\nfrom os import environ\n"
        "a = os.environ.get('TINKER_A')\nb = os.environ['TINKER_B']\nc = os.getenv('TINKER_C')\nd = dict(os.environ)\n"
    )
    assert sorted(_environment_reads(ast.parse(code))) == [
        (2, None),
        (3, "TINKER_A"),
        (4, "TINKER_B"),
        (5, "TINKER_C"),
        (6, None),
    ]


def test_every_variable_read_is_in_the_table() -> None:
    tree = ast.parse(Path(_env.__file__).read_text(encoding="utf-8"))
    names = {name for _, name in _environment_reads(tree) if name is not None}
    names |= {  # the booleans, read through _flag(name, default)
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_flag"
        if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    }
    assert "TINKER_DEBUG" in names and len(names) == 10
    assert _env.__doc__ is not None
    for name in names:
        assert f"``{name}``" in _env.__doc__, name


@pytest.fixture(autouse=True)
def bare(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TINKER_API_KEY",
        "TINKER_BASE_URL",
        "TINKER_TAGS",
        "TINKER_TELEMETRY",
        "TINKER_LOG",
        "TINKER_FEATURE_GATES",
        "TINKER_CACHE_DIR",
        "TINKER_DEBUG",
        "CLOUDFLARE_ACCESS_CLIENT_ID",
        "CLOUDFLARE_ACCESS_CLIENT_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)


def test_api_key_keeps_an_empty_value(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _env.api_key() is None
    monkeypatch.setenv("TINKER_API_KEY", "")
    assert _env.api_key() == ""
    monkeypatch.setenv("TINKER_API_KEY", " k ")
    assert _env.api_key() == " k "


def test_base_url_empty_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _env.base_url() is None
    monkeypatch.setenv("TINKER_BASE_URL", "")
    assert _env.base_url() is None
    monkeypatch.setenv("TINKER_BASE_URL", "http://h:1")
    assert _env.base_url() == "http://h:1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, []), ("", [""]), ("b,a,b", ["a", "b"]), ("x", ["x"]), (" a,a", [" a", "a"])],
)
def test_tags(monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: list[str]) -> None:
    if raw is not None:
        monkeypatch.setenv("TINKER_TAGS", raw)
    assert _env.tags() == expected


@pytest.mark.parametrize(
    ("raw", "telemetry", "debug"),
    [
        (None, True, False),
        ("", False, False),
        ("1", True, True),
        (" TRUE ", True, True),
        ("Yes", True, True),
        ("on", True, True),
        ("0", False, False),
        ("false", False, False),
        ("2", False, False),
    ],
)
def test_flags(monkeypatch: pytest.MonkeyPatch, raw: str | None, telemetry: bool, debug: bool) -> None:
    if raw is not None:
        monkeypatch.setenv("TINKER_TELEMETRY", raw)
        monkeypatch.setenv("TINKER_DEBUG", raw)
    assert _env.telemetry() is telemetry
    assert _env.debug() is debug


@pytest.mark.parametrize(
    ("raw", "level"),
    [(None, None), ("", None), ("debug", logging.DEBUG), ("INFO", logging.INFO), (" info", None), ("warning", None)],
)
def test_log_level(monkeypatch: pytest.MonkeyPatch, raw: str | None, level: int | None) -> None:
    if raw is not None:
        monkeypatch.setenv("TINKER_LOG", raw)
    assert _env.log_level() == level


@pytest.mark.parametrize(
    ("raw", "gates"),
    [(None, {"async_sampling"}), ("", {""}), ("a,b", {"a", "b"}), ("async_sampling,x", {"async_sampling", "x"})],
)
def test_feature_gates(monkeypatch: pytest.MonkeyPatch, raw: str | None, gates: set[str]) -> None:
    if raw is not None:
        monkeypatch.setenv("TINKER_FEATURE_GATES", raw)
    assert _env.feature_gates() == gates


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _env.cache_dir() == tmp_path / "home" / ".cache" / "tinker"
    monkeypatch.setenv("TINKER_CACHE_DIR", "")
    assert _env.cache_dir() == tmp_path / "home" / ".cache" / "tinker"
    monkeypatch.setenv("TINKER_CACHE_DIR", str(tmp_path / "c"))
    assert _env.cache_dir() == tmp_path / "c"


def test_cloudflare_access(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (_env.cloudflare_access_client_id(), _env.cloudflare_access_client_secret()) == (None, None)
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_ID", "id")
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_SECRET", "")
    assert (_env.cloudflare_access_client_id(), _env.cloudflare_access_client_secret()) == ("id", "")
