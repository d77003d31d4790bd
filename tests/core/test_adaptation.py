"""Domain adaptation building blocks: gradient reversal, MCC, AdaBN, selection, domain gap."""

from __future__ import annotations

import math

import pytest
import torch

from tlstudio.core.tasks.adaptation import adabn, dann, domain_gap, selection
from tlstudio.core.tasks.adaptation.mcc import MCCObjective, mcc_loss
from tlstudio.core.tasks.semisupervised.pseudo import class_caps, select_pseudo_labels


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = dann.reverse_gradient(x, 0.5)
    assert torch.equal(y, x)  # identity forward
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))


def test_grl_warm_up_schedule_rises_from_zero_to_one():
    c = [dann.grl_coefficient(s, 100) for s in (0, 10, 50, 100, 200)]
    assert c[0] == pytest.approx(0.0)
    assert c[0] < c[1] < c[2] < c[3]
    assert c[3] == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert c[4] == c[3]  # capped at the end of the run


def test_dann_discriminator_gradient_pushes_features_the_other_way():
    torch.manual_seed(0)
    disc = dann.make_discriminator(8, 16)
    fs = torch.randn(6, 8, requires_grad=True)
    ft = torch.randn(6, 8, requires_grad=True)
    loss, _ = dann.dann_loss(disc, fs, ft, 1.0)
    loss.backward()
    g_rev = fs.grad.clone()
    fs.grad = None
    disc.zero_grad()
    # without reversal (coefficient -1 reverses the reversal) the feature gradient is the opposite
    loss2, _ = dann.dann_loss(disc, fs, ft, -1.0)
    loss2.backward()
    assert torch.allclose(g_rev, -fs.grad, atol=1e-6)
    assert float(g_rev.abs().sum()) > 0


def _logits_for(p, t=2.5):
    return t * torch.log(torch.tensor(p, dtype=torch.float32))  # softmax(logits / t) == p


def test_mcc_loss_on_hand_made_probabilities():
    # two images, p1 = (0.9, 0.1), p2 = (0.5, 0.5); by hand (entropy with +1e-5 inside the log):
    # H1 = 0.32508, H2 = 0.69313 -> w = 1 + exp(-H) = 1.72245, 1.50000 -> x N / sum = 1.06903, 0.93097
    # C = 1.06903 p1 p1' + 0.93097 p2 p2' = [[1.09865, 0.32895], [0.32895, 0.24343]]
    # rows normalised: [0.76958, 0.23042], [0.57470, 0.42530]; off-diagonal 0.80512 / 2 classes = 0.40256
    assert float(mcc_loss(_logits_for([[0.9, 0.1], [0.5, 0.5]]))) == pytest.approx(0.40256, abs=2e-4)
    # all images undecided between both classes: maximal confusion (C-1)/C = 0.5
    assert float(mcc_loss(_logits_for([[0.5, 0.5]] * 3))) == pytest.approx(0.5, abs=1e-6)
    # each image sure of its own class: no confusion
    assert float(mcc_loss(torch.tensor([[40.0, 0.0], [0.0, 40.0]]))) == pytest.approx(0.0, abs=1e-6)


def test_mcc_loss_gradient_makes_predictions_more_decided():
    logits = torch.tensor([[0.3, 0.0, 0.1], [0.0, 0.2, 0.1], [0.1, 0.1, 0.4]], requires_grad=True)
    before = float(mcc_loss(logits.detach()))
    opt = torch.optim.SGD([logits], lr=100.0)
    for _ in range(50):
        opt.zero_grad()
        mcc_loss(logits).backward()
        opt.step()
    assert float(mcc_loss(logits.detach())) < before * 0.1
    assert logits.argmax(1).tolist() == [0, 1, 2]  # each image committed to its own leaning


def _bn_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()


def test_adabn_changes_only_batchnorm_running_statistics():
    model = _bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn = adabn.bn_layers(model)
    bn_keys = {f"{n}.{b}" for n, m in model.named_modules() if m in bn
               for b in ("running_mean", "running_var", "num_batches_tracked")}
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 32, 32, generator=g) * 2 + 1.5 for _ in range(3)]
    # the first BatchNorm's input, to check the new statistics are the plain average over all images
    seen = []
    h = bn[0].register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    n = adabn.adapt_bn(model, batches)
    h.remove()
    assert n == 12
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= bn_keys
    assert any(k.endswith("running_mean") for k in changed)
    x = torch.cat(seen)
    assert torch.allclose(bn[0].running_mean, x.mean((0, 2, 3)), atol=1e-5)
    assert not model.training and all(m.momentum == before_m for m, before_m in zip(bn, [0.1] * len(bn)))


def test_adabn_not_applicable_without_batchnorm():
    import timm

    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    ok, reason = adabn.applicability(vit, "test_vit")
    assert not ok and "no BatchNorm" in reason
    assert adabn.applicability(_bn_model())[0]
    with pytest.raises(ValueError):
        adabn.adapt_bn(vit, [torch.randn(2, 3, 32, 32)])


def test_pseudo_labels_respect_threshold_and_class_cap():
    probs = torch.tensor([
        [0.99, 0.01, 0.0], [0.97, 0.03, 0.0], [0.96, 0.04, 0.0], [0.5, 0.5, 0.0],  # class 0
        [0.02, 0.98, 0.0], [0.1, 0.9, 0.0],  # class 1 (0.9 below the threshold)
        [0.0, 0.04, 0.96], [0.0, 0.3, 0.7],  # class 2
    ])
    pl = select_pseudo_labels(probs, 0.95, caps=[2, 5, 5])
    assert sorted(pl.index) == [0, 1, 4, 6]  # row 2 (0.96) is over class 0's cap of 2; rows 3, 5, 7 below 0.95
    assert pl.labels == [int(probs[i].argmax()) for i in pl.index]
    assert all(c >= 0.95 for c in pl.confidence)
    assert pl.per_class == [2, 1, 1] and pl.candidates_per_class == [3, 1, 1]
    # no threshold, CBST fraction: the top half of each class's predictions
    pl2 = select_pseudo_labels(probs, 0.0, fraction=0.5)
    assert sorted(pl2.index) == [0, 1, 4, 6]


def test_class_caps_follow_the_labelled_class_shares():
    assert class_caps(100, [10, 30], 2) == [25, 75]
    assert class_caps(10, None, 3) == [4, 4, 4]
    assert class_caps(100, [10, 30], 2, cap_factor=0.5) == [13, 38]


def test_target_labels_never_reach_the_training_loss(tmp_path):
    """MCC on the same target images with their true, shuffled or no labels: identical losses."""
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.data.synthetic import make_synthetic_folder
    from tlstudio.core.training.objectives import ObjectiveContext

    root = make_synthetic_folder(tmp_path / "t", per_class=4, size=32, seed=3)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    cfg = TrainConfig(data_dir=str(root), backbone="test_efficientnet", batch_size=4, image_size=32, cache="off",
                      workers=1)
    model = _bn_model()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    results = []
    for labels in ([i % 3 for i in range(len(paths))], [(i * 7 + 1) % 3 for i in range(len(paths))], None):
        samples = paths if labels is None else [Sample(p, lab) for p, lab in zip(paths, labels)]
        obj = MCCObjective(samples, weight=1.0)
        assert all(s.label == -1 for s in obj.target_samples)
        ctx = ObjectiveContext(model=model, device=torch.device("cpu"), classes=["a", "b", "c"], precision=None,
                               config=cfg, train_samples=[], full_model=model)
        list(obj.setup(ctx))
        model.eval()  # eval: BN does not move between the three runs
        with torch.no_grad():
            losses = [obj.loss(model, x, y, None)[1]["target_loss"] for _ in range(3)]
        results.append(losses)
        obj.target.loaders.close()
    assert results[0] == results[1] == results[2]


def test_information_maximisation_score():
    eye = torch.eye(4)
    assert selection.info_max(eye) == pytest.approx(1.0, abs=1e-6)  # sure and diverse
    assert selection.info_max(torch.full((5, 4), 0.25)) == pytest.approx(0.0, abs=1e-6)  # unsure
    assert selection.info_max(eye[[0, 0, 0]]) == pytest.approx(0.0, abs=1e-6)  # sure but one class only


def test_selection_keeps_adapted_only_if_better_on_the_check_set():
    better = selection.choose({"check_acc": 0.5, "check_n": 20}, {"check_acc": 0.8, "check_n": 20})
    assert better["selected"] == "adapted" and better["by"] == "check set"
    worse = selection.choose({"check_acc": 0.8, "check_n": 20}, {"check_acc": 0.8, "check_n": 20})
    assert worse["selected"] == "unadapted" and "80%" in worse["reason"]
    blind = selection.choose({"target_info_max": 0.6, "source_val_acc": 0.9},
                             {"target_info_max": 0.3, "source_val_acc": 0.9, "check_acc": None})
    assert blind["selected"] == "adapted" and blind["doubtful"] and "check set" in blind["reason"]


def test_domain_gap_separates_shifted_features_from_same_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(80, 64, generator=g)
    same = domain_gap.gap_from_features(a[:40], a[40:])
    shifted = domain_gap.gap_from_features(a[:40], torch.randn(40, 64, generator=g) + 1.0)
    assert same["score"] < domain_gap.SMALL
    assert shifted["score"] > domain_gap.LARGE and "different" in shifted["sentence"]
    assert shifted["mmd"] > same["mmd"]
    assert domain_gap.gap_from_features(a[:2], a[2:4])["score"] is None
