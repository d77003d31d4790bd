"""Errors shown to the user: a short message, the technical detail behind a button, logged.

UserError messages are shown as they are (they name the file and the problem); anything else
is an unexpected error: the message says so and the traceback goes behind "Show Details...".
"""

from __future__ import annotations

import logging

from PySide6.QtWidgets import QMessageBox, QWidget

log = logging.getLogger("tlstudio.gui")

#: Tests set this to a list to collect dialogs instead of showing modal boxes.
CAPTURE: list[tuple[str, str, str]] | None = None


def show_error(parent: QWidget | None, title: str, message: str, details: str = "", *, modal: bool = True) -> None:
    log.error("%s: %s%s", title, message, ("\n" + details) if details else "")
    if CAPTURE is not None:
        CAPTURE.append((title, message, details))
        return
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Warning)
    box.setWindowTitle(title)
    box.setText(message)
    if details:
        box.setDetailedText(details)  # QMessageBox shows it behind a "Show Details..." button
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    if modal:
        box.exec()
    else:
        box.setModal(False)
        box.show()


def show_exception(parent: QWidget | None, title: str, exc: BaseException) -> None:
    """Show an exception: UserErrors plainly, others with their traceback as the detail."""
    import traceback

    from tlstudio.core.errors import UserError

    if isinstance(exc, UserError):
        show_error(parent, title, str(exc))
        return
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    show_error(parent, title, f"Unexpected error: {type(exc).__name__}: {exc}", details)
