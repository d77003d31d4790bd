"""A run folder written by the previous version (run.json schema 1) still opens everywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tlstudio.core.runs import folder as runs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run_v1"


@pytest.fixture
def old_run(tmp_path):
    """The first-wave run folder, with test_resnet weights written as that version wrote them."""
    import timm

    from tlstudio.core.atomic import atomic_save_safetensors

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    raw = json.loads((run / runs.RUN_JSON).read_text(encoding="utf-8"))
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    atomic_save_safetensors(run / runs.BEST_WEIGHTS, model.state_dict(),
                            metadata={"tlstudio_model": json.dumps(raw["model"])})
    return run


def test_schema_1_run_json_reads_as_classification_with_a_metrics_dict(old_run):
    raw = json.loads((old_run / runs.RUN_JSON).read_text(encoding="utf-8"))
    assert raw["schema_version"] == 1 and "task" not in raw and "metrics" not in raw
    info = runs.read_run(old_run)
    assert info.task == "classification" and info.kind == "train"
    assert info.metrics == {"val_acc": raw["best_val_acc"], "val_macro_f1": raw["best_val_macro_f1"]}
    assert info.model.classes == ["circle", "square"]
    from tlstudio.core.tasks.registry import kind_of_run

    assert kind_of_run(old_run).kind == "classification"
    # written back as schema 2, and read again the same
    runs.write_run(old_run, info)
    again = json.loads((old_run / runs.RUN_JSON).read_text(encoding="utf-8"))
    assert again["schema_version"] == 2 and again["task"] == "classification"
    assert runs.read_run(old_run).metrics == info.metrics


def test_old_history_split_and_config_still_read(old_run):
    from tlstudio.core.config import TrainConfig

    hist = runs.read_history(old_run)
    assert [r["epoch"] for r in hist] == [1.0, 2.0] and {"val_acc", "val_loss", "val_macro_f1"} <= set(hist[0])
    split = runs.read_split(old_run)  # schema 1 rows: [path, label]
    assert split.train and split.val and all(s.targets is None and s.domain is None for s in split.train)
    cfg = TrainConfig.from_json_file(old_run / runs.CONFIG_JSON)  # no "task" key: a classification config
    assert cfg.task == "classification" and cfg.backbone == "test_resnet"


def test_old_run_evaluates_predicts_and_lists(old_run, tmp_path, capsys):
    from tlstudio.cli.main import main
    from tlstudio.core.data.synthetic import make_synthetic_folder

    data = make_synthetic_folder(tmp_path / "d", classes=("circle", "square"), per_class=3, size=32, easy=True)
    assert main(["eval", str(old_run), str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 6 and set(out["metrics"]) >= {"accuracy", "macro_f1"}
    assert main(["predict", str(old_run), str(data / "circle"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["error"] is None and len(r["top"]) == 2 for r in rows)
    assert main(["runs", "show", str(old_run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "classification" in json.dumps(shown)


def test_weights_for_another_class_count_give_one_line_on_predict_and_eval(old_run, tmp_path, capsys):
    """run.json says 2 classes, model.safetensors has a 3-class head (files from different runs)."""
    import timm

    from tlstudio.cli.main import main
    from tlstudio.core.atomic import atomic_save_safetensors

    raw = json.loads((old_run / runs.RUN_JSON).read_text(encoding="utf-8"))
    other = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    atomic_save_safetensors(old_run / runs.BEST_WEIGHTS, other.state_dict(),
                            metadata={"tlstudio_model": json.dumps(raw["model"])})
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(img)
    for argv in (["predict", str(old_run), str(img)], ["eval", str(old_run), str(tmp_path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "3 outputs" in err[0] and "2 classes" in err[0], err
