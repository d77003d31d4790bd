"""The QApplication with TL Studio's name, style and style sheet.

Kept apart from ``app`` (which opens the main window) so a panel's stand-alone preview
(``python -m tlstudio.gui.panels.data_panel``) needs no import of the window: no cycle between
the app and the panels it shows.
"""

from __future__ import annotations

import sys
from typing import Any


def make_app(argv: list[str] | None = None) -> Any:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "tlstudio", *(argv or [])])
    app.setApplicationName("TL Studio")
    app.setOrganizationName("TLStudio")
    app.setStyle("Fusion")
    from tlstudio.core.paths import resources_dir

    qss = resources_dir() / "style.qss"
    if qss.is_file():
        try:
            app.setStyleSheet(qss.read_text(encoding="utf-8"))
        except OSError:
            pass
    return app
