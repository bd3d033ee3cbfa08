"""Base classes of the server's wire schema.

The server accepts what every official client from 0.5.1 to 0.38 sends, so
request models are lenient where the clients differ:

* unknown keys of a request body are ignored (newer clients add fields; 0.18+ also
  send every defaulted field, ``type`` discriminators included);
* but the objects a user types (:class:`StrictRequest`: sampling parameters, Adam
  parameters, the LoRA config, datums, model inputs, text chunks, tensors) refuse keys
  that no official client (0.5.1 … 0.38) sends, so a misspelt ``max_token`` is a 400
  instead of a silently ignored setting; each keeps every field some version sends;
* integers the database or numpy stores as 64-bit (:data:`Int64`: ``seq_id``,
  ``model_seq_id``, ...) are refused beyond that range;
* an absent field takes its default (0.18+ drop ``null`` instead of sending it).

Response models are what the server answers; clients ignore keys they do not
know, so adding a field never breaks an older client.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import pydantic

__all__ = ["Int64", "NonNegativeDims", "Request", "Response", "StrictRequest"]

# A signed 64-bit integer (sequence ids, seeds): larger values are a 400, never an overflow.
Int64 = Annotated[int, pydantic.Field(ge=-(2**63), le=2**63 - 1)]
# Tensor shapes: dimensions are counts.
NonNegativeDims = list[Annotated[int, pydantic.Field(ge=0, le=2**63 - 1)]]


class _Model(pydantic.BaseModel):
    """Frozen; unknown keys ignored. Fields named in ``omit_if_none`` (those added
    after 0.5.1) are left out of a dump while they are ``None``, so the bodies
    older clients get stay as they were."""

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore", protected_namespaces=())
    omit_if_none: ClassVar[frozenset[str]] = frozenset()

    @pydantic.model_serializer(mode="wrap")
    def _omit_unset_additions(self, handler: pydantic.SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.omit_if_none and isinstance(data, dict):
            for name in self.omit_if_none:
                if data.get(name, 0) is None:
                    del data[name]
        return data


class Request(_Model):
    """A request body."""


class StrictRequest(Request):
    """An object the user types: unknown keys are refused (400 naming the key)."""

    model_config = pydantic.ConfigDict(extra="forbid")


class Response(_Model):
    """A response body."""
