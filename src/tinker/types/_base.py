"""Base classes of the wire types.

Two kinds of model, as in the 0.5.1 SDK:

* ``StrictBase`` for requests: frozen, unknown fields rejected, so a typo in a
  field name fails on the caller's machine instead of being sent.
* ``BaseModel`` for responses: frozen, unknown fields ignored, so a newer server
  may add fields without breaking older clients.

Request bodies go on the wire with ``model_dump(mode="json", exclude_unset=True)``:
only fields that were set explicitly are sent (see :func:`to_wire`).
"""

from __future__ import annotations

from typing import Any

import pydantic

__all__ = ["BaseModel", "StrictBase", "to_wire"]


class BaseModel(pydantic.BaseModel):
    """Response model: frozen, ignores unknown fields."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", protected_namespaces=())


class StrictBase(pydantic.BaseModel):
    """Request model: frozen, rejects unknown fields."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


def to_wire(model: pydantic.BaseModel) -> dict[str, Any]:
    """The JSON body the 0.5.1 client sends for ``model``: explicitly set fields only."""
    return model.model_dump(mode="json", exclude_unset=True)
