"""The command line: one module per command family, all over the Qt-free engine."""

from tlstudio.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
