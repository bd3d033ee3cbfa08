"""The ``tinker`` command line.

Start-up cost matters here: ``tinker --help`` must stay well under 50 ms, so this
package and its root modules import only ``click`` and the standard library at
module level.  ``rich``, ``httpx``, ``pydantic`` and the SDK are imported inside
command bodies, and every subcommand module is loaded only when it runs
(:mod:`tinker.cli._lazy`).

Run it as ``tinker`` (console script) or ``python -m tinker.cli``.
"""
