"""Distillation: the KD loss formula, the objective, teachers, and end-to-end runs."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch

from tlstudio.core.tasks.distill import (
    DistillConfig,
    DistillError,
    DistillObjective,
    Teacher,
    check_teacher_classes,
    hint_loss,
    kd_loss,
    resolve_stage,
    soft_targets,
)
from tlstudio.core.events import drive
from tlstudio.core.training.objectives import ObjectiveContext
from tlstudio.core.runs.folder import ModelSpec, RunInfo


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# ------------------------------------------------------------------ the loss, by hand
def _softmax(z, T=1.0):
    e = [math.exp(v / T) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _hand_kd(s_rows, t_rows, ys, T, alpha):
    kls, ces = [], []
    for s, t, y in zip(s_rows, t_rows, ys):
        pt, ps = _softmax(t, T), _softmax(s, T)
        kls.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps)))
        if y >= 0:
            ces.append(-math.log(_softmax(s)[y]))
    kl = sum(kls) / len(kls)  # batchmean over all rows
    ce = sum(ces) / len(ces) if ces else 0.0  # labelled rows only
    return alpha * T * T * kl + (1 - alpha) * ce, kl, ce


S = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0], [-0.5, 0.3, 0.1]]
TT = [[2.0, 1.0, 0.0], [0.0, 0.0, 4.0], [1.5, -2.0, 0.7]]


@pytest.mark.parametrize("T,alpha", [(2.0, 0.3), (4.0, 0.7), (1.0, 0.5), (8.0, 0.9)])
def test_kd_loss_matches_hand_computed_formula(T, alpha):
    y = [1, 2, 0]
    expected, kl, ce = _hand_kd(S, TT, y, T, alpha)
    loss, parts = kd_loss(torch.tensor(S), torch.tensor(TT), torch.tensor(y), T=T, alpha=alpha)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert parts["soft"] == pytest.approx(alpha * T * T * kl, rel=1e-5)
    assert parts["hard"] == pytest.approx((1 - alpha) * ce, rel=1e-5)
    assert parts["soft"] + parts["hard"] == pytest.approx(float(loss), rel=1e-5)


def test_kd_loss_t_squared_factor_and_limits():
    s, t, y = torch.tensor(S), torch.tensor(TT), torch.tensor([1, 2, 0])
    _, kl4, ce = _hand_kd(S, TT, [1, 2, 0], 4.0, 1.0)
    # alpha = 1: pure soft term, scaled by T^2 (16 at T = 4, not 1)
    loss1, parts1 = kd_loss(s, t, y, T=4.0, alpha=1.0)
    assert float(loss1) == pytest.approx(16.0 * kl4, rel=1e-5)
    assert parts1["hard"] == 0.0
    # alpha = 0: exactly cross-entropy with the labels, whatever the teacher says
    loss0, parts0 = kd_loss(s, t, y, T=4.0, alpha=0.0)
    assert float(loss0) == pytest.approx(float(torch.nn.functional.cross_entropy(s, y)), rel=1e-6)
    assert float(loss0) == pytest.approx(ce, rel=1e-5)
    assert parts0["soft"] == 0.0
    loss0b, _ = kd_loss(s, -t, y, T=4.0, alpha=0.0)
    assert float(loss0b) == pytest.approx(float(loss0))
    # a student that equals the teacher has zero soft loss
    loss_same, _ = kd_loss(t, t, y, T=4.0, alpha=1.0)
    assert abs(float(loss_same)) < 1e-6


def test_unlabelled_rows_only_get_the_soft_term():
    T, alpha = 3.0, 0.6
    y = [-1, 2, -1]
    expected, kl, ce = _hand_kd(S, TT, y, T, alpha)
    loss, parts = kd_loss(torch.tensor(S), torch.tensor(TT), torch.tensor(y), T=T, alpha=alpha)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert parts["hard"] == pytest.approx((1 - alpha) * -math.log(_softmax(S[1])[2]), rel=1e-5)
    # a batch of unlabelled rows only: no hard term, still a gradient from the teacher
    s = torch.tensor(S, requires_grad=True)
    loss_u, parts_u = kd_loss(s, torch.tensor(TT), torch.tensor([-1, -1, -1]), T=T, alpha=alpha)
    assert parts_u["hard"] == 0.0 and parts_u["soft"] > 0
    loss_u.backward()
    assert s.grad.abs().sum() > 0


def test_multi_teacher_soft_targets_average_probabilities():
    t1, t2 = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    p = soft_targets([t1, t2], 2.0)
    p1, p2 = torch.softmax(t1 / 2, 1), torch.softmax(t2 / 2, 1)
    assert torch.allclose(p, (p1 + p2) / 2)
    pw = soft_targets([t1, t2], 2.0, [3.0, 1.0])
    assert torch.allclose(pw, 0.75 * p1 + 0.25 * p2)
    # kd_loss with a list of teachers uses the averaged probabilities
    s, y = torch.tensor([[0.5, 0.2, -0.1]]), torch.tensor([0])
    loss, _ = kd_loss(s, [t1, t2], y, T=2.0, alpha=1.0)
    ps = torch.log_softmax(s / 2, 1)
    expected = 4.0 * float((p * (p.log() - ps)).sum())
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_hint_loss_matches_spatial_sizes_and_is_scale_free():
    torch.manual_seed(0)
    t = torch.randn(2, 8, 8, 8)
    s_same = torch.nn.functional.interpolate(t, size=(16, 16))  # same content, bigger map
    assert float(hint_loss(s_same, t)) < 1e-4
    assert float(hint_loss(5.0 * t + 3.0, t)) < 1e-4  # standardised: scale and shift do not matter
    assert float(hint_loss(torch.randn(2, 8, 4, 4), t)) > 0.5
    with pytest.raises(ValueError):
        hint_loss(torch.randn(2, 4, 8, 8), t)


# ------------------------------------------------------------------ settings and teachers
def test_distill_config_validates_and_gives_a_plain_student_config(tmp_path):
    cfg = DistillConfig(data_dir=str(tmp_path), teachers=["a", "b"], teacher_weights=[2, 1],
                        feature_loss="3:-1", backbone="resnet10t", epochs=2)
    assert cfg.temperature == 4.0 and cfg.alpha == 0.7
    plain = cfg.student_config(out_dir=str(tmp_path / "x"))
    assert type(plain).__name__ == "TrainConfig"
    assert plain.backbone == "resnet10t" and plain.epochs == 2 and plain.out_dir == str(tmp_path / "x")
    assert "teachers" not in plain.model_dump()
    with pytest.raises(ValueError, match="weights"):
        DistillConfig(data_dir=".", teachers=["a"], teacher_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="TEACHER_STAGE"):
        DistillConfig(data_dir=".", teachers=["a"], feature_loss="3")
    with pytest.raises(ValueError):
        DistillConfig(data_dir=".", teachers=[])
    with pytest.raises(ValueError):
        DistillConfig(data_dir=".", teachers=["a"], alpha=1.5)


def test_teacher_classes_must_match_with_a_clear_error():
    assert check_teacher_classes("runA", ["a", "b"], ["a", "b"]) is None
    assert check_teacher_classes("runA", ["b", "a", "c"], ["a", "b", "c"]) == [1, 0, 2]
    with pytest.raises(DistillError) as err:
        check_teacher_classes("runs/teacher1", ["cat", "dog"], ["cat", "dog", "fox"])
    msg = str(err.value)
    assert "runs/teacher1" in msg and "fox" in msg
    with pytest.raises(DistillError, match="wolf"):
        check_teacher_classes("t", ["cat", "wolf"], ["cat", "dog"])


def test_resolve_stage_by_index_and_name():
    import timm

    m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    assert resolve_stage(m, "-1", "student") == "layer4"
    assert resolve_stage(m, "2", "student") == "layer2"
    assert resolve_stage(m, "layer3", "student") == "layer3"
    with pytest.raises(DistillError, match="stage 9"):
        resolve_stage(m, "9", "student")
    with pytest.raises(DistillError, match="nope"):
        resolve_stage(m, "nope", "student")


# ------------------------------------------------------------------ the objective in a manual loop
def _blobs(n_per_class: int, seed: int, dim: int = 8, n_classes: int = 3, spread: float = 1.3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=torch.Generator().manual_seed(123)) * 2.0
    xs, ys = [], []
    for c in range(n_classes):
        xs.append(centers[c] + spread * torch.randn(n_per_class, dim, generator=g))
        ys += [c] * n_per_class
    return torch.cat(xs), torch.tensor(ys)


def _mlp(seed: int, dim: int = 8, hidden: int = 32, n_classes: int = 3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_classes))


def _fake_teacher(model, classes, name="teacher_run", backbone="mlp"):
    spec = ModelSpec(backbone=backbone, num_classes=len(classes), classes=list(classes), image_size=32)
    info = RunInfo(config={}, model=spec)
    return Teacher(name, model.eval().requires_grad_(False), info, None)


def _train(model, objective, x, y, epochs=60, lr=0.05, extra=()):
    params = list(model.parameters()) + [p for m in extra for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    idx = torch.arange(len(x))
    history = []
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for b in perm.split(32):
            loss, parts = objective.loss(model, x[b], y[b], idx[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        history.append(total / len(x))
    return history


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


class _CE:
    def loss(self, model, x, y, idx):
        keep = y >= 0
        return torch.nn.functional.cross_entropy(model(x[keep]), y[keep]), {}


def _ctx(model, classes, n, tmp_path):
    from tlstudio.core.data.dataset import Sample

    return ObjectiveContext(model=model, device=torch.device("cpu"), classes=list(classes), precision=None,
                            config=None, train_samples=[Sample(f"s{i}", 0) for i in range(n)],
                            features_mode=False, run_dir=Path(tmp_path))


def test_objective_teacher_labels_unlabelled_data_and_beats_few_labels(tmp_path):
    """Teacher on all labels; student on 2 labels per class + the rest unlabelled beats labels alone."""
    classes = ["a", "b", "c"]
    x, y = _blobs(60, seed=1, dim=16, spread=2.5)
    xv, yv = _blobs(200, seed=2, dim=16, spread=2.5)
    teacher = _mlp(0, dim=16)
    _train(teacher, _CE(), x, y, epochs=40)
    t_acc = _acc(teacher, xv, yv)
    assert t_acc > 0.8
    # a few labels per class, the rest unlabelled
    few = torch.full_like(y, -1)
    for c in range(3):
        few[(y == c).nonzero()[:2, 0]] = c
    results = []
    for seed in (0, 1, 2):
        alone = _mlp(10 + seed, dim=16)
        _train(alone, _CE(), x, few, epochs=60)
        student = _mlp(10 + seed, dim=16)
        cfg = DistillConfig(data_dir=str(tmp_path), teachers=["teacher_run"], augment="light",
                            label_smoothing=0.0, temperature=4.0, alpha=0.7)
        obj = DistillObjective(cfg, teachers=[_fake_teacher(teacher, classes)])
        events = list(obj.setup(_ctx(student, classes, len(x), tmp_path)))
        assert any("every batch" in getattr(e, "message", "") for e in events)  # augment: no cache
        hist = _train(student, obj, x, few, epochs=60)
        assert hist[-1] < hist[0]
        results.append((_acc(alone, xv, yv), _acc(student, xv, yv)))
    mean_alone = sum(a for a, _ in results) / 3
    mean_kd = sum(b for _, b in results) / 3
    assert all(b > a for a, b in results), results
    assert mean_kd > mean_alone + 0.08, results
    assert mean_kd > 0.9 * t_acc, (results, t_acc)


def test_objective_multi_teacher_and_permuted_classes(tmp_path):
    classes = ["a", "b", "c"]
    x, y = _blobs(40, seed=3)
    t1, t2 = _mlp(1), _mlp(2)
    _train(t1, _CE(), x, y, epochs=30)
    _train(t2, _CE(), x, y, epochs=30)
    # teacher 2 was "trained" with classes listed in another order: its columns must be permuted back
    order = [2, 0, 1]
    t2_perm = torch.nn.Sequential(t2, _Permute(order))
    teacher2 = _fake_teacher(t2_perm, [classes[i] for i in order], name="t2")
    cfg = DistillConfig(data_dir=str(tmp_path), teachers=["t1", "t2"], teacher_weights=[1, 1], augment="light")
    obj = DistillObjective(cfg, teachers=[_fake_teacher(t1, classes, name="t1"), teacher2])
    student = _mlp(5)
    events = list(obj.setup(_ctx(student, classes, len(x), tmp_path)))
    assert teacher2.perm == [1, 2, 0]
    assert any("Multi-teacher" in getattr(e, "message", "") for e in events)
    with torch.no_grad():
        probs, _ = obj.teacher_probs(x[:5], torch.arange(5))
    expected = (torch.softmax(t1(x[:5]) / 4, 1) + torch.softmax(t2(x[:5]) / 4, 1)) / 2
    assert torch.allclose(probs, expected, atol=1e-6)
    hist = _train(student, obj, x, y, epochs=20)
    assert hist[-1] < hist[0] * 0.7
    assert _acc(student, x, y) > 0.8


class _Permute(torch.nn.Module):
    def __init__(self, order):
        super().__init__()
        self.order = order

    def forward(self, z):
        return z[:, self.order]


def test_objective_feature_hint_with_adapter_decreases(tmp_path):
    import timm

    classes = ["a", "b", "c"]
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    student = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    cfg = DistillConfig(data_dir=str(tmp_path), teachers=["t"], augment="light", feature_loss="-1:-1",
                        feature_weight=1.0, backbone="test_efficientnet", image_size=32)
    obj = DistillObjective(cfg, teachers=[_fake_teacher(teacher, classes, backbone="test_resnet")])
    events = list(obj.setup(_ctx(student, classes, 16, tmp_path)))
    assert not obj.supports_features_mode()
    assert obj.adapter is not None and obj.adapter.in_channels != obj.adapter.out_channels
    assert any("adapter" in getattr(e, "message", "") for e in events)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 3, (16,))
    student.train()
    feats = []
    opt = torch.optim.Adam(list(student.parameters()) + list(obj.adapter.parameters()), lr=0.01)
    for _ in range(15):
        loss, parts = obj.loss(student, x, y, torch.arange(16))
        assert set(parts) == {"soft", "hard", "feature"}
        feats.append(parts["feature"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert feats[-1] < feats[0] * 0.8, feats
    # hooks only capture while training forward passes are armed: eval forwards keep nothing
    student.eval()
    with torch.no_grad():
        student(x)
    assert obj._s_cap.value is None


def test_teacher_cache_when_inputs_are_deterministic(tmp_path, shapes3):
    """augment none: the teacher runs once over the training images, not during training."""
    import timm

    from tlstudio.core.data.dataset import Sample

    classes = ["circle", "square", "triangle"]
    samples = [Sample(str(p), classes.index(p.parent.name)) for p in sorted(Path(shapes3).rglob("*.png"))]
    samples.append(Sample(samples[0].path, -1))  # an unlabelled copy
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    t = _fake_teacher(teacher, classes, backbone="test_resnet")
    cfg = DistillConfig(data_dir=str(shapes3), teachers=["t"], augment="none", batch_size=8)
    obj = DistillObjective(cfg, teachers=[t])
    student = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    ctx = _ctx(student, classes, 0, tmp_path)
    ctx.train_samples = samples
    events = list(obj.setup(ctx))
    assert any("computed once" in getattr(e, "message", "") for e in events)
    assert obj.cached_probs.shape == (len(samples), 3)
    assert torch.allclose(obj.cached_probs[0], obj.cached_probs[-1], atol=1e-5)  # same image, same target

    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(4, 3, 32, 32)
    probs, _ = obj.teacher_probs(x, torch.tensor([0, 1, 2, len(samples) - 1]))
    assert calls == []  # served from the cache
    assert torch.allclose(probs[0], obj.cached_probs[0])


# ------------------------------------------------------------------ end to end through the engine
def _copy_subset(full: Path, few: Path, unlab: Path, n_labelled: int) -> None:
    import shutil

    unlab.mkdir(parents=True)
    for cdir in sorted(p for p in full.iterdir() if p.is_dir()):
        files = sorted(cdir.iterdir())
        (few / cdir.name).mkdir(parents=True)
        for f in files[:n_labelled]:
            shutil.copy(f, few / cdir.name / f.name)
        for f in files[n_labelled:]:  # the rest, without labels (flat folder)
            shutil.copy(f, unlab / f.name)


def _drive(gen):
    events = []
    return events, drive(gen, events.append)


def _held_out_acc(run_dir, samples):
    from tlstudio.core.evaluation.evaluate import evaluate_model
    from tlstudio.core.models.run_model import load_run_model

    model, info = load_run_model(run_dir)
    return evaluate_model(model, info.model, samples).accuracy


_FAST = dict(precision="fp32", seed=0, batch_size=16, early_stop_patience=None, warmup_epochs=0.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six hard shape classes (random colours), 20 per class, a held-out test folder, a Lite0 teacher on all labels."""
    import os

    from tlstudio.core.config import TrainConfig
    from tlstudio.core.training.engine import fit
    from tlstudio.core.data.synthetic import SHAPES, make_synthetic_folder

    root = tmp_path_factory.mktemp("distill_world")
    old_home = os.environ.get("TLSTUDIO_HOME")
    os.environ["TLSTUDIO_HOME"] = str(root / "home")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = make_synthetic_folder(root / "full", classes=SHAPES, per_class=20, size=48, seed=0)
        test = make_synthetic_folder(root / "test", classes=SHAPES, per_class=15, size=48, seed=99)
        _copy_subset(full, root / "few", root / "unlab", n_labelled=2)
        teacher_cfg = TrainConfig(data_dir=str(full), out_dir=str(root / "teacher"), backbone="tf_efficientnet_lite0",
                                  image_size=48, freeze="head", epochs=5, lr=1e-2, augment="none", **_FAST)
        _, info = _drive(fit(teacher_cfg))
        assert info.status == "finished"
    finally:
        torch.set_num_threads(n)
        if old_home is None:
            os.environ.pop("TLSTUDIO_HOME", None)
        else:
            os.environ["TLSTUDIO_HOME"] = old_home
    from tlstudio.core.data.dataset import scan

    return {"root": root, "full": full, "few": root / "few", "unlab": root / "unlab",
            "teacher": root / "teacher", "test": scan(str(test)).samples}


@pytest.mark.slow
@pytest.mark.realweights
def test_teacher_labels_unlabelled_images_and_beats_the_few_labels_alone(world, tmp_path):
    """2 labels per class (1 train + 1 val) + 108 unlabelled images: the distilled student beats the same
    student trained on the labels alone, on a held-out folder of 90 images (chance: 1/6)."""
    from tlstudio.core.tasks.distill import distill
    from tlstudio.core.events import BatchEnd, Log
    from tlstudio.core.runs.folder import read_run

    teacher_acc = _held_out_acc(world["teacher"], world["test"])
    assert teacher_acc > 0.85, teacher_acc
    cfg = DistillConfig(data_dir=str(world["few"]), teachers=[str(world["teacher"])],
                        unlabeled_dir=str(world["unlab"]), out_dir=str(tmp_path / "kd"),
                        backbone="tf_efficientnet_lite0", image_size=48, freeze="head", epochs=6, lr=1e-2,
                        augment="none", val_fraction=0.5, latency_repeats=1, latency_rounds=1, **_FAST)
    events, info = _drive(distill(cfg))
    assert info.status == "finished" and info.kind == "distill"
    messages = [e.message for e in events if isinstance(e, Log)]
    assert any("computed once" in m for m in messages)  # head-only on cached features: teacher cached
    assert any("108 unlabelled images" in m for m in messages)
    batches = [e for e in events if isinstance(e, BatchEnd) and e.phase == "distill"]
    assert batches and all({"soft", "hard"} <= set(e.parts) for e in batches)

    kd_acc = _held_out_acc(tmp_path / "kd", world["test"])
    alone_acc = _held_out_acc(tmp_path / "kd" / "student_baseline", world["test"])
    assert kd_acc > alone_acc + 0.1, (kd_acc, alone_acc, teacher_acc)
    assert kd_acc > 0.7  # the student learnt (chance is 1/6)

    # the trade-off report: in the run folder, in run.json, three rows measured on the same images
    rep = json.loads((tmp_path / "kd" / "tradeoff.json").read_text())
    assert [r["role"] for r in rep["rows"]] == ["teacher", "student", "student_baseline"]
    assert len({r["n_val"] for r in rep["rows"]}) == 1
    assert all(r["latency_ms_b1"] > 0 and r["latency_ms_b32"] > 0 and r["params"] > 0 for r in rep["rows"])
    student = rep["rows"][1]
    # recounted by another path: top-1 class names from predict() on the run's validation files
    from tlstudio.core.evaluation.evaluate import predict
    from tlstudio.core.runs.folder import read_split

    kd_classes = read_run(tmp_path / "kd").model.classes
    truth = {str(s.path): kd_classes[s.label] for s in read_split(tmp_path / "kd").val if s.label >= 0}
    assert len(truth) == rep["n_val"] == student["n_val"] and len(truth) >= 6

    def recount(run_dir):
        preds = predict(run_dir, list(truth), top_k=1)
        assert [p.error for p in preds] == [None] * len(truth)
        return sum(p.top[0][0] == truth[p.path] for p in preds) / len(truth)

    teacher_val, student_val = recount(world["teacher"]), recount(tmp_path / "kd")
    assert rep["rows"][0]["accuracy"] == pytest.approx(teacher_val)
    assert student["accuracy"] == pytest.approx(student_val)
    assert student["retained_pct"] == pytest.approx(100 * student_val / teacher_val)
    assert "Acc. retained" in (tmp_path / "kd" / "tradeoff.md").read_text()
    assert read_run(tmp_path / "kd").extra["tradeoff"]["rows"][1]["accuracy"] == student["accuracy"]
    assert "keeps" in rep["summary"] and "self-distillation" in rep["summary"]


@pytest.mark.slow
@pytest.mark.realweights
def test_multi_teacher_feature_kd_run_completes_and_losses_decrease(world, tmp_path):
    """Two teachers (Lite0 + a tiny ResNet), hint loss through an adapter, a scratch student, augment on."""
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.tasks.distill import distill
    from tlstudio.core.training.engine import fit
    from tlstudio.core.events import BatchEnd, Log

    small = tmp_path / "small"
    _copy_subset(world["full"], small, tmp_path / "unused", n_labelled=8)
    t2_cfg = TrainConfig(data_dir=str(small), out_dir=str(tmp_path / "t2"), backbone="test_resnet",
                         init="scratch", freeze="none", image_size=32, epochs=2, lr=3e-3, augment="none", **_FAST)
    _, t2 = _drive(fit(t2_cfg))
    assert t2.status == "finished"
    cfg = DistillConfig(data_dir=str(small), teachers=[str(world["teacher"]), str(tmp_path / "t2")],
                        teacher_weights=[2.0, 1.0], out_dir=str(tmp_path / "kd"), backbone="test_efficientnet",
                        init="scratch", freeze="none", image_size=32, epochs=4, lr=3e-3, augment="light",
                        temperature=2.0, feature_loss="-1:-1", feature_weight=1.0, student_baseline=False,
                        latency_repeats=1, latency_rounds=1, **_FAST)
    events, info = _drive(distill(cfg))
    assert info.status == "finished"
    messages = " | ".join(e.message for e in events if isinstance(e, Log))
    assert "Multi-teacher" in messages and "adapter" in messages and "every batch" in messages
    by_epoch: dict[int, dict[str, list[float]]] = {}
    for e in events:
        if isinstance(e, BatchEnd):
            assert {"soft", "hard", "feature"} <= set(e.parts)
            assert e.loss == pytest.approx(sum(e.parts.values()), rel=1e-4)
            for k, v in (("total", e.loss), ("feature", e.parts["feature"])):
                by_epoch.setdefault(e.epoch, {}).setdefault(k, []).append(v)
    first, last = by_epoch[0], by_epoch[max(by_epoch)]
    for k in ("total", "feature"):
        assert sum(last[k]) / len(last[k]) < sum(first[k]) / len(first[k]), (k, first[k], last[k])
    rep = json.loads((tmp_path / "kd" / "tradeoff.json").read_text())
    assert [r["role"] for r in rep["rows"]] == ["teacher", "teacher", "student"]
    assert rep["gain_over_baseline_points"] is None  # no student baseline was asked for


def test_cli_distill_refuses_a_teacher_with_other_classes(world, tmp_path, capsys):
    from tlstudio.cli import main
    from tlstudio.core.data.synthetic import make_synthetic_folder

    other = make_synthetic_folder(tmp_path / "other", classes=("cross", "ring"), per_class=4, size=32)
    code = main(["distill", str(other), "--teacher", str(world["teacher"]), "--student", "test_efficientnet",
                 "--scratch", "--epochs", "1", "--out", str(tmp_path / "kd")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tlstudio: error")]
    assert code == 2
    assert len(err) == 1 and str(world["teacher"]) in err[0] and "cross" in err[0], err
    assert not (tmp_path / "kd").exists()  # refused before any run folder was made
    code = main(["distill", str(other), "--teacher", str(tmp_path / "nope"), "--student", "test_efficientnet"])
    assert code == 2 and "nope" in capsys.readouterr().err


# ------------------------------------------------------------------ report and CLI (no training)
def test_tradeoff_compare_summary_and_markdown():
    from tlstudio.core.tasks.tradeoff import compare, tradeoff_markdown, tradeoff_table

    def row(role, name, backbone, acc, params, lat1, lat32):
        return {"role": role, "name": name, "run_dir": f"/runs/{name}", "backbone": backbone, "image_size": 224,
                "accuracy": acc, "macro_f1": acc, "n_val": 100, "params": params, "file_bytes": params * 4,
                "latency_ms_b1": lat1, "latency_ms_b32": lat32}

    rep = compare([row("teacher", "t1", "resnet50", 0.90, 25_000_000, 40.0, 20.0),
                   row("teacher", "t2", "resnet18", 0.95, 11_000_000, 20.0, 10.0),
                   row("student", "s", "mobilenetv3_small_100", 0.92, 1_000_000, 5.0, 2.0),
                   row("student_baseline", "b", "mobilenetv3_small_100", 0.80, 1_000_000, 5.0, 2.0)])
    assert rep["reference_teacher"] == "t2"  # the most accurate teacher is the reference
    s = rep["rows"][2]
    assert s["retained_pct"] == pytest.approx(100 * 0.92 / 0.95)
    assert s["speedup_b1"] == pytest.approx(4.0) and s["speedup_b32"] == pytest.approx(5.0)
    assert s["params_ratio"] == pytest.approx(11.0)
    assert rep["gain_over_baseline_points"] == pytest.approx(12.0)
    summary = rep["summary"]
    for text in ("96.8%", "11.0x fewer parameters", "4.0x faster", "5.0x faster at batch 32", "+12.0 points"):
        assert text in summary, (text, summary)
    md = tradeoff_markdown(rep)
    assert md.count("\n|") == 6 and "96.8%" in md and "4.00x" in md
    assert len(tradeoff_table(rep).splitlines()) == 6
    slow = compare([row("teacher", "t", "a", 0.9, 10, 1.0, 1.0), row("student", "s", "b", 0.9, 10, 2.0, 1.0)])
    assert "2.0x slower" in slow["summary"] and "about as fast at batch 32" in slow["summary"]


def test_cli_flags_become_a_distill_config(tmp_path):
    from tlstudio.cli import build_parser
    from tlstudio.cli.distill import distill_config

    args = build_parser().parse_args([
        "distill", str(tmp_path), "--teacher", "runA", "--teacher", "runB", "--teacher-weight", "2",
        "--teacher-weight", "1", "--student", "resnet10t", "--temperature", "6", "--alpha", "0.8",
        "--feature-loss", "3:2", "--unlabeled", str(tmp_path / "u"), "--epochs", "3", "--batch-size", "8",
        "--lr", "0.001", "--freeze", "last:2", "--image-size", "96", "--augment", "none", "--seed", "7",
        "--device", "cpu", "--scratch", "--out", str(tmp_path / "out"), "--no-student-baseline"])
    cfg = distill_config(args)
    assert cfg.teachers == ["runA", "runB"] and cfg.teacher_weights == [2.0, 1.0]
    assert (cfg.backbone, cfg.temperature, cfg.alpha, cfg.feature_loss) == ("resnet10t", 6.0, 0.8, "3:2")
    assert cfg.unlabeled_dir == str(tmp_path / "u") and cfg.student_baseline is False
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.freeze, cfg.image_size) == (3, 8, 0.001, "last:2", 96)
    assert (cfg.augment, cfg.seed, cfg.device, cfg.init, cfg.out_dir) == ("none", 7, "cpu", "scratch",
                                                                          str(tmp_path / "out"))
    defaults = distill_config(build_parser().parse_args(["distill", str(tmp_path), "--teacher", "r"]))
    assert (defaults.temperature, defaults.alpha, defaults.freeze, defaults.student_baseline) == (4.0, 0.7, "none", True)


@pytest.mark.slow
@pytest.mark.realweights
def test_stopped_distillation_resumes_to_the_report(world, tmp_path, capsys):
    """Stop during the student baseline, then `tlstudio distill-resume` finishes it and writes the report."""

    from tlstudio.cli import main
    from tlstudio.core.tasks.distill import distill
    from tlstudio.core.events import RunStarted
    from tlstudio.core.runs.folder import read_run

    small = tmp_path / "small"
    _copy_subset(world["full"], small, tmp_path / "unused", n_labelled=4)
    cfg = DistillConfig(data_dir=str(small), teachers=[str(world["teacher"])], out_dir=str(tmp_path / "kd"),
                        backbone="test_efficientnet", init="scratch", freeze="none", image_size=32, epochs=2,
                        lr=3e-3, augment="none", val_fraction=0.5, latency_repeats=1, latency_rounds=1, **_FAST)
    stop = threading.Event()
    gen = distill(cfg, stop=stop)
    events = []
    while True:
        try:
            e = next(gen)
        except StopIteration as done:
            info = done.value
            break
        events.append(e)
        if isinstance(e, RunStarted) and e.phase == "student_baseline":
            stop.set()  # the engine checks it at the next batch and saves a checkpoint
    assert info.status == "finished" and "tradeoff" not in info.extra
    assert read_run(tmp_path / "kd" / "student_baseline").status == "stopped"
    assert not (tmp_path / "kd" / "tradeoff.json").exists()

    code = main(["distill-resume", str(tmp_path / "kd"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "finished"
    assert [r["role"] for r in out["tradeoff"]["rows"]] == ["teacher", "student", "student_baseline"]
    assert read_run(tmp_path / "kd" / "student_baseline").status in ("finished", "early_stopped")
    assert (tmp_path / "kd" / "tradeoff.md").is_file()
    # a plain training run is refused with a clear line
    assert main(["distill-resume", str(world["teacher"])]) == 2
    assert "not a distillation run" in capsys.readouterr().err
