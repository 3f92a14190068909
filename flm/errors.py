"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""

from __future__ import annotations


class FlmError(Exception):
    """A mistake in the user's input (config, paths, checkpoints). Message: what, where, how to fix."""

    exit_code = 2
