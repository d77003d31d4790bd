"""Issue 17 item 16: quitting does not wait for disposable background work, the last data folder
is reopened on launch, and the model card opens inside the app when no viewer is installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from PySide6.QtCore import QSettings, QThreadPool

from tlstudio.gui import app as app_module
from tlstudio.gui.main_window import MainWindow


def test_quit_does_not_wait_for_background_work(tmp_path):
    """A model build waiting 30 s for torch kept the process alive after the window closed."""
    code = textwrap.dedent(f"""
        import os, sys, time
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        os.environ["TLSTUDIO_HOME"] = {str(tmp_path)!r}
        from PySide6.QtCore import QSettings, QTimer
        from tlstudio.gui.app import leave, make_app
        from tlstudio.gui.main_window import MainWindow
        from tlstudio.gui.workers import start_worker
        app = make_app()
        win = MainWindow(settings=QSettings({str(tmp_path / "s.ini")!r}, QSettings.Format.IniFormat))
        win.show()
        start_worker(win, time.sleep, 30)  # stands for a build waiting on a first torch import
        QTimer.singleShot(300, win.close)
        app.exec()
        print("closed", time.time(), flush=True)
        sys.exit(leave(0))
    """)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    end = time.time()
    assert out.returncode == 0, out.stderr[-2000:]
    closed = float(out.stdout.split("closed")[1].split()[0])
    assert end - closed < 5.0, f"{end - closed:.1f} s from close to exit"
    assert end - t0 < 25  # never the 30 s of the sleeping job


def test_last_data_folder_is_reopened_on_launch(qtbot, tmp_path, shapes3, monkeypatch):
    ini = str(tmp_path / "tlstudio.ini")
    first = MainWindow(settings=QSettings(ini, QSettings.Format.IniFormat))
    qtbot.addWidget(first)
    with qtbot.waitSignal(first.panel("data").scan_finished, timeout=30_000):
        first.open_folder(str(shapes3))
    first.close()  # saves last_data_dir
    QThreadPool.globalInstance().waitForDone(30_000)

    # run_app opens the window and, with no folder/project argument, reopens the last one
    wins: list[MainWindow] = []

    class Win(MainWindow):
        def __init__(self) -> None:
            super().__init__(settings=QSettings(ini, QSettings.Format.IniFormat))
            qtbot.addWidget(self)
            wins.append(self)

    monkeypatch.setattr("tlstudio.gui.main_window.MainWindow", Win)
    monkeypatch.setattr(app_module, "leave", lambda rc, grace_ms=0: rc)
    monkeypatch.setattr(app_module, "setup_logging", lambda: "")
    monkeypatch.setattr(app_module, "install_excepthook", lambda: None)
    from PySide6.QtWidgets import QApplication

    monkeypatch.setattr(QApplication, "exec", lambda self=None: 0)
    assert app_module.run_app([]) == 0
    data = wins[0].panel("data")
    qtbot.waitUntil(lambda: wins[0].state.scan_report is not None, timeout=30_000)
    assert wins[0].state.data_dir == str(shapes3.resolve()) or wins[0].state.data_dir == str(shapes3)
    data.stop_scan()
    QThreadPool.globalInstance().waitForDone(30_000)


def test_a_missing_last_folder_is_not_reopened(qtbot, tmp_path):
    s = QSettings(str(tmp_path / "x.ini"), QSettings.Format.IniFormat)
    s.setValue("last_data_dir", str(tmp_path / "gone"))
    w = MainWindow(settings=s)
    qtbot.addWidget(w)
    assert w.reopen_last_folder() is False and not w.panel("data").scanning


def test_model_card_opens_in_the_app_without_a_viewer(qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QDesktopServices, QImage

    from tlstudio.gui.widgets.text_dialog import DocumentDialog, open_document

    QImage(20, 10, QImage.Format.Format_RGB32).save(str(tmp_path / "curves.png"))
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card\n\nAccuracy **91.0%** on 120 images.\n\n![curves](curves.png)\n")
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)  # no program for .md
    dlg = open_document(card)
    assert isinstance(dlg, DocumentDialog)
    qtbot.addWidget(dlg)
    assert dlg.isVisible() and dlg.windowTitle() == "MODEL_CARD.md"
    assert "Model card" in dlg.text() and "Accuracy 91.0% on 120 images." in dlg.text()
    assert "<img" in dlg.browser.toHtml()
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: True)  # a viewer exists: no dialog
    assert open_document(card) is None
