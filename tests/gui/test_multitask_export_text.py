"""The Export step's run line for a multi-task run: its tasks (not "3 classes") and its mean task
score (not "val acc")."""

from __future__ import annotations

from tlstudio.core.runs import folder as runs
from tlstudio.gui.panels.export_text import outputs_text, run_line

SCHEMA = {"tasks": [{"name": "object", "type": "categorical", "classes": ["a", "b", "c", "d"]},
                    {"name": "tags", "type": "multilabel", "classes": ["x", "y", "z", "u", "v"]},
                    {"name": "size", "type": "numeric", "classes": [], "mean": 2.0, "std": 1.0}]}


def _info(**kw) -> runs.RunInfo:
    spec = runs.ModelSpec(backbone="tf_efficientnet_lite0", num_classes=3, classes=["object", "tags", "size"],
                          image_size=224)
    return runs.RunInfo(config={}, model=spec, status="finished", **kw)


def test_outputs_text_lists_the_tasks_of_a_multitask_run():
    assert outputs_text("multitask", 3, SCHEMA) == "3 tasks (object: 4 classes, tags: 5 labels, size: numeric)"
    assert outputs_text("classification", 3, None) == "3 classes"
    assert outputs_text("multitask", 3, None) == "3 classes"  # an old run without a schema: as before


def test_run_line_names_the_mean_task_score(qtbot, tmp_path):
    info = _info(task="multitask", label_schema=SCHEMA, best_val_acc=0.917, best_epoch=3,
                 metrics={"val_score": 0.9167, "val_acc": 0.917}, best_metric="val_score")
    line = run_line("multitask", info)
    assert line == ("tf_efficientnet_lite0, 3 tasks (object: 4 classes, tags: 5 labels, size: numeric), 224 px, "
                    "best mean task score 0.917")
    plain = _info(best_val_acc=0.917, metrics={"val_acc": 0.917})
    assert run_line("classification", plain) == "tf_efficientnet_lite0, 3 classes, 224 px, best val acc 91.7%"
    # the Export panel shows it for a multi-task run folder
    from tlstudio.gui.panels.export_panel import ExportPanel
    from tlstudio.gui.state import AppState

    run = tmp_path / "runs" / "20260101-000000-mt"
    run.mkdir(parents=True)
    runs.write_run(run, info)
    state = AppState()
    state.runs_dir = str(run.parent)
    p = ExportPanel(state)
    qtbot.addWidget(p)
    p.resize(1000, 700)
    p.show()
    assert p.set_run(str(run)) is not False
    assert p.run_label.text() == line, p.run_label.text()
    assert p.minimumSizeHint().width() <= 1024  # the long line wraps instead of widening the window
    p.grab().save(str(tmp_path / "export.png"))
    print(tmp_path / "export.png")
