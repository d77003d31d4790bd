"""Semi-supervised: review queue, FixMatch loss, and a whole pseudo-label run on tiny images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlstudio.core.data.synthetic import make_synthetic_folder
from tlstudio.core.events import drive
from tlstudio.core.runs import folder as runs
from tlstudio.core.tasks import registry
from tlstudio.core.tasks.semisupervised.fixmatch import fixmatch_loss
from tlstudio.core.tasks.semisupervised.review import ReviewError, ReviewQueue, default_csv_path


def _q(paths, classes=("a", "b", "c")):
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.05, 0.9, 0.05], [0.25, 0.2, 0.55], [0.97, 0.02, 0.01]])
    return ReviewQueue.from_probs(list(classes), paths, probs)


def test_review_queue_decisions_and_counts(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    q = _q(paths)
    assert [it.path for it in q.items] == [paths[3], paths[1], paths[0], paths[2]]  # by confidence
    assert q.items[0].top[0] == (0, pytest.approx(0.97))
    q.accept(0)
    q.reject(1)
    q.relabel(3, "a")  # proposed c, it is a
    q.relabel(2, 0)  # proposed a, confirmed: an accept
    c = q.counts()
    assert (c["accepted"], c["rejected"], c["relabelled"], c["pending"]) == (2, 1, 1, 0)
    assert c["labelled_per_class"] == {"a": 3, "b": 0, "c": 0}
    assert sorted(q.labelled()) == sorted([(paths[3], "a"), (paths[2], "a"), (paths[0], "a")])
    q.undo(1)
    assert q.next_pending(0) == 1
    with pytest.raises(ReviewError):
        q.relabel(0, "zebra")
    with pytest.raises(ReviewError):
        q.relabel(0, 7)
    q2 = ReviewQueue.from_json(q.to_json())
    assert [(i.path, i.decision, i.label) for i in q2.items] == [(i.path, i.decision, i.label) for i in q.items]
    q3 = _q(paths)
    assert q3.accept_above(0.9) == 2 and q3.counts()["accepted"] == 2


def test_review_csv_is_beside_the_images_and_read_by_the_scan(tmp_path):
    from tlstudio.core.data.dataset import scan

    shapes = ("circle", "square", "triangle")
    lab = make_synthetic_folder(tmp_path / "p" / "labelled", per_class=2, size=32, classes=shapes)
    unl = tmp_path / "p" / "unl"
    unl.mkdir()
    paths = []
    other = make_synthetic_folder(tmp_path / "raw", per_class=2, size=32, classes=shapes, seed=9)
    for i, p in enumerate(sorted(other.rglob("*.png"))[:4]):
        dst = unl / f"x{i}.png"
        dst.write_bytes(p.read_bytes())
        paths.append(str(dst))
    q = _q(paths, shapes)
    q.accept(0)
    q.relabel(1, "triangle")
    q.reject(2)
    csv_path = default_csv_path(lab, unl)
    assert csv_path == (tmp_path / "p" / "tlstudio-reviewed-labels.csv").resolve()
    existing = [(s.path, shapes[s.label]) for s in scan(lab).samples]
    out = q.write_csv(csv_path, existing)
    text = out.read_text()
    assert text.startswith("path,label\n") and "unl/" in text and str(tmp_path) not in text  # relative paths
    rep = scan(out)
    assert len(rep.samples) == 6 + 2
    got = {s.path: rep.classes[s.label] for s in rep.samples}
    assert got[str(unl / "x3.png")] == "circle" and got[str(unl / "x1.png")] == "triangle"
    with pytest.raises(ReviewError, match="not inside"):
        q.write_csv(unl / "labels.csv", existing)  # the labelled images are outside unl/


def test_fixmatch_loss_uses_only_confident_weak_predictions():
    weak = torch.tensor([[10.0, 0.0], [0.1, 0.0]])  # first confident (class 0), second not
    strong = torch.tensor([[0.5, 1.5], [3.0, -3.0]])
    loss, kept = fixmatch_loss(weak, strong, 0.95)
    assert kept == 0.5
    expected = F.cross_entropy(strong[:1], torch.tensor([0])) / 2  # masked mean over both rows
    assert float(loss) == pytest.approx(float(expected))
    assert float(fixmatch_loss(weak, strong, 0.9999)[0]) == pytest.approx(float(expected))
    zero, k0 = fixmatch_loss(torch.zeros(2, 2), strong, 0.95)
    assert float(zero) == 0.0 and k0 == 0.0


def _labelled_and_unlabelled(tmp_path, unlabelled_per_class: int):
    """4 labelled shapes a class, and a flat folder of other shapes without labels."""
    lab = make_synthetic_folder(tmp_path / "lab", per_class=4, size=32, seed=0, easy=True)
    raw = make_synthetic_folder(tmp_path / "raw", per_class=unlabelled_per_class, size=32, seed=5, easy=True)
    unl = tmp_path / "unl"
    unl.mkdir()
    for i, p in enumerate(sorted(raw.rglob("*.png"))):
        (unl / f"{i:03d}.png").write_bytes(p.read_bytes())
    return lab, unl


def test_semisupervised_run_with_pseudo_labels(tmp_path):
    lab, unl = _labelled_and_unlabelled(tmp_path, 6)
    cfg = registry.get("semisupervised").config_cls(
        data_dir=str(lab), unlabeled_dir=str(unl), backbone="test_efficientnet", init="scratch", freeze="head",
        epochs=1, batch_size=8, image_size=32, workers=1, head_epochs=2, rounds=2, pseudo_threshold=0.0,
        out_dir=str(tmp_path / "run"))
    info = drive(registry.get("semisupervised").run(cfg))
    out = tmp_path / "run"
    assert info.task == "semisupervised" and info.status == "finished"
    rep = info.extra["semisupervised"]
    assert rep["method"] == "pseudolabel" and rep["unlabelled_images"] == 18 and len(rep["pseudo_labels"]) == 2
    for st in rep["pseudo_labels"]:
        assert all(n <= cap for n, cap in zip(st["per_class"], st["caps"]))
        assert st["selected"] == sum(st["per_class"])
    assert rep["pseudo_labels"][0]["caps"] == [math.ceil(18 * 1 / 3)] * 3  # balanced labelled classes
    q = ReviewQueue.load(out / "review.json")
    assert len(q.items) == 18 and all(it.decision == "pending" for it in q.items)
    assert (out / runs.BEST_WEIGHTS).read_bytes() == (out / "semi" / runs.BEST_WEIGHTS).read_bytes()
    ev = registry.kind_of_run(out).evaluate(out)
    assert set(ev["comparison"]) == {"labelled_only", "with_unlabelled"}
    assert any("pseudo-labels" in line for line in registry.kind_of_run(out).eval_lines(ev))


def test_pseudo_label_rounds_warn_when_nothing_reaches_the_threshold(tmp_path):
    import threading

    from tlstudio.core.events import EpochEnd, Warn
    from tlstudio.core.tasks.adaptation.scoring import Feats
    from tlstudio.core.tasks.semisupervised.config import SemiConfig
    from tlstudio.core.tasks.semisupervised.methods import pseudo_label_rounds

    g = torch.Generator().manual_seed(0)
    f = Feats()
    f.fs, f.ys = torch.randn(12, 8, generator=g), torch.arange(12) % 3
    f.fv, f.yv = torch.randn(6, 8, generator=g), torch.arange(6) % 3
    f.ft, f.fc, f.yc = torch.randn(30, 8, generator=g), torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)
    head0 = torch.nn.Linear(8, 3)
    torch.nn.init.zeros_(head0.weight)  # a head that is sure of nothing: every probability 1/3
    cfg = SemiConfig(data_dir=str(tmp_path), unlabeled_dir=str(tmp_path), pseudo_threshold=0.9, rounds=2,
                     head_epochs=2)
    events = []
    gen = pseudo_label_rounds(cfg, head0, f, [4, 4, 4], threading.Event())
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            head, history, stats = done.value
            break
    assert stats[0]["selected"] == 0
    assert any(isinstance(e, Warn) and "no unlabelled image reached 90%" in e.message
               and "a lower threshold may help" in e.message for e in events)
    assert len([e for e in events if isinstance(e, EpochEnd)]) == 4 and len(history) == 4


def test_per_class_bars_give_a_hard_class_its_surest_predictions():
    """FlexMatch's bars: the class the model is most often sure of keeps the threshold, a class it
    is never sure of keeps its most confident predictions (within its cap) instead of none."""
    from tlstudio.core.tasks.semisupervised.pseudo import class_thresholds, select_pseudo_labels

    easy = [[0.9, 0.05, 0.05]] * 4 + [[0.6, 0.2, 0.2]] * 2  # class 0: 4 sure of 6
    mid = [[0.05, 0.9, 0.05]] * 2 + [[0.2, 0.6, 0.2]] * 4  # class 1: 2 sure of 6
    hard = [[0.3, 0.3, 0.4]] * 3 + [[0.25, 0.3, 0.45]]  # class 2: never sure
    probs = torch.tensor(easy + mid + hard)
    conf, pred = probs.max(1)
    bars = class_thresholds(conf, pred, 3, 0.8)
    assert bars[0] == pytest.approx(0.8)
    assert bars[1] == pytest.approx(0.8 * (0.5 / 1.5))  # beta 2/4
    assert bars[2] == 0.0
    one = select_pseudo_labels(probs, 0.8, caps=[10, 10, 2])
    assert one.per_class == [4, 2, 0] and one.class_thresholds == []
    flex = select_pseudo_labels(probs, 0.8, caps=[10, 10, 2], per_class=True)
    assert flex.per_class == [4, 6, 2]
    assert sorted(i for i, y in zip(flex.index, flex.labels) if y == 2) == [12, 15]  # its surest two (cap 2)
    assert flex.lowered() == [1, 2]
    assert flex.to_json()["class_thresholds"][0] == pytest.approx(0.8)
    # nothing sure anywhere: the bars stay (no class is known to be easier than another)
    flat = torch.full((5, 3), 1 / 3)
    assert select_pseudo_labels(flat, 0.8, per_class=True).index == []


def test_pseudo_label_rounds_log_the_lowered_bars_by_class_name(tmp_path):
    import threading

    from tlstudio.core.events import Log
    from tlstudio.core.tasks.adaptation.scoring import Feats
    from tlstudio.core.tasks.semisupervised.config import SemiConfig
    from tlstudio.core.tasks.semisupervised.methods import pseudo_label_rounds

    f = Feats()
    f.fs, f.ys = torch.eye(3).repeat(4, 1), torch.arange(12) % 3
    f.fv, f.yv = torch.eye(3), torch.arange(3)
    # unlabelled rows: 10 near class 0, 10 near class 1, 10 halfway between class 2 and the others
    f.ft = torch.cat([torch.tensor([[3.0, 0, 0]]).repeat(10, 1), torch.tensor([[0, 3.0, 0]]).repeat(10, 1),
                      torch.tensor([[0.5, 0.5, 0.9]]).repeat(10, 1)])
    f.fc, f.yc = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    head0 = torch.nn.Linear(3, 3)
    with torch.no_grad():
        head0.weight.copy_(torch.eye(3) * 2)
        head0.bias.zero_()
    cfg = SemiConfig(data_dir=str(tmp_path), unlabeled_dir=str(tmp_path), pseudo_threshold=0.8, rounds=1,
                     head_epochs=1)
    gen = pseudo_label_rounds(cfg, head0, f, [4, 4, 4], threading.Event(), ["cat", "dog", "fox"])
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as done:
            stats = done.value[2]
            break
    assert stats[0]["per_class"] == [10, 10, 10] and stats[0]["class_thresholds"][2] == 0.0
    assert any(isinstance(e, Log) and "rarely sure of: fox 0%" in e.message for e in events)
    cfg_one = cfg.model_copy(update={"class_thresholds": False})
    gen = pseudo_label_rounds(cfg_one, head0, f, [4, 4, 4], threading.Event(), ["cat", "dog", "fox"])
    while True:
        try:
            next(gen)
        except StopIteration as done:
            assert done.value[2][0]["per_class"] == [10, 10, 0]
            break


def test_cli_one_threshold_turns_the_per_class_bars_off(tmp_path):
    from tlstudio.cli.adapt import config_from_args
    from tlstudio.cli.main import build_parser

    base = ["train", str(tmp_path), "--unlabeled", str(tmp_path), "--out", str(tmp_path / "run")]
    assert config_from_args(build_parser().parse_args(base)).class_thresholds is True
    assert config_from_args(build_parser().parse_args(base + ["--one-threshold"])).class_thresholds is False


def test_auto_picks_pseudo_label_rounds_when_the_body_trains(tmp_path):
    """FixMatch lost to the labelled images alone on real photos with 2 labels per class; rounds
    of fine-tuning on pseudo-labels gained ~10 points (RESULTS.md): auto is pseudo-labels, here
    by a fine-tuning round because the body trains."""
    lab, unl = _labelled_and_unlabelled(tmp_path, 3)
    cfg = registry.get("semisupervised").config_cls(
        data_dir=str(lab), unlabeled_dir=str(unl), backbone="test_efficientnet", init="scratch", freeze="none",
        epochs=1, batch_size=8, image_size=32, workers=1, rounds=1, pseudo_threshold=0.0, out_dir=str(tmp_path / "run"))
    events = []
    info = drive(registry.get("semisupervised").run(cfg), events.append)
    rep = info.extra["semisupervised"]
    assert info.status == "finished" and rep["method"] == "pseudolabel"
    assert len(rep["pseudo_labels"]) == 1 and rep["pseudo_labels"][0]["selected"] > 0
    # both sub-runs scan the 12 labelled images (4 a class): each warning about them is said once
    from tlstudio.core.events import Warn

    said = [e.message for e in events if isinstance(e, Warn)]
    assert any("has only 4 images" in m for m in said) and len(said) == len(set(said)), said
    from tlstudio.core.events import RunStarted

    phase2 = [e for e in events if isinstance(e, RunStarted) and e.phase == "semi" and e.run_dir == cfg.out_dir]
    assert phase2 and phase2[0].trainable_params == phase2[0].total_params  # freeze none: everything trains
    assert (tmp_path / "run" / "semi" / runs.BEST_WEIGHTS).is_file()


def test_a_worse_validation_with_the_unlabelled_images_is_said(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tlstudio.core.events import Warn
    from tlstudio.core.tasks.semisupervised import job
    from tlstudio.core.tasks.semisupervised.config import SemiConfig

    monkeypatch.setattr(job, "write_main_run", lambda *a, **k: SimpleNamespace(best_epoch=0, best_val_acc=0.6))
    cfg = SemiConfig(data_dir="d", unlabeled_dir="u")
    base = SimpleNamespace(frozen=False, spec=None, split=SimpleNamespace(val=[0] * 10))

    def warnings(before: float, after: float, method: str) -> list[str]:
        semi = SimpleNamespace(before={"source_val_acc": before}, after={"source_val_acc": after}, stats=[], history=[])
        events = []
        drive(job._finish(cfg, tmp_path, base, [], method, semi, 0.0), events.append)
        return [e.message for e in events if isinstance(e, Warn)]

    said = warnings(0.7, 0.6, "fixmatch")
    assert len(said) == 1 and "70.0% -> 60.0% on 10 validation images" in said[0]
    assert str(tmp_path / "labelled_only") in said[0] and "FixMatch" in said[0]
    assert warnings(0.7, 0.9, "pseudolabel") == [] and warnings(0.7, 0.7, "pseudolabel") == []
