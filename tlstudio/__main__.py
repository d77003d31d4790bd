"""`python -m tlstudio` / `tlstudio`: no arguments opens the app; subcommands run the CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import multiprocessing

    multiprocessing.freeze_support()  # the packaged (frozen) app may start worker processes
    import os

    first = argv[0] if argv else ""
    gui = not argv or first in ("gui", "--project", "--sample") or first.endswith((".tlsproj", ".zip")) \
        or (os.path.isdir(first) and first not in _commands())  # `tlstudio FOLDER`
    if gui:
        from tlstudio.gui.app import run_app

        return run_app(argv[1:] if argv and argv[0] == "gui" else argv)
    from tlstudio.cli import main as cli_main

    return cli_main(argv)


def _commands() -> set[str]:
    """The CLI's subcommand names (a folder with such a name is still a command)."""
    from tlstudio.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices)


if __name__ == "__main__":
    sys.exit(main())
