"""ExportPanel: a real export of a tiny run through the worker, the results table, and the
"Run elsewhere" commands (config path, torchrun spin boxes, clipboard, save config)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from tests.core.test_evaluate import make_run
from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.gui.panels.export_panel import OPEN_FOLDER_ITEM, ExportPanel, human_size, rerun_commands
from tlstudio.gui.state import STEPS, AppState


@pytest.fixture(scope="module", autouse=True)
def _torch_imported():
    """Jobs import torch/timm first (serialised with the preload): once, before the timed waits."""
    from tlstudio.gui.heavy import ensure_imported

    ensure_imported()


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A finished run (tiny timm model trained a few steps) inside a runs folder, without the engine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("export_gui")
    data = make_synthetic_folder(tmp / "data", per_class=8, size=48, easy=True)
    run = tmp / "runs" / "20260101-000000-test_resnet"
    make_run(run, data, steps=4)
    torch.set_num_threads(n)
    return run, data


def _panel(qtbot, runs_dir: Path, current: str | None = None) -> ExportPanel:
    state = AppState()
    state.runs_dir = str(runs_dir)
    state.current_run = current
    p = ExportPanel(state)
    qtbot.addWidget(p)
    p.resize(1150, 760)
    p.show()
    return p


def test_run_picker_defaults_and_commands(qtbot, run_folder, tmp_path, monkeypatch):
    run, data = run_folder
    p = _panel(qtbot, run.parent)
    # the only run of the runs folder is picked, with "Open run folder…" after it
    assert p.run_dir == str(run)
    assert [p.run_combo.itemText(i) for i in range(p.run_combo.count())] == [run.name, OPEN_FOLDER_ITEM]
    assert p.out_edit.text() == str(run / "export")
    assert "test_resnet" in p.run_label.text() and "3 classes" in p.run_label.text()
    cfg = run / "config.json"
    assert p.config_label.text() == str(cfg)
    assert p.data_edit.text() == str(data)

    # headless and single-node torchrun commands name the run's config and the data
    p.nproc_spin.setValue(4)
    text = p.command_text.toPlainText()
    headless, cluster = p.commands()
    assert headless in text and cluster in text
    assert headless.startswith("tlstudio train ")
    assert f"--config {shlex.quote(str(cfg))}" in headless and shlex.quote(str(data)) in headless
    assert cluster.startswith("torchrun --nproc_per_node=4 -m tlstudio train ")
    assert "--nnodes" not in cluster and not p.master_edit.isEnabled()
    # multi-node: the spin box and master address go into the command
    p.nnodes_spin.setValue(3)
    p.master_edit.setText("node-a.cluster")
    _, cluster = p.commands()
    assert ("torchrun --nproc_per_node=4 --nnodes=3 --node_rank=$NODE_RANK --master_addr=node-a.cluster "
            "--master_port=29500 -m tlstudio train") in cluster
    assert cluster in p.command_text.toPlainText() and "NODE_RANK=0 on node-a.cluster" in p.command_text.toPlainText()
    assert f"--config {shlex.quote(str(cfg))}" in cluster and f"--out {shlex.quote(p.new_run_edit.text())}" in cluster
    # the command parses as the real CLI: positional data, --config, --out
    from tlstudio.cli import build_parser

    args = build_parser().parse_args(shlex.split(headless)[1:])
    assert args.dir == str(data) and args.config == str(cfg) and args.out == p.new_run_edit.text()

    # Copy puts exactly the shown text on the clipboard
    copied = p.copy_commands()
    assert QApplication.clipboard().text() == copied == p.command_text.toPlainText()
    # Save config as… copies config.json
    dest = p.save_config_to(tmp_path / "cfg-copy.json")
    assert json.loads(dest.read_text()) == json.loads(cfg.read_text())

    # "Open run folder…" picks any run folder on disk (the dialog answers with one)
    from PySide6.QtWidgets import QFileDialog

    from tests.gui.test_runs_panel import make_fake_run

    other = make_fake_run(tmp_path / "elsewhere", "other_run", backbone="resnet10t")
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(other))
    p.run_combo.activated.emit(p.run_combo.findText(OPEN_FOLDER_ITEM))
    assert p.run_dir == str(other) and p.run_combo.currentData() == str(other)
    assert p.out_edit.text() == str(other / "export") and "resnet10t" in p.run_label.text()
    assert p.config_label.text() == "no config.json in this run" and not p.copy_btn.isEnabled()
    p.set_run(str(run))
    # a folder that is not a run is refused, the selection stays
    assert not p.set_run(str(tmp_path))
    assert p.run_dir == str(run) and "not a TL Studio run" in p.summary.text()


def test_rerun_commands_quote_paths():
    h, c = rerun_commands("/a b/config.json", "/data dir", "/out", nproc=2, nnodes=1)
    assert h == "tlstudio train '/data dir' --config '/a b/config.json' --out /out"
    assert c == "torchrun --nproc_per_node=2 -m tlstudio train '/data dir' --config '/a b/config.json' --out /out"
    assert human_size(2048) == "2.0 KB" and human_size(None) == "–"


def test_export_safetensors_and_onnx_through_the_worker(qtbot, run_folder, tmp_path):
    run, _ = run_folder
    p = _panel(qtbot, tmp_path / "no_runs_here", current=str(run))
    assert p.run_dir == str(run)  # state.current_run wins, even outside the runs folder
    out = tmp_path / "exported"
    p.out_edit.setText(str(out))
    p._out_edited = True
    p.set_formats(["safetensors", "onnx"])
    messages: list[str] = []
    p._progress.message.connect(lambda m, i, n: messages.append(m))
    with qtbot.waitSignal(p.export_finished, timeout=240_000) as blocker:
        assert p.start_export()
        assert not p.export_btn.isEnabled() and not p.start_export()  # one export at a time
    report = blocker.args[0]
    assert not isinstance(report, BaseException), report
    assert report.ok, report.errors
    assert "exporting safetensors" in messages and "exporting onnx" in messages
    assert p.progress.format() == "done" and p.export_btn.isEnabled()
    # table: safetensors, onnx, model card with the real files, sizes and the ONNX check
    rows = {p.table.item(i, 0).text(): [p.table.item(i, j).text() for j in range(4)]
            for i in range(p.table.rowCount())}
    assert set(rows) == {"safetensors (timm)", "ONNX", "model card"}
    st, onnx = out / "model.safetensors", out / "model.onnx"
    assert st.is_file() and onnx.is_file() and (out / "MODEL_CARD.md").is_file()
    assert not (out / "model.torchscript.pt").exists() and not (out / "model.int8.onnx").exists()
    assert rows["safetensors (timm)"][1] == "model.safetensors"
    assert rows["safetensors (timm)"][2] == human_size(st.stat().st_size)
    assert rows["ONNX"][1] == "model.onnx" and rows["ONNX"][2] == human_size(onnx.stat().st_size)
    diff = report.formats["onnx"]["max_abs_diff"]
    assert diff < 1e-4
    assert rows["ONNX"][3] == f"max abs diff vs PyTorch {diff:.1e}"
    assert rows["model card"][1] == "MODEL_CARD.md"
    assert p.open_folder_btn.isEnabled() and p.open_card_btn.isEnabled()
    assert p.state.step_status.get("export") == "done"
    assert "safetensors, onnx" in p.summary.text()


def test_export_step_in_main_window_and_screenshot(qtbot, run_folder, tmp_path):
    """The Export step of the window; an int8 export shows accuracy/latency next to fp32; the window
    grabs as a PNG under the screenshot size limit (docs/screenshots/10-export.png comes from
    `python -m tlstudio.gui.screenshots`)."""
    from PySide6.QtCore import QSettings

    from tlstudio.gui.main_window import MainWindow
    from tlstudio.gui.screenshots import MAX_BYTES, _save

    run, _ = run_folder
    state = AppState()
    state.runs_dir = str(run.parent)
    win = MainWindow(state, settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    assert STEPS[-1] == "export" and win.stack.count() == len(STEPS)
    win.show_step(STEPS.index("export"))
    p = win.panel("export")
    assert isinstance(p, ExportPanel) and win.stack.widget(STEPS.index("export")).isAncestorOf(p)
    state.set_current_run(str(run))
    assert p.run_dir == str(run)
    p.out_edit.setText(str(tmp_path / "ex"))
    p._out_edited = True
    p.set_formats(["onnx", "int8"])
    with qtbot.waitSignal(p.export_finished, timeout=240_000) as blocker:
        assert p.start_export()
    report = blocker.args[0]
    assert not isinstance(report, BaseException), report
    assert "int8" in report.formats, report.errors
    rows = {p.table.item(i, 0).text(): p.table.item(i, 3).text() for i in range(p.table.rowCount())}
    cmp = report.int8
    assert rows["int8 (quantized ONNX)"].startswith(f"accuracy {100 * cmp['int8_onnx']['accuracy']:.1f}% vs fp32 "
                                                   f"{100 * cmp['fp32_onnx']['accuracy']:.1f}%")
    assert f"{cmp['int8_onnx']['latency_ms']:.1f} ms" in rows["int8 (quantized ONNX)"]
    qtbot.wait(100)
    shot = _save(win, tmp_path / "9-export.png")
    assert 0 < shot.stat().st_size <= MAX_BYTES


def test_headless_command_runs_the_same_training(qtbot, tmp_path):
    """The shown `tlstudio train DATA --config RUN/config.json --out NEW_RUN` really trains (a
    scratch tiny model, 1 epoch, so it needs no weights) and the new run keeps the config."""
    import subprocess
    import sys

    from tlstudio.core.runs.folder import read_run

    data = make_synthetic_folder(tmp_path / "data", per_class=6, size=32, easy=True)
    run = tmp_path / "runs" / "r0"
    make_run(run, data, image_size=32, steps=1)
    cfg = {"data_dir": str(data), "backbone": "test_resnet", "init": "scratch", "image_size": 32, "epochs": 1,
           "batch_size": 8, "freeze": "none", "baseline": False, "seed": 3, "augment": "none"}
    (run / "config.json").write_text(json.dumps(cfg))
    p = _panel(qtbot, run.parent)
    headless, _ = p.commands()
    argv = shlex.split(headless)
    assert argv[0] == "tlstudio"
    proc = subprocess.run([sys.executable, "-m", "tlstudio", *argv[1:]], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = Path(p.new_run_edit.text())
    info = read_run(new)
    assert info.status == "finished" and info.epochs_done == 1
    assert info.config["backbone"] == "test_resnet" and info.config["seed"] == 3 and info.config["image_size"] == 32


def test_errors_are_shown_per_format_and_a_broken_run_fails_cleanly(qtbot, tmp_path):
    from tests.gui.test_runs_panel import make_fake_run
    from tlstudio.core.export.formats import ExportReport

    run = make_fake_run(tmp_path / "runs", "broken")  # its weights file is not a weights file
    p = _panel(qtbot, run.parent)
    assert p.run_dir == str(run)
    with qtbot.waitSignal(p.export_finished, timeout=120_000) as blocker:
        assert p.start_export()
        assert not p.run_combo.isEnabled() and not p.format_checks["onnx"].isEnabled()
    assert isinstance(blocker.args[0], BaseException)
    assert "Export failed" in p.summary.text() and p.progress.format() == "failed"
    assert p.export_btn.isEnabled() and p.run_combo.isEnabled()
    assert p.state.step_status.get("export") == "attention"
    # a report where one format failed: its row is red with the reason, the others are listed
    st = tmp_path / "m.safetensors"
    st.write_bytes(b"x" * 3000)
    report = ExportReport(run_dir=str(run), out_dir=str(tmp_path),
                          formats={"safetensors": {"path": str(st), "bytes": 3000}},
                          errors={"onnx": "model.onnx: onnxruntime differs from PyTorch by 3.0e-02"})
    p.show_report(report)
    rows = [[p.table.item(i, j).text() for j in range(4)] for i in range(p.table.rowCount())]
    assert rows == [["safetensors (timm)", "m.safetensors", "2.9 KB", "timm state dict + config.json"],
                    ["ONNX", "–", "–", "failed: model.onnx: onnxruntime differs from PyTorch by 3.0e-02"]]
    assert p.table.item(1, 3).foreground().color().name() == "#b00020"
    assert "Failed: onnx" in p.summary.text() and not p.open_card_btn.isEnabled()
