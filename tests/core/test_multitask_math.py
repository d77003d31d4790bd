"""Multi-task maths against hand-computed values: masked losses, weightings, PCGrad."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tlstudio.core.tasks.multitask.objective import masked_losses, task_metrics
from tlstudio.core.tasks.multitask.pcgrad import cosine_matrix, project_conflicting
from tlstudio.core.tasks.multitask.weighting import DWA, GradNorm, InitialLoss, Manual, Uncertainty, make_weighting

TASKS = [
    {"name": "kind", "type": "categorical", "classes": ["a", "b"]},
    {"name": "tags", "type": "multilabel", "classes": ["x", "y"]},
    {"name": "age", "type": "numeric", "classes": [], "mean": 0.0, "std": 1.0},
]
NAN = float("nan")


def test_masked_losses_ignore_missing_labels_per_task():
    outs = {
        "kind": torch.tensor([[0.0, 0.0], [2.0, 0.0], [9.0, -9.0]]),
        "tags": torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]]),
        "age": torch.tensor([[0.5], [3.0], [3.0]]),
    }
    tg = {
        "kind": torch.tensor([0, 1, -1]),  # row 2 has no kind label (and a huge logit: must not count)
        "tags": torch.tensor([[1.0, 0.0], [NAN, NAN], [NAN, NAN]]),  # only row 0 labelled
        "age": torch.tensor([0.0, NAN, 0.0]),
    }
    losses, counts = masked_losses(outs, tg, TASKS, label_smoothing=0.0, huber_delta=1.0)
    assert counts == {"kind": 2, "tags": 1, "age": 2}
    # CE: ln 2 for row 0, log(1 + e^2) for row 1 -> mean
    assert float(losses["kind"]) == pytest.approx((math.log(2) + math.log(1 + math.e ** 2)) / 2, abs=1e-5)
    # BCE of logits 0 against (1, 0): ln 2 per class
    assert float(losses["tags"]) == pytest.approx(math.log(2), abs=1e-5)
    # Huber(delta 1): 0.5 * 0.5^2 = 0.125; |3| > 1 -> 3 - 0.5 = 2.5; mean 1.3125
    assert float(losses["age"]) == pytest.approx(1.3125, abs=1e-6)


def test_task_without_labels_in_batch_adds_zero_and_keeps_graph():
    out = torch.zeros(2, 2, requires_grad=True)
    losses, counts = masked_losses({"kind": out}, {"kind": torch.tensor([-1, -1])}, TASKS[:1])
    assert counts["kind"] == 0 and float(losses["kind"].detach()) == 0.0
    losses["kind"].backward()
    assert out.grad is not None and float(out.grad.abs().sum()) == 0.0


def test_task_metrics_categorical_and_numeric():
    m = task_metrics(TASKS[0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [5.0, 0.0]]),
                     torch.tensor([0, 1, 1, -1]))
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["confusion"] == [[1, 0], [1, 1]]
    # F1(a) = 2*1/(2+1) = 0.667, F1(b) = 2*1/(2+0+1) = 0.667
    assert m["macro_f1"] == pytest.approx(2 / 3)
    num = dict(TASKS[2], std=2.0)
    r = task_metrics(num, torch.tensor([[1.0], [2.0], [9.0]]), torch.tensor([1.0, 3.0, NAN]))
    assert r["n"] == 2 and r["mae"] == pytest.approx(0.5 * 2.0)  # z-space MAE 0.5 times std 2
    # R^2 = 1 - mean((p-t)^2) / var(t) = 1 - 0.5 / 1
    assert r["r2"] == pytest.approx(0.5)


def test_uncertainty_weighting_matches_kendall_formula_and_clamps():
    w = Uncertainty(["a", "b"])
    with torch.no_grad():
        w.module.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    total = w.combine({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    # exp(0)*2 + 0 + exp(-ln 2)*4 + ln 2
    assert float(total.detach()) == pytest.approx(2 + 0 + 2 + math.log(2), abs=1e-6)
    assert w.weights() == pytest.approx({"a": 1.0, "b": 0.5})
    # d/ds (e^-s L + s) = 1 - e^-s L: for task a, 1 - 2 = -1
    total.backward()
    assert w.module.log_vars.grad.tolist() == pytest.approx([-1.0, 1 - 0.5 * 4.0])
    with torch.no_grad():
        w.module.log_vars.fill_(50.0)
    assert w.weights()["a"] == pytest.approx(math.exp(-6.0))  # clamped at S_MAX = 6
    # a task absent from the batch leaves its s untouched
    w2 = Uncertainty(["a", "b"])
    w2.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0)}, {"a": True, "b": False}).backward()
    assert float(w2.module.log_vars.grad[1]) == 0.0


def test_dwa_weights_from_loss_ratios():
    w = DWA(["a", "b"], temperature=2.0)
    w.on_epoch_end({"a": 1.0, "b": 1.0})
    assert w.weights() == {"a": 1.0, "b": 1.0}  # needs two epochs of history
    w.on_epoch_end({"a": 0.5, "b": 1.0})
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    assert w.weights()["a"] == pytest.approx(2 * ea / (ea + eb))  # 0.8756
    assert w.weights()["b"] == pytest.approx(2 * eb / (ea + eb))  # 1.1244
    assert sum(w.weights().values()) == pytest.approx(2.0)
    w2 = DWA(["a", "b"])
    w2.load_state_dict(w.state_dict())
    assert w2.weights() == w.weights()


def test_gradnorm_target_norms_and_update_direction():
    g = GradNorm(["a", "b"], alpha=1.5)
    g.observe_step({"a": 2.0, "b": 1.0})  # first step: the initial losses
    t = g.targets({"a": 1.0, "b": 1.0}, {"a": 3.0, "b": 1.0})
    # ratios 0.5 and 1.0 (mean 0.75) -> r = 2/3, 4/3; mean G = 2 -> targets 2 r^1.5
    assert t["a"] == pytest.approx(2 * (2 / 3) ** 1.5)  # 1.0887
    assert t["b"] == pytest.approx(2 * (4 / 3) ** 1.5)  # 3.0792
    g.observe_step({"a": 1.0, "b": 1.0}, {"a": 3.0, "b": 1.0})
    w = g.weights()
    assert w["a"] < 1.0 < w["b"]  # a's gradient is above its target: weight down; b's below: up
    assert sum(w.values()) == pytest.approx(2.0)  # renormalised to the number of tasks


def test_initial_and_manual_weighting():
    w = InitialLoss(["a", "b"])
    w.observe_step({"a": 4.0, "b": 0.5})
    w.observe_step({"a": 1.0, "b": 1.0})  # only the first loss counts
    assert w.weights() == pytest.approx({"a": 0.25, "b": 2.0})
    assert float(w.combine({"a": torch.tensor(4.0), "b": torch.tensor(0.5)})) == pytest.approx(2.0)
    m = Manual(["a", "b"], [1.0, 3.0])
    assert float(m.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        make_weighting("manual", ["a", "b"], [1.0])


def test_pcgrad_projects_only_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    out = project_conflicting([g1, g2], order=[[1], [0]])
    # g1' = g1 - (g1.g2)/|g2|^2 g2 = (0.5, 0.5); g2' = g2 - (g2.g1)/|g1|^2 g1 = (0, 1)
    assert out.tolist() == pytest.approx([0.5, 1.5])
    assert float(torch.dot(torch.tensor([0.5, 0.5]), g2)) == 0.0
    agree = project_conflicting([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])], rng=random.Random(0))
    assert agree.tolist() == pytest.approx([2.0, 1.0])  # no conflict: plain sum
    assert cosine_matrix([g1, g2])[0][1] == pytest.approx(-1 / math.sqrt(2))


def test_pcgrad_in_the_objective_gives_shared_layers_the_projected_gradient():
    """The objective's surrogate: same loss value, the shared parameters receive PCGrad's sum."""
    from types import SimpleNamespace

    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.tasks.multitask.model import MultiTaskModel
    from tlstudio.core.tasks.multitask.objective import MTContext, MultiTaskObjective
    from tlstudio.core.tasks.multitask.pcgrad import flat

    class Body(torch.nn.Module):
        num_features = 3

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    torch.manual_seed(0)
    tasks = [{"name": "a", "type": "categorical", "classes": ["0", "1"]},
             {"name": "b", "type": "categorical", "classes": ["0", "1"]}]
    model = MultiTaskModel([Body()], tasks)
    with torch.no_grad():  # same head, mostly opposite labels: the tasks conflict on the body
        model.heads["a"].weight.normal_(std=0.3)
        model.heads["b"].weight.copy_(model.heads["a"].weight)
    samples = [Sample(f"{i}.png", -1, {"a": i % 2, "b": 1 - i % 2}) for i in range(8)]
    cfg = SimpleNamespace(weighting="equal", task_weights=None, seed=0, label_smoothing=0.0, huber_delta=1.0,
                          relatedness_every=1, pcgrad=True, soft_penalty=0.0)
    obj = MultiTaskObjective({"tasks": tasks}, cfg)
    obj.setup(MTContext(model=model, device="cpu", classes=["a", "b"], precision=None, config=cfg,
                        train_samples=samples, val_samples=samples))
    x, idx = torch.randn(8, 4), torch.arange(8)
    loss, parts = obj.loss(model, x, torch.zeros(8, dtype=torch.long), idx)
    assert float(loss.detach()) == pytest.approx(parts["loss/a"] + parts["loss/b"], abs=1e-5)
    loss.backward()
    got = flat([p.grad for p in model.body.parameters()], list(model.body.parameters()))
    # by hand: per-task gradients, then the projection (two tasks: order does not matter)
    model.zero_grad()
    shared = list(model.body.parameters())
    outs = model(x)
    gs = []
    for t in ("a", "b"):
        y = torch.tensor([s.targets[t] for s in samples])
        gs.append(flat(torch.autograd.grad(torch.nn.functional.cross_entropy(outs[t], y), shared,
                                           retain_graph=True), shared))
    want = project_conflicting(gs, order=[[1], [0]])
    assert float(torch.dot(gs[0], gs[1])) < 0  # the tasks conflict here: the projection matters
    assert not torch.allclose(want, gs[0] + gs[1], atol=1e-4)
    assert torch.allclose(got, want, atol=1e-5)
    assert obj.relatedness.n == 1  # the cosine was sampled on this step


def test_distillation_mixes_label_loss_and_teacher_soft_targets_per_task():
    from types import SimpleNamespace

    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.tasks.multitask.objective import MTContext, MultiTaskObjective

    tasks = [{"name": "kind", "type": "categorical", "classes": ["a", "b"]},
             {"name": "age", "type": "numeric", "classes": [], "mean": 0.0, "std": 1.0}]
    cfg = SimpleNamespace(weighting="equal", task_weights=None, seed=0, label_smoothing=0.0, huber_delta=1.0,
                          relatedness_every=1, pcgrad=False, soft_penalty=0.0, kd_alpha=0.5, kd_temperature=2.0)
    obj = MultiTaskObjective({"tasks": tasks}, cfg)
    samples = [Sample("0", 0, {"kind": 0, "age": 0.0}), Sample("1", -1, {})]  # row 1: no labels at all
    obj.setup(MTContext(model=None, device="cpu", classes=[], precision=None, config=cfg, train_samples=samples,
                        val_samples=samples))
    obj.set_teacher_outputs({"kind": torch.tensor([[0.0, 0.0], [2.0, 0.0]]), "age": torch.tensor([[1.0], [NAN]])})
    outs = {"kind": torch.tensor([[0.0, 0.0], [0.0, 0.0]]), "age": torch.tensor([[0.0], [5.0]])}
    idx = torch.tensor([0, 1])
    losses, counts = obj.task_losses(outs, obj._train.batch(idx, "cpu"), idx)
    # kind: label CE on row 0 = ln 2; KD over both rows at T=2: row 0 KL 0, row 1 KL(p_t || uniform) * T^2
    pt = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # teacher logits / T
    kl1 = float((pt * (pt / 0.5).log()).sum())
    assert float(losses["kind"]) == pytest.approx(0.5 * math.log(2) + 0.5 * (kl1 / 2) * 4, abs=1e-5)
    assert counts["kind"] == 2  # the unlabelled row learns from the teacher
    # age: Huber on row 0 = 0; teacher MSE on row 0 only (row 1's teacher output is missing) = 1
    assert float(losses["age"]) == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)


def test_baseline_comparison_calls_differences_only_beyond_the_noise():
    from tlstudio.core.tasks.multitask.baseline import compare, noise_tolerance

    # one standard error of a difference of two proportions: sqrt(2 p (1-p) / n), p = 0.9475, n = 200
    assert noise_tolerance(0.955, 0.94, 200) == pytest.approx(math.sqrt(2 * 0.9475 * 0.0525 / 200))
    assert noise_tolerance(1.0, 1.0, 7) == pytest.approx(1 / 7)  # never less than one image
    r = compare({"source": 0.955, "rotation": 0.365}, {"source": 0.945, "rotation": 0.355},
                n_val={"source": 200, "rotation": 200}, heads_only=True)
    assert r["negative_tasks"] == [] and not any(row["better"] for row in r["rows"])
    assert r["verdict"].startswith("Multi-task matches") and "shared no trainable layer" in r["verdict"]
    # delta-m = 100/T * sum (M_mtl - M_single) / M_single
    assert r["delta_m"] == pytest.approx(50 * (0.01 / 0.945 + 0.01 / 0.355))
    r = compare({"a": 0.80, "b": 0.95}, {"a": 0.90, "b": 0.80}, n_val={"a": 400, "b": 400})
    assert r["negative_tasks"] == ["a"] and [row["better"] for row in r["rows"]] == [False, True]
    assert r["verdict"].startswith("Negative transfer between tasks: a did worse")
    assert r["rows"][0]["delta_points"] == pytest.approx(-10.0)
