"""`python -m tlstudio` / `tlstudio`: no arguments opens the app; subcommands run the CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    import multiprocessing

    multiprocessing.freeze_support()  # the packaged (frozen) app may start worker processes
    import os

    gui = not argv or argv[0] in ("gui", "--project", "--sample") or argv[0].endswith(".tlsproj") \
        or os.path.isdir(argv[0])  # `tlstudio FOLDER` opens the app on that folder
    if gui:
        from tlstudio.gui.app import run_app

        return run_app(argv[1:] if argv and argv[0] == "gui" else argv)
    from tlstudio.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
