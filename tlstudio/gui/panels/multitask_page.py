"""What the multi-task Evaluate and Predict steps share: the page frame (a title row with the
page's buttons, a status line, a scrolling body) and running a job on the current run in a
worker thread (or at once, for tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget


def page_frame(page: QWidget, title: str, buttons: list[QPushButton], status: str) -> tuple[QLabel, QLabel, QVBoxLayout]:
    """Lay out ``page``: title and buttons on one row, a word-wrapped status line, then a
    scrolling body. Returns (title label, status label, the body's layout)."""
    outer = QVBoxLayout(page)
    head = QHBoxLayout()
    title_label = QLabel(f"<h3>{title}</h3>")
    head.addWidget(title_label, 1)
    for b in buttons:
        head.addWidget(b)
    outer.addLayout(head)
    status_label = QLabel(status)
    status_label.setWordWrap(True)
    outer.addWidget(status_label)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    holder = QWidget()
    body = QVBoxLayout(holder)
    scroll.setWidget(holder)
    outer.addWidget(scroll, 1)
    return title_label, status_label, body


def run_job(owner: QWidget, job: Callable[[], Any], done: Callable[[Any], Any],
            failed: Callable[[BaseException], Any], wait: bool = False) -> None:
    """``done(job())`` in a worker thread (``failed(exc)`` on an error); ``wait``: right here."""
    if wait:
        done(job())
        return
    from tlstudio.gui.heavy import needing_torch
    from tlstudio.gui.workers import start_worker

    start_worker(owner, needing_torch(job), returned=done, errored=failed)
