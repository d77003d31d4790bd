"""The screenshot tool's other kinds: the real window driven through anomaly detection (tiny random
model, generated MVTec-like data), one PNG per step, each page showing the job's result."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tlstudio.gui import screenshots
from tlstudio.gui.screenshots_kinds import Shooter, drive_anomaly


def _not_flat(path) -> bool:
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return a.std() > 8 and len(np.unique(a.reshape(-1, 3)[::7], axis=0)) > 50


def test_anomaly_steps_are_grabbed_with_their_results(qtbot, tmp_path, monkeypatch):
    from tlstudio.gui.widgets import error_dialog

    errors: list = []
    monkeypatch.setattr(error_dialog, "CAPTURE", errors)  # an error dialog fails the test, never blocks it
    out = tmp_path / "shots"
    s = Shooter("anomaly", out, tmp_path / "work", tiny=True)
    try:
        drive_anomaly(s)
        steps = s.win.sidebar.visible_steps()
        assert steps[:4] == ["data", "anomaly_fit", "anomaly_evaluate", "anomaly_predict"]
        # one PNG per step, named by its number in the sidebar, small and not one flat colour
        assert [p.name for p in s.saved] == [f"anomaly-{i + 1}-{st}.png" for i, st in enumerate(steps)]
        for p in s.saved:
            assert p.is_file() and 0 < p.stat().st_size <= screenshots.MAX_BYTES, p
            assert _not_flat(p), p
        st = s.st
        assert st.task_kind == "anomaly" and st.current_run  # the fit ran through the Fit panel
        fit = s.win.panel("anomaly_fit")
        assert "AUROC" in fit.summary.text() and "Saved" in fit.status.text()
        ev = s.win.panel("anomaly_evaluate")
        assert ev.report is not None  # the Evaluate button's job ran
        auroc = ev.report["metrics"]["image_auroc"]
        assert auroc is not None and f"{auroc:.3f}" in ev.m_auroc.text()
        assert ev.gallery.count() == ev.report["n"] and ev.overlay.heatmap() is not None
        pred = s.win.panel("anomaly_predict")
        assert len(pred.rows) == 8 and all(r.get("raw_score") is not None for r in pred.rows)
        assert "of 8 images flagged" in pred.counts.text()
        assert not errors, errors
    finally:
        s.close()


def test_main_refuses_an_unknown_kind(capsys):
    assert screenshots.main(["/tmp/x", "--kind", "nonsense"]) == 2
    assert "unknown kind 'nonsense'" in capsys.readouterr().out
    assert screenshots.main([]) == 2


@pytest.mark.parametrize("kind", ["multitask", "adaptation", "semisupervised"])
def test_every_kind_has_a_driver_and_data(kind, tmp_path):
    """The other drivers' data (the drivers themselves run in ``make screenshots``: minutes)."""
    from tlstudio.core.data.dataset import scan
    from tlstudio.gui import screenshot_data as sd
    from tlstudio.gui.screenshots_kinds import DRIVERS

    assert kind in DRIVERS
    if kind == "multitask":
        from tlstudio.core.data.multitask import is_multitask_data, scan_multitask

        csv_path = sd.make_multitask(tmp_path / "mt", n=16)
        assert is_multitask_data(str(csv_path))
        assert [t.name for t in scan_multitask(str(csv_path)).tasks] == ["object", "colour", "noise"]
    else:
        make = sd.make_adaptation if kind == "adaptation" else sd.make_semisupervised
        lab, unl, *_ = make(tmp_path / kind)
        assert len(scan(lab).classes) == 3
        assert len(list(unl.glob("*.png"))) > len(scan(lab).samples) // 2
