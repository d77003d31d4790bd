"""A document shown inside the app: a Markdown (or plain text) file in a read-only, scrollable,
searchable-by-selection viewer, with its images (relative paths) and a "Show folder" button.

Used when the desktop has no program for the file type (``QDesktopServices.openUrl`` says no):
the user still sees the model card instead of nothing.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPushButton, QTextBrowser, QVBoxLayout, QWidget


class DocumentDialog(QDialog):
    def __init__(self, path: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.path = Path(path)
        self.setWindowTitle(self.path.name)
        self.setObjectName("documentDialog")
        self.browser = QTextBrowser()
        self.browser.setAccessibleName(self.path.name)
        self.browser.setOpenExternalLinks(True)
        self.browser.setSearchPaths([str(self.path.parent)])  # the card's plots (relative links)
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            text = f"Cannot read {self.path}: {exc}"
        if self.path.suffix.lower() in (".md", ".markdown"):
            self.browser.setMarkdown(text)
        else:
            self.browser.setPlainText(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        folder = QPushButton("Show folder")
        folder.setToolTip(str(self.path.parent))
        folder.clicked.connect(lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.path.parent))))
        buttons.addButton(folder, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.rejected.connect(self.close)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser, 1)
        lay.addWidget(buttons)
        self.resize(820, 640)

    def text(self) -> str:
        return self.browser.toPlainText()


def open_document(path: str | Path, parent: QWidget | None = None) -> QDialog | None:
    """Open ``path`` with the desktop's program; if there is none, show it in a DocumentDialog
    (returned, non-modal). None when the desktop opened it."""
    if QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
        return None
    dlg = DocumentDialog(path, parent)
    dlg.show()
    return dlg
