"""The command line: `bench` (commands.py) and its options (args.py), the top layer."""

from bench.cli.commands import main

__all__ = ["main"]
