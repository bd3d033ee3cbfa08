"""Tinker paths, checkpoint names and where checkpoints live on disk.

``tinker://<run_id>/<weights|sampler_weights|external_weights>/<name>``; the
checkpoint id is ``<kind>/<name>``. ``external_weights`` (0.28+ clients) are
Hugging Face/PEFT-format exports made by ``save_weights_external``. The server
is stricter than the SDK's parser: empty parts, ``.``/``..`` and unusual
characters are rejected, because names become directory names under
``TINKER_HOME/checkpoints/<run_id>/<kind>/<name>/``.
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

from .errors import InvalidRequest

__all__ = [
    "KIND_TO_TYPE",
    "CheckpointRef",
    "checkpoint_dir",
    "parse_checkpoint_id",
    "parse_tinker_path",
    "validate_checkpoint_name",
]

PREFIX = "tinker://"
KIND_TO_TYPE = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}
_KINDS_HINT = "'weights/<name>', 'sampler_weights/<name>' or 'external_weights/<name>'"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-+=@,:]{0,199}")
_RUN_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-:]{0,199}")


@dataclass(frozen=True)
class CheckpointRef:
    run_id: str
    kind: str  # "weights" | "sampler_weights" | "external_weights"
    name: str

    @property
    def checkpoint_id(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def checkpoint_type(self) -> str:
        return KIND_TO_TYPE[self.kind]

    @property
    def tinker_path(self) -> str:
        return f"{PREFIX}{self.run_id}/{self.kind}/{self.name}"


def validate_checkpoint_name(name: str | None) -> str:
    """A checkpoint name: letters, digits and ``_.-+=@,:``, not starting with a dot."""
    if name is None or name == "":
        raise InvalidRequest("checkpoint name must not be empty")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidRequest(f"invalid checkpoint name {name!r}: it must not contain '/', '\\' or '..'")
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"invalid checkpoint name {name!r}: use at most 200 letters, digits and '_.-+=@,:' (not starting with '.')"
        )
    return name


def _validate_run_id(run_id: str, original: str) -> str:
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise InvalidRequest(f"Invalid tinker path: {original} (bad training run id {run_id!r})")
    return run_id


def parse_checkpoint_id(run_id: str, checkpoint_id: str) -> CheckpointRef:
    """``<kind>/<name>`` of run ``run_id`` (kind: weights, sampler_weights, external_weights)."""
    kind, sep, name = checkpoint_id.partition("/")
    if not sep or kind not in KIND_TO_TYPE:
        raise InvalidRequest(f"invalid checkpoint id {checkpoint_id!r}: expected {_KINDS_HINT}")
    try:
        validate_checkpoint_name(name)
    except InvalidRequest as exc:
        raise InvalidRequest(f"invalid checkpoint id {checkpoint_id!r}: {exc.message}") from None
    return CheckpointRef(_validate_run_id(run_id, run_id), kind, name)


def parse_tinker_path(path: str) -> CheckpointRef:
    """Parse ``tinker://<run_id>/<kind>/<name>``; :class:`InvalidRequest` if malformed."""
    hint = "expected tinker://<training_run_id>/<weights|sampler_weights|external_weights>/<name>"
    if not isinstance(path, str) or not path.startswith(PREFIX):
        raise InvalidRequest(f"Invalid tinker path: {path!r}; {hint}")
    parts = path[len(PREFIX) :].split("/")
    if len(parts) != 3 or parts[1] not in KIND_TO_TYPE or not parts[0] or not parts[2]:
        raise InvalidRequest(f"Invalid tinker path: {path!r}; {hint}")
    run_id, kind, name = parts
    _validate_run_id(run_id, path)
    try:
        validate_checkpoint_name(name)
    except InvalidRequest as exc:
        raise InvalidRequest(f"Invalid tinker path: {path!r}: {exc.message}") from None
    return CheckpointRef(run_id, kind, name)


def checkpoint_dir(root: pathlib.Path, ref: CheckpointRef) -> pathlib.Path:
    """The checkpoint's folder under ``root`` (``TINKER_HOME/checkpoints``)."""
    path = root / ref.run_id / ref.kind / ref.name
    # Names are validated above; this guards against any future slip.
    if root.resolve() not in path.resolve().parents:
        raise InvalidRequest(f"invalid checkpoint location for {ref.tinker_path}")
    return path
