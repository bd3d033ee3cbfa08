"""Base classes of the server's wire schema.

The server accepts what every official client from 0.5.1 to 0.38 sends, so
request models are lenient where the clients differ:

* unknown keys are ignored (newer clients add fields; 0.18+ also send every
  defaulted field, ``type`` discriminators included);
* an absent field takes its default (0.18+ drop ``null`` instead of sending it).

Response models are what the server answers; clients ignore keys they do not
know, so adding a field never breaks an older client.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pydantic

__all__ = ["Request", "Response"]


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


class Response(_Model):
    """A response body."""
