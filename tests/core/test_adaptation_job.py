"""A whole domain-adaptation run on tiny images: baseline, adaptation, selection, eval/predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.core.events import EpochEnd, Finished, drive
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks import registry
from tlstudio.core.tasks.adaptation.config import AdaptConfig


def _shifted(src: Path, dst: Path, flat: bool) -> Path:
    """The same kind of images through another 'camera' (inverted colours)."""
    for p in sorted(src.rglob("*.png")):
        out = dst / (p.name if flat else p.relative_to(src))
        out.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(p).convert("RGB")).save(out)
    return dst


@pytest.fixture
def domains(tmp_path):
    src = make_synthetic_folder(tmp_path / "source", per_class=8, size=32, seed=0, easy=True)
    target = _shifted(make_synthetic_folder(tmp_path / "t_raw", per_class=6, size=32, seed=1, easy=True),
                      tmp_path / "target", flat=True)
    check = _shifted(make_synthetic_folder(tmp_path / "c_raw", per_class=3, size=32, seed=2, easy=True),
                     tmp_path / "check", flat=False)
    return src, target, check


def _config(src, target, out, **kw):
    return AdaptConfig(data_dir=str(src), target_dir=str(target), backbone="test_efficientnet", init="scratch",
                       freeze="head", epochs=1, batch_size=8, image_size=32, workers=1, head_epochs=3,
                       selftrain_rounds=2, out_dir=str(out), seed=0, **kw)


def test_adaptation_run_end_to_end(domains, tmp_path):
    src, target, check = domains
    out = tmp_path / "run"
    events = []
    info = drive(registry.get("adaptation").run(_config(src, target, out, adapt="mcc", check_dir=str(check))),
                 events.append)
    assert info.task == "adaptation" and info.status == "finished"
    assert registry.kind_of_run(out).kind == "adaptation"
    rep = info.extra["adaptation"]
    assert rep["method"] == "mcc" and rep["target_images"] == 18 and rep["check_images"] == 9
    assert rep["unadapted"]["check_n"] == 9 and rep["adapted"]["check_acc"] is not None
    assert rep["selection"]["by"] == "check set"
    assert 0.0 <= rep["domain_gap"]["score"] <= 1.0
    # the kept model is the one the selection names
    kept = out / ("adapted" if rep["selection"]["selected"] == "adapted" else "source_only")
    assert (out / runs.BEST_WEIGHTS).read_bytes() == (kept / runs.BEST_WEIGHTS).read_bytes()
    assert runs.read_run(out / "source_only").task == "classification"
    # the source-only head is not pre-fitted: adapting from a converged head lost (adaptation/job.py)
    assert "Head fitted" not in (out / "source_only" / runs.LOG_TXT).read_text(encoding="utf-8")
    assert runs.read_run(out / "source_only").config["fit_head"] is False
    adapt_epochs = [e for e in events if isinstance(e, EpochEnd) and e.phase == "adapt"]
    assert len(adapt_epochs) == 3 and "target_loss" in adapt_epochs[0].parts
    assert isinstance(events[-1], Finished) and events[-1].result["selected"] in ("adapted", "unadapted")
    # eval/predict/export go through the registry like any run
    kind = registry.kind_of_run(out)
    ev = kind.evaluate(out)
    assert set(ev["comparison"]) == {"unadapted", "adapted"} and ev["n"] == 9
    assert any("check" in line or "adapted" in line for line in kind.eval_lines(ev))
    preds = kind.predict(out, [str(next(target.glob("*.png")))])
    assert preds[0]["error"] is None and preds[0]["top"][0]["class"] in info.model.classes
    # the split lists the target images unlabelled
    split = runs.read_split(out)
    tgt_rows = [s for s in split.train if s.domain == "target"]
    assert len(tgt_rows) == 18 and all(s.label == -1 for s in tgt_rows)


def test_check_set_labels_never_change_the_adapted_model(domains, tmp_path):
    """The same run with the check set's labels corrupted: bit-identical adapted weights, only the
    check-set scores differ."""
    src, target, check = domains
    bad = tmp_path / "check_bad"
    classes = sorted(d.name for d in check.iterdir())
    for i, c in enumerate(classes):  # every image moved to the next class's folder
        shutil.copytree(check / c, bad / classes[(i + 1) % len(classes)])
    infos = []
    for name, chk in (("a", check), ("b", bad)):
        infos.append(drive(registry.get("adaptation").run(
            _config(src, target, tmp_path / name, adapt="selftrain", check_dir=str(chk)))))
    wa = (tmp_path / "a" / "adapted" / runs.BEST_WEIGHTS).read_bytes()
    wb = (tmp_path / "b" / "adapted" / runs.BEST_WEIGHTS).read_bytes()
    assert wa == wb
    ra, rb = (i.extra["adaptation"] for i in infos)
    assert ra["pseudo_labels"] == rb["pseudo_labels"]
    assert ra["adapted"]["check_acc"] != rb["adapted"]["check_acc"] or ra["unadapted"]["check_acc"] != rb["unadapted"]["check_acc"]


def test_adabn_on_a_backbone_without_batchnorm_says_not_applicable(domains, tmp_path):
    src, target, _ = domains
    cfg = _config(src, target, tmp_path / "vit", adapt="adabn").model_copy(update={"backbone": "test_vit"})
    events = []
    info = drive(registry.get("adaptation").run(cfg), events.append)
    rep = info.extra["adaptation"]
    assert "no BatchNorm" in rep["not_applicable"]
    assert any("no BatchNorm" in getattr(e, "message", "") for e in events)
    assert rep["selection"]["selected"] == "unadapted"  # nothing to adapt: the source-only model is kept
    assert (tmp_path / "vit" / runs.BEST_WEIGHTS).read_bytes() == \
        (tmp_path / "vit" / "source_only" / runs.BEST_WEIGHTS).read_bytes()
    assert json.loads((tmp_path / "vit" / runs.CONFIG_JSON).read_text())["task"] == "adaptation"


@pytest.mark.slow
def test_dann_trains_the_last_layers_with_a_checkpointed_discriminator(domains, tmp_path):
    import torch

    from tlstudio.core.events import BatchEnd

    src, target, _ = domains
    events = []
    info = drive(registry.get("adaptation").run(_config(src, target, tmp_path / "dann", adapt="dann")), events.append)
    assert info.status == "finished" and info.extra["adaptation"]["method"] == "dann"
    parts = [e.parts for e in events if isinstance(e, BatchEnd) and e.phase == "adapt"]
    assert parts and {"source_loss", "domain_loss", "domain_acc", "grl"} <= set(parts[0])
    assert parts[0]["grl"] == 0.0 and parts[-1]["grl"] > 0.0  # the reversal warms up
    ckpt = torch.load(tmp_path / "dann" / "adapted" / runs.LAST_CKPT, weights_only=True)
    disc = ckpt["extra_modules"][0]
    assert disc["0.weight"].shape == (256, 256)  # features (test_efficientnet: 256) -> 256 hidden
    # the body was frozen in the config: DANN opened the last layers
    assert json.loads((tmp_path / "dann" / "adapted" / runs.CONFIG_JSON).read_text())["freeze"] == "last:2"


@pytest.mark.slow
def test_a_run_stopped_in_its_baseline_resumes_to_the_end(domains, tmp_path):
    import threading

    src, target, _ = domains
    out = tmp_path / "stopme"
    stop = threading.Event()
    cfg = _config(src, target, out, adapt="adabn").model_copy(update={"epochs": 2})

    def watch(ev):
        if isinstance(ev, EpochEnd) and ev.phase == "source_only":
            stop.set()  # stop after the baseline's first epoch

    info = drive(registry.get("adaptation").run(cfg, stop), watch)
    assert info.status == "stopped" and runs.read_run(out).status == "stopped"
    assert registry.kind_of_run(out).kind == "adaptation"  # the CLI's resume finds the kind
    info = drive(registry.kind_of_run(out).resume(out))
    assert info.status == "finished" and runs.read_run(out / "source_only").epochs_done == 2
    assert info.extra["adaptation"]["method"] == "adabn" and (out / runs.BEST_WEIGHTS).is_file()
