"""Shared helpers for the `portico` subcommand modules."""

from __future__ import annotations


class CliError(Exception):
    """A failure to report as one line; `exit_code` 1 (runtime/server) or 2 (usage/config)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
