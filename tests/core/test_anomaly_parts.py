"""Anomaly detection parts: coreset vs brute force, kNN scoring, thresholds, layout scan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.core.anomaly_data import make_mvtec
from tlstudio.core.data.dataset import DatasetError
from tlstudio.core.tasks.anomaly import coreset as cs
from tlstudio.core.tasks.anomaly import model as am
from tlstudio.core.tasks.anomaly.data import detect, layout_of, scan_anomaly, scan_test
from tlstudio.core.tasks.anomaly.threshold import (
    auroc,
    binary_report,
    f1_optimal_threshold,
    false_alarm_threshold,
    normal_scale,
)


def _radius(x: np.ndarray, centers) -> float:
    d = np.linalg.norm(x[:, None, :] - x[list(centers)][None], axis=-1)
    return float(d.min(1).max())


def test_greedy_k_center_within_twice_the_brute_force_optimum():
    rng = np.random.default_rng(1)
    for trial in range(3):
        # clustered points: a bad picker (random, or first-k) is far worse than 2x optimal
        centers = rng.normal(0, 10, (4, 5))
        x = np.concatenate([c + rng.normal(0, 0.3, (4, 5)) for c in centers]).astype(np.float32)
        k = 4
        best = min(_radius(x, c) for c in itertools.combinations(range(len(x)), k))
        sel = cs.k_center_greedy(torch.from_numpy(x), k, projection_dim=None, seed=trial)
        assert len(set(sel.tolist())) == k
        got = _radius(x, sel.tolist())
        assert got <= 2 * best + 1e-5
        assert got == pytest.approx(cs.coverage_radius(torch.from_numpy(x), sel), rel=1e-4)
        # one center per cluster: the greedy picks the farthest point each time
        assert got < 3.0


def test_greedy_matches_reference_greedy_and_projection_keeps_quality():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)).astype(np.float32)
    sel = cs.k_center_greedy(torch.from_numpy(x), 20, projection_dim=None, seed=3).tolist()
    ref = [sel[0]]  # plain numpy greedy from the same start
    d = np.linalg.norm(x - x[sel[0]], axis=1)
    for _ in range(19):
        j = int(d.argmax())
        ref.append(j)
        d = np.minimum(d, np.linalg.norm(x - x[j], axis=1))
    assert sel == ref
    # 12 tight clusters in 40-d: the projected greedy still finds every cluster, random picks miss some
    c = rng.normal(0, 5, (12, 40))
    xc = torch.from_numpy(np.concatenate([m + rng.normal(0, 0.1, (25, 40)) for m in c]).astype(np.float32))
    proj = cs.k_center_greedy(xc, 12, projection_dim=16, seed=3)
    assert sorted(int(i) // 25 for i in proj) == list(range(12))
    rand = torch.from_numpy(np.random.default_rng(5).choice(300, 12, replace=False))
    assert cs.coverage_radius(xc, proj) < 0.5 * cs.coverage_radius(xc, rand)


def test_streaming_bank_respects_cap_and_stop():
    torch.manual_seed(0)
    bank = cs.StreamingBank(0.5, 100, projection_dim=8)
    for _ in range(6):
        bank.add(torch.randn(120, 12))
        assert bank.rows <= 2 * 100 + 60
    out = bank.finish()
    assert out.shape == (100, 12) and bank.seen == 720 and bank.reductions >= 1
    import threading

    ev = threading.Event()
    ev.set()
    with pytest.raises(cs.Stopped):
        cs.k_center_greedy(torch.randn(2000, 8), 600, stop=ev, every=16)
    assert cs.expected_bank(784, 200, 0.1, 16384) == 15680
    assert cs.expected_bank(784, 1000, 0.1, 16384) == 16384


def test_streaming_bank_with_expected_rows_reduces_once_and_covers_like_one_greedy():
    torch.manual_seed(1)
    chunks = [torch.randn(120, 12) for _ in range(6)]
    full = torch.cat(chunks)
    direct = cs.coverage_radius(full, cs.k_center_greedy(full, 100, projection_dim=None))
    bank = cs.StreamingBank(0.5, 100, projection_dim=None, expected_rows=720)
    assert bank.share == pytest.approx(2 * 100 / 720)  # each chunk keeps its share of twice the cap
    for c in chunks:
        bank.add(c)
    assert bank.reductions == 0 and 180 <= bank.rows <= 2 * 100 + 6
    out = bank.finish()
    assert out.shape == (100, 12) and bank.reductions == 1
    sel = [int(torch.cdist(r[None], full).argmin()) for r in out]  # rows of the bank are rows of the data
    got = cs.coverage_radius(full, torch.tensor(sel))
    assert got <= 1.3 * direct
    # a small fit (ratio binds before the cap): the share is the ratio, as before
    assert cs.StreamingBank(0.1, 16384, expected_rows=784 * 100).share == 0.1


def test_knn_head_equals_brute_force_over_several_bank_chunks(monkeypatch):
    monkeypatch.setattr(am, "BANK_CHUNK", 7)
    torch.manual_seed(0)
    bank = torch.randn(30, 6)
    f = torch.randn(2, 6, 3, 4)
    got = am.PatchCoreHead(bank)(f)
    q = f.permute(0, 2, 3, 1).reshape(-1, 6)
    want = torch.cdist(q, bank).min(1).values.reshape(2, 3, 4)
    assert torch.allclose(got, want, atol=1e-4)
    # a query equal to a bank row is at distance 0
    f2 = bank[5].view(1, 6, 1, 1)
    assert float(am.PatchCoreHead(bank)(f2)) == pytest.approx(0.0, abs=1e-3)


def test_patch_features_neighbourhood_setting():
    import timm

    from tlstudio.core.models.features import feature_maps, stage_indices_for_strides
    from tlstudio.core.tasks.anomaly.config import AnomalyConfig

    m = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    idx = stage_indices_for_strides(m, (8, 16))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        raw = feature_maps(m, x, idx)
        none = am.patch_features(m, x, idx, aggregate=1)
        agg3 = am.patch_features(m, x, idx, aggregate=3)
    c0 = raw[0].shape[1]
    assert none.shape == agg3.shape == (1, c0 + raw[1].shape[1], 8, 8)
    assert torch.allclose(none[:, :c0], raw[0])  # 1: the finest stage as it is
    # 3: an interior patch of the finest stage is the mean of its 3x3 neighbours
    assert torch.allclose(agg3[0, :c0, 3, 4], raw[0][0, :, 2:5, 3:6].mean((1, 2)), atol=1e-5)
    with pytest.raises(ValueError):
        AnomalyConfig(data_dir=".", aggregate=2)


def test_false_alarm_threshold_on_known_scores():
    s = np.arange(1, 101, dtype=float)  # 100 good parts
    t = false_alarm_threshold(s, 0.05)
    assert (s > t).sum() == 5
    assert (s > false_alarm_threshold(s, 0.01)).sum() == 1
    t0 = false_alarm_threshold(s, 0.001)  # below 1/n: above every good score
    assert t0 > 100 and (s > t0).sum() == 0
    scale = normal_scale(s, t)
    assert scale == pytest.approx(t - 50.5)
    assert am.normalise_np(t, t, scale) == pytest.approx(0.5)
    assert am.normalise_np(t + scale, t, scale) > 0.9 and am.normalise_np(50.5, t, scale) < 0.1
    assert am.raw_from_normalised(0.5, t, scale) == pytest.approx(t)


def test_few_held_out_scores_keep_the_false_alarm_rate_near_the_setting():
    """With 6 held-out good scores a 1% setting cannot be read off the scores. Just above their
    maximum, a new good image would be flagged about 1/7 of the time; the prediction bound keeps
    it near 1%. Measured here on 2,000 draws of normal scores."""
    from tlstudio.core.tasks.anomaly.threshold import t_quantile

    # Student's t quantiles from printed tables (3 decimals), odd and even degrees of freedom
    for p, dof, table in ((0.99, 3, 4.541), (0.99, 5, 3.365), (0.95, 19, 1.729), (0.999, 10, 4.144),
                          (0.975, 1, 12.706), (0.995, 2, 9.925), (0.9995, 4, 8.610)):
        assert t_quantile(p, dof) == pytest.approx(table, abs=1e-3)
    rng = np.random.default_rng(0)
    above_max, bounded = [], []
    for _ in range(2000):
        held = rng.normal(50, 5, 6)
        new_good = rng.normal(50, 5, 50)
        t = false_alarm_threshold(held, 0.01)
        assert t > held.max()  # never below a held-out good score
        bounded.append((new_good > t).mean())
        above_max.append((new_good > held.max() + 0.01 * (held.max() - held.min())).mean())
    assert 0.005 < np.mean(bounded) < 0.02  # about the 1% asked for
    assert np.mean(above_max) > 0.1  # what the maximum alone gave: about 1/(n+1)
    three = false_alarm_threshold(np.array([1.0, 2.0, 3.0]), 0.01)  # too few for a spread
    assert three == pytest.approx(3.02)


def test_auroc_f1_and_report():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([1, 2], [0, 0]) is None
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.25])
    y = np.array([0, 0, 0, 1, 1, 1])
    thr, f1 = f1_optimal_threshold(s, y)
    rep = binary_report(s, y, thr)
    assert rep["f1"] == pytest.approx(f1)
    assert f1 == pytest.approx(max(binary_report(s, y, c)["f1"] for c in np.r_[s - 1e-9, s + 1e-9]))
    assert binary_report(s, y, 0.5) == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "false_alarm_rate": 0.0, "accuracy": 5 / 6,
         "tp": 2, "fp": 0, "fn": 1, "tn": 3})


def test_mvtec_layout_scan_with_bad_file_and_masks(tmp_path):
    root = make_mvtec(tmp_path / "bottle", n_train=6, n_good=2, n_defect=2, size=32)
    (root / "train" / "good" / "broken.png").write_bytes(b"not an image")
    (root / "ground_truth" / "scratch" / "001_mask.png").unlink()
    assert layout_of(root) == "mvtec"
    line = detect(str(root))
    assert line.startswith("7 normal training images")  # detect() counts by name: the broken file too
    assert "2 defect types" in line and "MVTec" in line
    data = scan_anomaly(root)
    assert len(data.normal) == 6
    assert [s.path.endswith("broken.png") for s in data.skipped] == [True]
    assert data.defect_types == ["blob", "scratch"]
    assert data.counts() == {"normal": 6, "test_good": 2, "blob": 2, "scratch": 2}
    assert data.n_masks == 3
    assert any("no mask" in w for w in data.warnings)
    by_name = {(t.defect, t.path.rsplit("/", 1)[-1]): t for t in data.test}
    assert by_name[("blob", "000.png")].mask.endswith("ground_truth/blob/000_mask.png")
    assert by_name[("good", "000.png")].label == 0 and by_name[("good", "000.png")].mask is None
    test, _ = scan_test(root)
    assert len(test) == 6 and sum(t.label for t in test) == 4


def test_other_layouts(tmp_path, shapes3):
    assert layout_of(shapes3) is None and detect(str(shapes3)) is None  # 3 class folders: classification
    with pytest.raises(DatasetError, match="several classes"):
        scan_anomaly(shapes3)
    plain = tmp_path / "parts"
    make_mvtec(tmp_path / "m", n_train=5, n_good=0, n_defect=1, size=32)
    (tmp_path / "m" / "train" / "good").rename(plain)
    assert layout_of(plain) == "normal" and "5 images of one kind" in detect(str(plain))
    gd = tmp_path / "gd"
    gd.mkdir()
    (tmp_path / "m" / "test" / "blob").rename(gd / "blob")
    plain.rename(gd / "good")
    assert layout_of(gd) == "good_defects"
    data = scan_anomaly(gd)
    assert len(data.normal) == 5 and data.defect_types == ["blob"]
    few = tmp_path / "few"
    few.mkdir()
    (gd / "blob" / "000.png").rename(few / "a.png")
    with pytest.raises(DatasetError, match="at least"):
        scan_anomaly(few)
