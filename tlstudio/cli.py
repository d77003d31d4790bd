"""The command line: the same engine as the GUI, printed as text or JSON. No Qt here."""

from __future__ import annotations

import argparse
import sys

# Modules that add subcommands: each defines register(subparsers) and sets a `func` default.
_PLUGINS = ("tlstudio.cli_distill", "tlstudio.cli_export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlstudio", description="No-code transfer learning on images.")
    sub = p.add_subparsers(dest="command", required=True)
    from importlib import import_module

    for name in _PLUGINS:
        try:
            mod = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
