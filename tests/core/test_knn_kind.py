"""The k-NN kind: the task seam's example of a kind with no gradient training, end to end
through the registry, the CLI (train --task knn, eval, predict, kinds) and a run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks import knn
from tlstudio.core.tasks.registry import all_kinds, get, kind_of_run


def test_vote_weights_neighbours_by_similarity_by_hand():
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = np.array([0, 1, 1])
    q = np.array([[1.0, 0.0]])
    # k=2: neighbours 0 (sim 1.0, class 0) and 1 (sim 0.8, class 1) -> 1.0/1.8 vs 0.8/1.8
    scores = knn.vote(bank, labels, q, k=2, n_classes=2)
    assert scores[0] == pytest.approx([1.0 / 1.8, 0.8 / 1.8], abs=1e-5)
    # k=3 adds neighbour 2 with similarity 0 (it counts for nothing but the epsilon)
    assert knn.vote(bank, labels, q, k=3, n_classes=2)[0, 0] == pytest.approx(1.0 / 1.8, abs=1e-4)


def test_knn_is_a_registered_kind_without_training():
    kind = get("knn")
    assert kind in all_kinds() and kind.trains is False and kind.config_cls is knn.KnnConfig
    assert kind.evaluate is knn.evaluate and kind.predict is knn.predict and kind.export is None


def test_train_task_knn_then_eval_and_predict_through_the_cli(tmp_path, capsys):
    from tlstudio.cli.main import main

    data = make_synthetic_folder(tmp_path / "d", classes=("circle", "square"), per_class=8, size=48, easy=True)
    run = tmp_path / "run"
    rc = main(["train", str(data), "--task", "knn", "--backbone", "test_resnet", "--scratch",
               "--image-size", "48", "--out", str(run), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "knn" and out["status"] == "finished" and "val_acc" in out["metrics"]
    info = runs.read_run(run)
    assert info.task == "knn" and kind_of_run(run).kind == "knn" and info.best_val_acc == out["metrics"]["val_acc"]
    assert (run / knn.BANK).is_file() and not (run / runs.LAST_CKPT).exists()  # nothing was trained
    saved = json.loads((run / runs.EVAL_JSON).read_text(encoding="utf-8"))
    assert saved["accuracy"] == pytest.approx(info.best_val_acc) and saved["n"] == len(runs.read_split(run).val)

    assert main(["eval", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["metrics"]["accuracy"] == pytest.approx(info.best_val_acc)
    assert ev["n"] == len(runs.read_split(run).val)

    # a training image predicts its own class: its own feature is in the bank (similarity 1)
    own = runs.read_split(run).train[0]
    assert main(["predict", str(run), own.path, "--json", "--top-k", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["error"] is None and rows[0]["top"][0]["class"] == info.model.classes[own.label]

    assert main(["kinds", "--json"]) == 0
    assert "knn" in {k["kind"] for k in json.loads(capsys.readouterr().out)}


def test_a_flag_the_kind_has_no_setting_for_is_refused(tmp_path, capsys):
    from tlstudio.cli.main import main

    data = make_synthetic_folder(tmp_path / "d", classes=("circle", "square"), per_class=4, size=48, easy=True)
    rc = main(["train", str(data), "--task", "knn", "--epochs", "3", "--out", str(tmp_path / "r")])
    assert rc == 2 and "--epochs does not apply" in capsys.readouterr().err
