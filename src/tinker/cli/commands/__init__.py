"""Subcommands of ``tinker``; each module is imported only when its command runs."""
