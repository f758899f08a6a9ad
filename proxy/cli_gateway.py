"""Placeholder: this subcommand group is being written; it registers nothing yet."""

import argparse


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this module's subcommands to the `portico` parser."""
