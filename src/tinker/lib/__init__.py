"""Upstream import paths (``tinker.lib...``), kept as thin re-exports."""
