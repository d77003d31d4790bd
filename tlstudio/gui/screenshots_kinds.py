"""The screenshot tool's other kinds of learning: ``python -m tlstudio.gui.screenshots OUT --kind K``.

For each kind a small data set is generated in a temporary folder (``screenshot_data``), the
real MainWindow is driven as a user would drive it (open the data, choose the kind in the Data
step's chooser or drop the unlabelled folder, run the kind's job through its panel's own button
with the panel's worker, wait for the end) and every step the kind shows is grabbed into
``OUT/<kind>-<n>-<step>.png`` (n = the step's number in the sidebar).

``tiny=True`` (tests): timm ``test_resnet`` with random weights at 32-64 px instead of the default
backbone with its ImageNet weights: the same clicks, a fraction of the time.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("multitask", "anomaly", "adaptation", "semisupervised")
TINY_MODEL = {"backbone": "test_resnet", "init": "scratch", "image_size": 32}


class Shooter:
    """One window, one kind: the helpers every driver uses."""

    def __init__(self, kind: str, out: Path, work: Path, tiny: bool) -> None:
        from PySide6.QtCore import QSettings

        from tlstudio.gui.main_window import MainWindow
        from tlstudio.gui.qt_app import make_app

        self.kind, self.out, self.work, self.tiny = kind, out, work, tiny
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.app = make_app()
        # a first start: no window size or train settings of an earlier session restored
        self.win = MainWindow(settings=QSettings(str(work / "tlstudio.ini"), QSettings.Format.IniFormat))
        self.win.resize(1280, 800)
        self.win.show()
        self.win.ensure_panels()
        self.st = self.win.state
        self.st.runs_dir = str(work / "runs")  # the runs of this session only (a project's runs folder)
        self.saved: list[Path] = []
        self.log: list[str] = []
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        """Progress on stderr: which step the tool is at (a slow machine shows where time goes)."""
        import sys

        print(f"[{self.kind} +{time.monotonic() - self.t0:.0f}s] {msg}", file=sys.stderr, flush=True)

    # --- waiting ------------------------------------------------------------------------------
    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        from tlstudio.gui.screenshots import _wait

        return _wait(self.app, cond, timeout)

    def settle(self, seconds: float = 0.3) -> None:
        self.wait(lambda: False, seconds)

    def run_job(self, start: Callable[[], Any], timeout: float = 900) -> bool:
        """Start a job in the window's runner and wait for its end."""
        runner = self.win.runner
        self.say(f"job: {getattr(start, '__qualname__', start)}")
        start()
        self.wait(lambda: runner.running, 5)
        ok = self.wait(lambda: not runner.running, timeout)
        self.settle(0.5)
        return ok

    # --- data step ----------------------------------------------------------------------------
    def open_data(self, path: Path) -> None:
        data = self.win.panel("data")
        self.say(f"open {path}")
        data.open_folder(str(path))
        self.wait(lambda: self.st.scan_report is not None and not data.scanning, 120)

    def choose_kind(self, kind: str) -> None:
        """Pick the kind in the Data step's "What do you want to do?" chooser."""
        combo = self.win.panel("data").kind_chooser.combo
        self.wait(lambda: combo.findData(kind) >= 0, 60)
        combo.setCurrentIndex(combo.findData(kind))
        self.settle(0.2)

    def use_model(self) -> None:
        """The Model step: the default backbone (tiny: test_resnet), built in the background."""
        if self.tiny:
            self.st.update_settings(dict(TINY_MODEL))
        model = self.win.panel("model")
        self.say("model step")
        self.win.show_step("model")
        self.wait(lambda: model.table_model.rowCount() > 0, 60)
        self.wait(lambda: self.st.model is not None and bool(self.st.groups), 180)

    # --- grabbing -----------------------------------------------------------------------------
    def grab_steps(self, before: dict[str, Callable[[], None]] | None = None) -> list[Path]:
        """Show every step of the kind and save it; ``before[step]()`` runs first (fill the page)."""
        before = before or {}
        for i, step in enumerate(self.win.sidebar.visible_steps()):
            self.win.show_step(step)
            self.say(f"step {step}")
            if step in before:
                before[step]()
            elif step == "data":
                data = self.win.panel("data")
                self.wait(lambda d=data: d.thumb_model.loader.pending() == 0, 10)
            elif step == "layers":
                lay = self.win.panel("layers")
                self.wait(lambda w=lay: w.memory_label.text() not in ("estimating…", "–"), 60)
            elif step == "runs":
                runs = self.win.panel("runs")
                if hasattr(runs, "refresh"):
                    runs.refresh()
                if self.st.current_run and hasattr(runs, "overlay"):
                    runs.select_dirs([self.st.current_run])
                    runs.overlay([self.st.current_run])
            elif step == "export":
                exp = self.win.panel("export")
                if self.st.current_run and hasattr(exp, "start_export"):
                    exp.set_run(self.st.current_run)
                    if exp.start_export():
                        self.wait(lambda e=exp: not e.exporting, 600)
            self.settle(0.4)
            self.saved.append(save_png(self.win, self.out / f"{self.kind}-{i + 1}-{step}.png"))
        return self.saved

    def close(self) -> None:
        self.win.runner.stop()
        self.win.runner.wait(30_000)
        self.win.close()
        self.settle(0.2)


def save_png(widget: Any, path: Path) -> Path:
    """Grab at full size; a PNG over MAX_BYTES (photos, heat maps) is first reduced to 256, 128 or 64 colours
    (text stays sharp), and only if still too big shrunk like the classification screenshots."""
    import io

    from PIL import Image
    from PySide6.QtCore import QBuffer, QIODevice

    from tlstudio.gui.screenshots import MAX_BYTES, _save

    pm = widget.grab()
    pm.save(str(path), "PNG", 9)
    if path.stat().st_size <= MAX_BYTES:
        return path
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    pm.toImage().save(buf, "PNG")
    img = Image.open(io.BytesIO(bytes(buf.data()))).convert("RGB")
    for colours in (256, 128, 64):
        img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES:
            return path
    return _save(widget, path)


def _sample_paths(folder: Path, n: int) -> list[str]:
    paths = sorted(str(p) for p in folder.rglob("*.png") if "_mask" not in p.name)
    return paths[:: max(1, len(paths) // n)][:n]


# --- the kinds --------------------------------------------------------------------------------------
def drive_multitask(s: Shooter) -> None:
    from tlstudio.gui.screenshot_data import make_multitask

    csv_path = make_multitask(s.work / "shapes_tasks")
    s.open_data(csv_path)
    table = s.win.panel("data").task_table
    s.wait(lambda: table.report is not None, 60)
    s.choose_kind("multitask")
    table.baseline.setChecked(True)  # "also train a separate model per task and compare"
    s.use_model()
    s.st.update_settings({"epochs": 8, "batch_size": 16})
    tp = s.win.panel("train")
    s.win.show_step("train")
    s.run_job(tp.start)
    mp = s.win.panel("mt_predict")

    def predict() -> None:
        mp.predict(_sample_paths(csv_path.parent, 6))
        s.wait(lambda: len(mp.rows) > 0, 120)

    def evaluate() -> None:
        ev = s.win.panel("mt_evaluate")
        if ev.again_btn.isEnabled():
            ev.again_btn.click()
            s.wait(lambda: ev.again_btn.isEnabled(), 120)

    def tasks_tab() -> None:  # the Data step's Tasks tab: the label columns the user trains
        data = s.win.panel("data")
        data.tabs.setCurrentWidget(table)

    s.grab_steps({"data": tasks_tab, "mt_predict": predict, "mt_evaluate": evaluate})


def drive_anomaly(s: Shooter) -> None:
    from tlstudio.gui.screenshot_data import make_anomaly

    data = make_anomaly(s.work / "woven_fabric")
    s.choose_kind("anomaly")
    s.open_data(data)
    s.choose_kind("anomaly")  # kept (the chooser marks it as suggested for this folder)
    fit = s.win.panel("anomaly_fit")
    s.win.show_step("anomaly_fit")
    if s.tiny:
        fit.backbone.setText("test_resnet")
        fit.set_init("scratch")
        fit.image_size.setValue(64)
    else:
        fit.image_size.setValue(128)  # 96 px images: 128 px input, a bank in seconds
    fit._settings_changed()
    s.wait(lambda: fit.last_plan is not None, 60)
    s.run_job(fit.fit_btn.click)
    ev = s.win.panel("anomaly_evaluate")
    pred = s.win.panel("anomaly_predict")

    def evaluate() -> None:
        ev.eval_btn.click()
        s.wait(lambda: ev.report is not None, 300)
        if ev.gallery.count() > 1:
            ev.gallery.setCurrentRow(0)

    def predict() -> None:
        pred.add_paths(_sample_paths(data / "test", 8))
        s.wait(lambda: len(pred.rows) > 0, 300)
        flagged = [i for i, r in enumerate(pred.rows) if r.get("raw_score") is not None
                   and pred.threshold is not None and r["raw_score"] > pred.threshold]
        pred.list.setCurrentRow(flagged[0] if flagged else 0)

    s.grab_steps({"anomaly_evaluate": evaluate, "anomaly_predict": predict})


def _unlabelled(s: Shooter, folder: Path, new_domain: bool, check: Path | None = None) -> None:
    """Drop the unlabelled folder on the Data step's second zone, say what it is, wait for the gap."""
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    zone = s.win.panel("data").unlabelled_zone
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    zone.drop.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                   Qt.KeyboardModifier.NoModifier))
    (zone.other if new_domain else zone.same).setChecked(True)
    if check is not None:
        zone.set_check_dir(str(check))
    s.say("measuring the domain gap")
    s.wait(lambda: zone.gap is not None or "Could not" in zone.gap_text.text(), 300)
    s.say(zone.gap_text.text()[:120])
    kind = "adaptation" if new_domain else "semisupervised"
    if zone.gap is not None and zone.kind() != kind:  # the measured gap suggested the other choice: the user keeps theirs
        s.log.append(f"domain gap {zone.gap.get('score')} suggested {zone.kind()}; set back to {kind}")
        (zone.other if new_domain else zone.same).setChecked(True)


def _adapt_common(s: Shooter, labelled: Path, unl: Path, new_domain: bool, check: Path | None) -> None:
    s.open_data(labelled)
    _unlabelled(s, unl, new_domain, check)
    s.use_model()
    s.st.update_settings({"epochs": 4, "batch_size": 16})
    ap = s.win.panel("adapt")
    s.win.show_step("adapt")
    s.run_job(ap.start_btn.click)
    ep, pp = s.win.panel("evaluate"), s.win.panel("predict")

    def evaluate() -> None:
        if s.st.current_run:
            ep.load_run(s.st.current_run)
            s.wait(lambda: not s.win.runner.running, 120)
            if ep.report is None and ep.evaluate():  # "Evaluate validation split"
                s.wait(lambda: ep.report is not None and not s.win.runner.running, 300)

    def predict() -> None:
        if s.st.current_run and pp.predict_paths(_sample_paths(unl, 6)):
            s.wait(lambda: bool(pp.predictions) and not s.win.runner.running, 300)

    def review() -> None:
        rq = s.win.panel("review")
        if rq.queue is not None:  # the user goes through the first proposals: A, A, R
            for what in ("accept", "accept", "reject"):
                rq.decide(what)

    s.grab_steps({"evaluate": evaluate, "predict": predict, "review": review})


def drive_adaptation(s: Shooter) -> None:
    from tlstudio.gui.screenshot_data import make_adaptation

    lab, target, check = make_adaptation(s.work / "cameras")
    _adapt_common(s, lab, target, True, check)


def drive_semisupervised(s: Shooter) -> None:
    from tlstudio.gui.screenshot_data import make_semisupervised

    lab, unl = make_semisupervised(s.work / "shapes_few_labels")
    _adapt_common(s, lab, unl, False, None)


DRIVERS: dict[str, Callable[[Shooter], None]] = {
    "multitask": drive_multitask, "anomaly": drive_anomaly,
    "adaptation": drive_adaptation, "semisupervised": drive_semisupervised,
}


def take_kind_screenshots(out_dir: str | Path, kind: str, tiny: bool = False,
                          work_dir: str | Path | None = None) -> list[Path]:
    """Drive the window through ``kind`` and save ``OUT/<kind>-<n>-<step>.png`` for each of its steps."""
    if kind not in DRIVERS:
        raise ValueError(f"no screenshot driver for {kind!r}; kinds: {', '.join(KINDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"tlstudio-shots-{kind}-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        s = Shooter(kind, out, work, tiny)
        try:
            DRIVERS[kind](s)
        finally:
            s.close()
        for line in s.log:
            print(f"{kind}: {line}")
        print(f"{kind}: {len(s.saved)} screenshots in {time.monotonic() - t0:.0f} s")
        return s.saved
