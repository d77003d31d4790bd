"""`python -m tlstudio` / `tlstudio`: no arguments opens the app; subcommands run the CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("gui", "--project") or argv[0].endswith(".tlsproj"):
        from tlstudio.gui.app import run_app

        return run_app(argv[1:] if argv and argv[0] == "gui" else argv)
    from tlstudio.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
