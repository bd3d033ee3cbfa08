"""Signed, expiring download URLs (archives and single files) and the tars they serve.

A token is ``<payload>.<signature>``: the payload is base64url JSON
``{"r": run_id, "c": checkpoint_id, "e": expiry_unix, "k": row, "t": saved_us}``
(plus ``"f": <relative file path>`` for a link to one file of an external export, and
``"p": 1`` for a link minted for someone other than the owner because the checkpoint
was public), the signature HMAC-SHA256 of the payload under a secret generated once
per ``TINKER_HOME`` (file ``archive_secret``). Downloads need no API key; a tampered,
malformed or expired token is refused.

A link names exact content, not a name: ``k`` is the checkpoint row's key and ``t`` its
save time (microseconds), so once the checkpoint is overwritten, or deleted and saved
again under the same name, the old link serves nothing. A ``p`` link serves only while
the checkpoint is still public. A file token never opens an archive and vice versa.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import tarfile
import tempfile
import time
from dataclasses import dataclass

from .errors import AccessDenied

__all__ = ["ArchiveSigner", "SignedArchive", "build_tar"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SignedArchive:
    run_id: str
    checkpoint_id: str
    expires: float
    file: str | None = None  # relative path of one file, for external-export file links
    content: tuple[int, int] | None = None  # (checkpoint row key, save time in microseconds)
    public: bool = False  # minted for a non-owner because the checkpoint was public


def _load_secret(path: pathlib.Path) -> bytes:
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # first writer wins if two servers start at once
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


class ArchiveSigner:
    def __init__(self, secret_path: pathlib.Path) -> None:
        self._secret_path = secret_path
        self._secret: bytes | None = None

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = _load_secret(self._secret_path)
        return self._secret

    def sign(
        self,
        run_id: str,
        checkpoint_id: str,
        ttl_s: float,
        now: float | None = None,
        *,
        file: str | None = None,
        content: tuple[int, int] | None = None,
        public: bool = False,
    ) -> tuple[str, float]:
        expires = int((now if now is not None else time.time()) + ttl_s)
        claims: dict[str, object] = {"r": run_id, "c": checkpoint_id, "e": expires}
        if content is not None:
            claims["k"], claims["t"] = content
        if file is not None:
            claims["f"] = file
        if public:
            claims["p"] = 1
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self.secret, payload.encode("ascii"), hashlib.sha256).digest())
        return f"{payload}.{signature}", float(expires)

    def verify(self, token: str, now: float | None = None) -> SignedArchive:
        payload, sep, signature = token.partition(".")
        if not token.isascii() or len(token) > 8192:
            raise AccessDenied("invalid download link: not a token this server made")
        expected = _b64(hmac.new(self.secret, payload.encode("ascii"), hashlib.sha256).digest())
        if not sep or not hmac.compare_digest(signature.encode("ascii"), expected.encode("ascii")):
            raise AccessDenied("invalid download link: the signature does not match")
        try:
            data = json.loads(_unb64(payload))
            run_id, checkpoint_id, expires = str(data["r"]), str(data["c"]), float(data["e"])
            file = str(data["f"]) if data.get("f") is not None else None
            content = (int(data["k"]), int(data["t"])) if "k" in data else None
            public = bool(data.get("p"))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise AccessDenied("invalid download link") from None
        if (now if now is not None else time.time()) > expires:
            raise AccessDenied("the download link has expired; request a new one")
        return SignedArchive(run_id, checkpoint_id, expires, file, content, public)


def build_tar(directory: pathlib.Path, tmp_dir: pathlib.Path) -> pathlib.Path:
    """A plain tar of ``directory``'s files (relative names), written to a temp file."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="archive-", suffix=".tar", dir=tmp_dir)
    os.close(fd)
    path = pathlib.Path(name)
    try:
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for item in sorted(directory.rglob("*")):
                if item.is_file() and not item.is_symlink():
                    tar.add(item, arcname=item.relative_to(directory).as_posix(), recursive=False)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
