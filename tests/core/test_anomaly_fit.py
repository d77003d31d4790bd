"""Anomaly detection end to end on generated parts with painted defects (test_resnet, random
weights, 64 px): fit, evaluate, predict with maps, export parity in a fresh process, stop, PaDiM."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tests.core.anomaly_data import make_mvtec
from tlstudio.core.events import Finished, Progress, RunStarted, drive
from tlstudio.core.runs.folder import read_run, read_split
from tlstudio.core.tasks import registry
from tlstudio.core.tasks.anomaly import AnomalyConfig


def _cfg(data, out, **kw):
    base = dict(data_dir=str(data), out_dir=str(out), backbone="test_resnet", init="scratch", image_size=64,
                batch_size=8)
    base.update(kw)
    return AnomalyConfig(**base)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("anom")
    data = make_mvtec(root / "parts", n_train=20, n_good=4, n_defect=4)
    kind = registry.get("anomaly")
    events = []
    info = drive(kind.run(_cfg(data, root / "run")), events.append)
    return data, root / "run", info, events


def test_fit_writes_a_finished_anomaly_run(fitted):
    data, run, info, events = fitted
    assert info.status == "finished" and info.task == "anomaly"
    assert registry.kind_of_run(run).kind == "anomaly"
    meta = info.extra["anomaly"]
    assert meta["bank_size"] == round(16 * 64 * 0.1)  # 16 of 20 learn (4 held out), 8x8 patches, 10%
    held = np.array(meta["holdout_scores"])
    assert len(held) == 4 and (held <= meta["threshold"]).all()  # rate 1% of 4 images: above all
    assert info.metrics["image_auroc"] >= 0.9  # painted blobs/scratches on stripes
    split = read_split(run)
    assert len(split.train) == 16 and len(split.val) == 4 and len(split.test) == 12
    kinds = {type(e) for e in events}
    assert {RunStarted, Progress, Finished} <= kinds
    prog = [e for e in events if isinstance(e, Progress) and e.task == "features"]
    assert prog[-1].done == prog[-1].total == 16 and any("ETA" in e.message for e in prog)
    assert any("memory bank of" in getattr(e, "message", "") for e in events)


def test_evaluate_predict_and_maps(fitted, tmp_path):
    data, run, info, _ = fitted
    kind = registry.kind_of_run(run)
    rep = kind.evaluate(str(run), str(data))
    json.dumps(rep)  # JSON-able
    assert rep["image_auroc"] == pytest.approx(info.metrics["image_auroc"])
    assert rep["pixel_auroc"] is not None and rep["pixel_auroc"] > 0.6
    assert set(rep["per_defect"]) == {"blob", "scratch"}
    h = rep["histogram"]
    assert sum(h["good"]) == 4 and sum(h["defect"]) == 8
    rows = kind.predict(str(run), [str(data / "test" / "blob"), str(data / "test" / "good" / "000.png"),
                                   str(tmp_path / "missing.png")], maps_dir=str(tmp_path / "maps"), top_k=3)
    assert len(rows) == 6 and rows[-1]["error"] and rows[-1]["score"] is None
    blobs = [r for r in rows if "blob" in r["path"]]
    good = [r for r in rows if "good" in r["path"]][0]
    assert max(r["score"] for r in blobs) > good["score"]
    for r in rows[:-1]:
        assert (r["verdict"] == "anomaly") == (r["score"] > 0.5) == (r["raw_score"] > info.extra["anomaly"]["threshold"])
        from PIL import Image

        with Image.open(r["map_path"]) as im:
            assert im.size == (64, 64)
    assert "score" in kind.predict_line(rows[0]) and any("AUROC" in line for line in kind.eval_lines(rep))


def test_export_parity_in_a_fresh_process(fitted, tmp_path):
    _, run, info, _ = fitted
    rep = registry.kind_of_run(run).export(str(run), ["all"], str(tmp_path / "exp"))
    assert not rep["errors"], rep["errors"]
    onnx = rep["formats"]["onnx"]
    # a verdict (threshold 0.5) is far coarser than this; see export.TOLERANCE for the measured spread
    assert onnx["max_abs_diff"] < 5e-3 and rep["formats"]["torchscript"]["max_abs_diff"] < 5e-3
    fresh = onnx["fresh_process"]
    assert fresh["ok"] and fresh["images"] >= 3 and fresh["torch_imported"] is False
    side = json.loads((tmp_path / "exp" / "anomaly.json").read_text())
    assert side["threshold"]["raw"] == pytest.approx(info.extra["anomaly"]["threshold"])
    assert side["preprocessing"]["image_size"] == 64 and side["threshold"]["score"] == 0.5
    card = (tmp_path / "exp" / "MODEL_CARD.md").read_text()
    assert "above 0.5 = anomaly" in card


def test_stop_and_padim(tmp_path):
    data = make_mvtec(tmp_path / "p", n_train=12, n_good=2, n_defect=2, size=48)
    stop = threading.Event()
    gen = registry.get("anomaly").run(_cfg(data, tmp_path / "stopped", image_size=48, batch_size=2), stop=stop)
    for ev in gen:
        if isinstance(ev, Progress) and ev.task == "features":
            stop.set()
    assert read_run(tmp_path / "stopped").status == "stopped"
    info = drive(registry.get("anomaly").run(_cfg(data, tmp_path / "padim", image_size=48, method="padim")))
    assert info.status == "finished" and info.extra["anomaly"]["method"] == "padim"
    rows = registry.kind_of_run(tmp_path / "padim").predict(str(tmp_path / "padim"), [str(data / "test")])
    good = [r["score"] for r in rows if "/good/" in r["path"]]
    bad = [r["score"] for r in rows if "/good/" not in r["path"]]
    assert np.mean(bad) > np.mean(good)


def test_cli_fit_eval_predict_export(tmp_path, capsys):
    from tlstudio.cli.main import main

    data = make_mvtec(tmp_path / "d", n_train=10, n_good=2, n_defect=2, size=48)
    run = tmp_path / "cli_run"
    rc = main(["anomaly", "fit", str(data), "--backbone", "test_resnet", "--init", "scratch", "--image-size", "48",
               "--max-bank", "200", "--out", str(run), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "finished" and out["bank_size"] <= 200
    assert json.loads((run / "config.json").read_text())["max_bank"] == 200
    assert main(["eval", str(run), str(data), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert {"image_auroc", "pixel_auroc", "f1", "threshold"} <= set(ev) and ev["n"] == 6
    assert main(["predict", str(run), str(data / "test" / "blob"), "--json", "--maps", str(tmp_path / "maps")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(r["verdict"] in ("anomaly", "normal") and r["map_path"] for r in rows)
    assert main(["anomaly", "threshold", str(run), "--false-alarm", "0.2", "--json"]) == 0
    thr = json.loads(capsys.readouterr().out)
    assert thr["false_alarm_rate"] == 0.2
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "exp")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["formats"]["onnx"]["fresh_process"]["ok"]
    side = json.loads((tmp_path / "exp" / "anomaly.json").read_text())
    assert side["threshold"]["raw"] == pytest.approx(thr["threshold"])  # the moved threshold is shipped
    assert main(["anomaly", "fit", str(tmp_path / "nothing")]) == 2
    capsys.readouterr()
    # the Export step's "run elsewhere" line: `tlstudio train DATA --config config.json` fits again
    # (the saved config's kind decides, not classification's settings)
    assert main(["train", str(data), "--config", str(run / "config.json"), "--out", str(tmp_path / "again"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["task"] == "anomaly" and again["status"] == "finished"
    assert json.loads((tmp_path / "again" / "config.json").read_text())["max_bank"] == 200
