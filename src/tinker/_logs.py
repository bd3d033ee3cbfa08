"""Logging defaults installed by ``import tinker``.

The ``httpx`` logger is quietened to WARNING; ``TINKER_LOG=debug|info`` turns on
``logging.basicConfig`` and sets the ``tinker`` and ``httpx`` loggers to that level.
"""

from __future__ import annotations

import logging

from . import _env

__all__ = ["setup_logging"]


def setup_logging() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    level = _env.log_level()
    if level is None:
        return
    logging.basicConfig(format="[%(asctime)s - %(name)s:%(lineno)d - %(levelname)s] %(message)s")
    logging.getLogger("tinker").setLevel(level)
    logging.getLogger("httpx").setLevel(level)
