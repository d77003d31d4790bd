"""Save a PNG of every panel with the sample data loaded: ``python -m tlstudio.gui.screenshots OUT_DIR``.

Runs offscreen (QT_QPA_PLATFORM=offscreen is set when no display is given). The window is
driven as a user would: sample data opened, the default backbone chosen, then each step shown
and grabbed. Before that a short real run (4 epochs, head only, on the sample) is trained through
the Train panel, evaluated and used for a few predictions, so every panel has content.
``--run RUN_DIR`` uses an earlier run instead; ``--no-train`` skips it.

``--kind multitask|anomaly|adaptation|semisupervised|all`` drives the window through another kind
of learning (``screenshots_kinds``: generated data, the kind's own job, ``OUT/<kind>-<n>-<step>.png``);
``all`` is classification and then every other kind. ``--tiny`` uses a tiny random model (tests).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAX_BYTES = 300_000


def _wait(app: Any, cond, timeout: float) -> bool:  # noqa: ANN001
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        app.processEvents()
        if cond():
            return True
        time.sleep(0.02)
    return False


def _save(widget: Any, path: Path) -> Path:
    """Grab and save; shrink (in steps) if the PNG would exceed MAX_BYTES."""
    from PySide6.QtCore import Qt

    pm = widget.grab()
    scale = 1.0
    while True:
        img = pm if scale == 1.0 else pm.scaledToWidth(int(pm.width() * scale),
                                                       Qt.TransformationMode.SmoothTransformation)
        img.save(str(path), "PNG", 9)
        if path.stat().st_size <= MAX_BYTES or scale < 0.5:
            return path
        scale *= 0.85


def take_screenshots(out_dir: str | Path, run_dir: str | None = None, train: bool = True,
                     work_dir: str | Path | None = None) -> list[Path]:
    """The classification tour. Its run, ranking and window settings go to a temporary folder
    (``work_dir`` if given), not to the user's runs folder and saved settings."""
    with tempfile.TemporaryDirectory(prefix="tlstudio-shots-classification-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _tour(Path(out_dir), run_dir, train, work)


def _tour(out: Path, run_dir: str | None, train: bool, work: Path) -> list[Path]:
    from PySide6.QtCore import QSettings

    from tlstudio.gui.main_window import MainWindow
    from tlstudio.gui.panels.data_panel import sample_folder
    from tlstudio.gui.qt_app import make_app

    out.mkdir(parents=True, exist_ok=True)
    app = make_app()
    # a first start (no window size or settings of an earlier session), runs kept out of the user's folder
    win = MainWindow(settings=QSettings(str(work / "tlstudio.ini"), QSettings.Format.IniFormat))
    win.resize(1280, 800)
    win.show()
    win.ensure_panels()
    st = win.state
    st.runs_dir = str(work / "runs")
    data = win.panel("data")
    saved = [_save(win, out / "0-start.png")]
    data.open_folder(str(sample_folder()))
    _wait(app, lambda: st.scan_report is not None and not data.scanning, 60)
    model = win.panel("model")
    win.show_step("model")
    _wait(app, lambda: model.table_model.rowCount() > 0, 60)
    _wait(app, lambda: st.model is not None and bool(st.groups), 120)
    layers = win.panel("layers")
    if st.groups:
        layers.apply_preset("last:2")
    if run_dir:
        st.set_current_run(run_dir)
    elif train:  # a short real run through the Train panel so Train/Evaluate/Runs/Predict show content
        st.update_settings({"epochs": 4, "batch_size": 16})
        tp = win.panel("train")
        win.show_step("train")
        if tp.start():
            _wait(app, lambda: not win.runner.running, 600)
            _wait(app, lambda: False, 1.0)
        if st.current_run:
            win.panel("evaluate").load_run(st.current_run)
            _wait(app, lambda: not win.runner.running, 120)
            pp = win.panel("predict")
            report = st.scan_report
            paths = [s.path for s in report.samples[:: max(1, len(report.samples) // 6)]][:6]
            if pp.predict_paths(paths):
                _wait(app, lambda: not win.runner.running, 120)
    # the steps the sample's kind (classification) shows, named by their number in the sidebar
    for i, step in enumerate(win.sidebar.visible_steps()):
        win.show_step(step)
        if step == "data":  # let the visible thumbnails decode
            _wait(app, lambda: data.thumb_model.loader.pending() == 0, 10)
            _wait(app, lambda: False, 0.3)
        elif step == "runs":  # select the newest run so its curves are drawn
            runs = win.panel("runs")
            if st.current_run and hasattr(runs, "overlay"):
                runs.select_dirs([st.current_run])
                runs.overlay([st.current_run])
            _wait(app, lambda: False, 0.5)
        elif step == "layers":
            _wait(app, lambda: layers.memory_label.text() not in ("estimating…", "–"), 60)
        elif step == "rank" and train:  # rank the ticked candidates and the run just trained
            rank = win.panel("rank")
            _wait(app, lambda: rank.tree.topLevelItemCount() > 0, 30)
            rank.set_checked(rank.checked_specs() + [s for s in rank.all_specs() if str(s).startswith("run:")])
            rank.start()
            _wait(app, lambda: not win.runner.running, 600)
            _wait(app, lambda: False, 0.3)
        elif step == "export":  # export the run in every format so the results table is filled
            exp = win.panel("export")
            if st.current_run and hasattr(exp, "start_export"):
                exp.set_run(st.current_run)
                if exp.start_export():
                    _wait(app, lambda: not exp.exporting, 600)
            _wait(app, lambda: False, 0.3)
        else:
            _wait(app, lambda: False, 0.3)
        saved.append(_save(win, out / f"{i + 1}-{step}.png"))
    win.close()
    return saved


USAGE = ("usage: python -m tlstudio.gui.screenshots OUT_DIR [--run RUN_DIR | --no-train] "
         "[--kind classification|multitask|anomaly|adaptation|semisupervised|all] [--tiny]")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("--"):
        print(USAGE)
        return 2
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    run = argv[argv.index("--run") + 1] if "--run" in argv else None
    kind = argv[argv.index("--kind") + 1] if "--kind" in argv and argv.index("--kind") + 1 < len(argv) else "classification"
    from tlstudio.gui.screenshots_kinds import KINDS, take_kind_screenshots

    if kind not in ("classification", "all", *KINDS):
        print(f"unknown kind {kind!r}\n{USAGE}")
        return 2
    saved: list[Path] = []
    if kind in ("classification", "all"):
        saved += take_screenshots(argv[0], run, train="--no-train" not in argv)
    for k in KINDS if kind == "all" else (kind,) if kind in KINDS else ():
        saved += take_kind_screenshots(argv[0], k, tiny="--tiny" in argv)
    for p in saved:
        print(f"{p} {p.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
