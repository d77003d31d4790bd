"""`tlstudio rank` and `tlstudio explain` from the command line."""

from __future__ import annotations

import json

import pytest

from tlstudio.cli.main import main
from tlstudio.core.events import drive


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.training.engine import fit

    tmp = tmp_path_factory.mktemp("cli")
    data = make_synthetic_folder(tmp / "data", per_class=6, size=40, easy=True)
    run = tmp / "run"
    drive(fit(TrainConfig(data_dir=str(data), out_dir=str(run), backbone="test_resnet", init="scratch",
                          epochs=1, batch_size=8, image_size=32, freeze="none", augment="none")))
    return data, run


def test_rank_json_lists_best_first_and_unusable_with_reason(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    code = main(["rank", str(data), "--candidates", f"random:test_resnet,run:{run},nope_net", "--image-size", "32",
                 "--out", str(tmp_path / "r"), "--json", "--no-latency"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    specs = [r["candidate"]["spec"] for r in out["rows"]]
    assert set(specs) == {"random:test_resnet", f"run:{run}", "nope_net"}
    ranked = [r for r in out["rows"] if r["rank"] is not None]
    assert [r["rank"] for r in ranked] == [1, 2]
    assert ranked[0]["logme"] >= ranked[1]["logme"]
    assert out["rows"][-1]["candidate"]["spec"] == "nope_net" and "unknown backbone" in out["rows"][-1]["error"]
    assert (tmp_path / "r" / "rank.json").is_file()


def test_rank_table(tiny_run, tmp_path, capsys):
    data, _ = tiny_run
    assert main(["rank", str(data), "--candidates", "random:test_resnet,random:test_efficientnet",
                 "--image-size", "32", "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "LogME" in text and "1. " in text and "2. " in text and "rank.json" in text


def test_explain_writes_overlays(tiny_run, tmp_path, capsys):
    from PIL import Image

    data, run = tiny_run
    imgs = sorted(p for p in data.rglob("*.png"))[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code = main(["explain", str(run), *map(str, imgs), str(bad), "--out", str(tmp_path / "o"), "--class", "circle",
                 "--json"])
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(recs) == 3
    good = [r for r in recs if r["error"] is None]
    assert len(good) == 2 and all(r["explained_class"] == "circle" for r in good)
    for r, src in zip(good, imgs):
        assert Image.open(r["overlay"]).size == Image.open(src).size
    assert [r for r in recs if r["error"]][0]["path"] == str(bad)


def test_explain_unknown_class_is_one_line(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    img = next(data.rglob("*.png"))
    assert main(["explain", str(run), str(img), "--out", str(tmp_path / "o"), "--class", "zebra"]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'zebra'" in err and "Traceback" not in err


def test_a_head_only_run_is_said_to_share_its_sources_features(tiny_run, tmp_path, capsys):
    """A run that trained only its head on top of an earlier run keeps that run's body: the
    ranking gives both the same scores and says why, instead of two unexplained equal rows."""
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.training.engine import fit

    data, run = tiny_run
    head_only = tmp_path / "head_only"
    drive(fit(TrainConfig(data_dir=str(data), out_dir=str(head_only), backbone="test_resnet", init="run",
                          init_run=str(run), epochs=1, batch_size=8, image_size=32, freeze="head", augment="none")))
    code = main(["rank", str(data), "--candidates", f"run:{run},run:{head_only},random:test_resnet",
                 "--image-size", "32", "--out", str(tmp_path / "r"), "--json", "--no-latency"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    by = {r["candidate"]["spec"]: r for r in out["rows"]}
    first, second = by[f"run:{run}"], by[f"run:{head_only}"]
    assert first["same_as"] is None and by["random:test_resnet"]["same_as"] is None
    assert second["same_as"] == first["candidate"]["label"]
    assert second["logme"] == pytest.approx(first["logme"])
    assert "exactly those of" in second["explanation"] and first["candidate"]["label"] in second["explanation"]


def test_a_head_only_run_goes_after_the_weights_it_started_from(tiny_run, tmp_path, capsys):
    """A run that trained only its head on a weights file has that file's body: equal scores, and
    the file's row comes first (the source of those features; the run row says why it ties)."""
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.runs.folder import BEST_WEIGHTS
    from tlstudio.core.training.engine import fit

    data, run = tiny_run
    weights = run / BEST_WEIGHTS
    head_only = tmp_path / "head_only"
    drive(fit(TrainConfig(data_dir=str(data), out_dir=str(head_only), backbone="test_resnet", init="file",
                          weights_file=str(weights), epochs=1, batch_size=8, image_size=32, freeze="head",
                          augment="none")))
    code = main(["rank", str(data), "--candidates", f"run:{head_only}", "--weights", f"test_resnet={weights}",
                 "--image-size", "32", "--out", str(tmp_path / "r"), "--json", "--no-latency"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = [r for r in out["rows"] if r["rank"] is not None]
    assert [r["candidate"]["source"] for r in rows] == ["file", "run"]
    assert rows[1]["logme"] == pytest.approx(rows[0]["logme"])
    assert rows[0]["same_as"] is None and rows[1]["same_as"] == rows[0]["candidate"]["label"]
