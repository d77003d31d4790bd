"""Evaluation and prediction: metrics against hand counts, real run folders, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tlstudio.core.evaluation import evaluate as ev
from tlstudio.core.runs.folder import ModelSpec, RunInfo, write_run

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- stand-ins
# backbones.py / weights.py / dataset.py are written by other owners in parallel. When one is
# not importable yet, a minimal stand-in that follows docs/INTERFACES.md is installed for the
# test only; once the real module exists it is used unchanged.


@pytest.fixture
def core_modules():
    """The data module (scan, Sample, match_classes) the evaluation tests build samples with."""
    from tlstudio.core.data import dataset

    return dataset


# --------------------------------------------------------------------------- a real run folder


def make_run(run_dir: Path, data_dir: Path, *, backbone="test_resnet", image_size=48, steps=8, seed=0):
    """A finished-looking run folder: a tiny timm model trained a few steps on `data_dir`."""
    import timm
    import torch

    from tlstudio.core.atomic import atomic_save_safetensors, atomic_write_json
    from tlstudio.core.data.dataset import Split, match_classes, scan

    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    samples = match_classes(scan(data_dir), classes).samples
    val = samples[::4]
    train = [s for i, s in enumerate(samples) if i % 4]
    try:
        split = Split(train=train, val=val, test=[], seed=seed, val_fraction=0.25)
    except TypeError:
        split = Split(train, val, [], seed, 0.25)
    spec = ModelSpec(backbone=backbone, num_classes=len(classes), classes=classes, image_size=image_size,
                     interpolation="bilinear", crop_pct=0.95)
    torch.manual_seed(seed)
    model = timm.create_model(backbone, pretrained=False, num_classes=len(classes))
    x, _, _ = ev.load_batch([s.path for s in train], spec)
    x = torch.from_numpy(x)
    y = torch.tensor([s.label for s in train])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(run_dir / "model.safetensors", model.state_dict())
    atomic_write_json(run_dir / "split.json", split.to_json())
    cfg = {"data_dir": str(data_dir), "backbone": backbone, "image_size": image_size, "epochs": 1,
           "seed": seed}
    atomic_write_json(run_dir / "config.json", cfg)
    write_run(run_dir, RunInfo(config=cfg, model=spec, status="finished", seed=seed,
                               data={"root": str(data_dir), "counts": {c: 12 for c in classes},
                                     "n_train": len(train), "n_val": len(val)}))
    return model, spec, split


# --------------------------------------------------------------------------- metrics by hand


def test_report_matches_hand_count():
    classes = ["a", "b", "c"]
    # true labels and predicted classes chosen so the confusion matrix is known:
    # a: 3 right, 1 -> b;  b: 2 right;  c: 1 -> a, 2 right
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    preds = [0, 0, 0, 1, 1, 1, 0, 2, 2]
    probs = np.full((9, 3), 0.1)
    probs[np.arange(9), preds] = 0.8
    probs[3, 0] = 0.15  # the a->b mistake still has the true class second
    paths = [f"img{i}.png" for i in range(9)]
    r = ev.report_from_probs(probs, labels, classes, paths)
    assert r.confusion == [[3, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert r.n == 9
    assert r.accuracy == pytest.approx(7 / 9)
    pa, pb, pc = 3 / 4, 2 / 3, 2 / 2  # precision = tp / predicted
    ra, rb, rc = 3 / 4, 2 / 2, 2 / 3  # recall = tp / support
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    got = {d["name"]: d for d in r.per_class}
    assert got["a"]["precision"] == pytest.approx(pa) and got["a"]["recall"] == pytest.approx(ra)
    assert got["b"]["precision"] == pytest.approx(pb) and got["b"]["recall"] == pytest.approx(rb)
    assert got["c"]["precision"] == pytest.approx(pc) and got["c"]["recall"] == pytest.approx(rc)
    assert [d["support"] for d in r.per_class] == [4, 2, 3]
    assert r.macro_f1 == pytest.approx((f(pa, ra) + f(pb, rb) + f(pc, rc)) / 3)
    assert set(r.top_k) == {1}  # 3 classes: top-3 would always be 1.0
    assert r.top_k[1] == pytest.approx(7 / 9)
    assert {(m["path"], m["true"], m["pred"]) for m in r.misclassified} == {("img3.png", "a", "b"),
                                                                          ("img6.png", "c", "a")}
    assert all(m["confidence"] == pytest.approx(0.8) for m in r.misclassified)
    back = ev.EvalReport.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r
    # the correct ones are kept too (for the confusion matrix's diagonal), per class
    assert sorted(m["path"] for m in r.correct) == sorted(f"img{i}.png" for i in (0, 1, 2, 4, 5, 7, 8))
    assert all(m["true"] == m["pred"] for m in r.correct)


def test_correct_images_are_kept_least_sure_first_and_capped(monkeypatch):
    from tlstudio.core.evaluation import metrics

    monkeypatch.setattr(metrics, "CORRECT_PER_CLASS", 3)
    conf = [0.9, 0.5, 0.7, 0.6, 0.95]
    probs = np.array([[c, 1 - c] for c in conf] + [[0.2, 0.8]])
    r = metrics.report_from_probs(probs, [0] * 5 + [1], ["a", "b"], [f"{i}.png" for i in range(6)])
    assert [m["path"] for m in r.correct if m["true"] == "a"] == ["1.png", "3.png", "2.png"]  # 0.5, 0.6, 0.7
    assert [m["path"] for m in r.correct if m["true"] == "b"] == ["5.png"]
    assert ev.EvalReport.from_json({k: v for k, v in r.to_json().items() if k != "correct"}).correct == []


def test_top_k_with_many_classes():
    classes = [f"c{i}" for i in range(6)]
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05],   # true 1: 2nd
                      [0.4, 0.3, 0.15, 0.1, 0.04, 0.01],  # true 4: 5th
                      [0.1, 0.1, 0.6, 0.1, 0.05, 0.05]])  # true 2: 1st
    r = ev.report_from_probs(probs, [1, 4, 2], classes)
    assert r.top_k == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3), 5: pytest.approx(1.0)}


class _ChannelModel:
    """Stand-in classifier with fixed behaviour: the logit of class k is the mean of channel k."""

    def __new__(cls):
        import torch

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.dummy = torch.nn.Parameter(torch.zeros(1))

            def forward(self, x):
                return x.mean(dim=(2, 3)) + self.dummy

        return M()


def _solid(path: Path, rgb):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), rgb).save(path)
    return path


def test_evaluate_model_known_confusion(tmp_path, core_modules):
    Sample = core_modules.Sample
    R, G, B = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    # folder label, actual colour: red folder has a green image, blue folder a red one
    layout = [("red", R)] * 3 + [("red", G)] + [("green", G)] * 2 + [("blue", B)] * 2 + [("blue", R)]
    classes = ["red", "green", "blue"]
    samples = [Sample(str(_solid(tmp_path / c / f"{i}.png", rgb)), classes.index(c))
               for i, (c, rgb) in enumerate(layout)]
    bad = tmp_path / "red" / "broken.png"
    bad.write_bytes(b"not a png")
    samples.append(Sample(str(bad), 0))
    spec = ModelSpec(backbone="stand-in", num_classes=3, classes=classes, image_size=16)
    r = ev.evaluate_model(_ChannelModel(), spec, samples, batch_size=4)
    assert r.confusion == [[3, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert r.accuracy == pytest.approx(7 / 9) and r.n == 9
    assert [f["path"] for f in r.failures] == [str(bad)]
    assert {Path(m["path"]).parent.name + ":" + m["pred"] for m in r.misclassified} == {"red:green", "blue:red"}


def test_preprocess_matches_timm_eval_transform(shapes3):
    from PIL import Image
    from timm.data import create_transform

    img = Image.open(next((shapes3 / "circle").iterdir())).convert("RGB").resize((57, 43))
    for interp, crop_pct, mode in (("bilinear", 0.95, "center"), ("bicubic", 0.875, "center"),
                                   ("bicubic", 1.0, "squash")):
        spec = ModelSpec(backbone="x", num_classes=2, classes=["a", "b"], image_size=32,
                         interpolation=interp, crop_pct=crop_pct, crop_mode=mode)
        t = create_transform(input_size=(3, 32, 32), is_training=False, interpolation=interp,
                             mean=spec.mean, std=spec.std, crop_pct=crop_pct, crop_mode=mode)
        want = t(img).numpy()
        got = ev.preprocess(img, spec)
        assert got.shape == want.shape == (3, 32, 32)
        assert np.abs(got - want).max() < 1e-5, (interp, crop_pct, mode)
        assert got.dtype == np.float32 and isinstance(got, np.ndarray)  # what predict hands to torch
    # normalisation by hand: a white image is (1 - mean) / std in every pixel, a black one -mean / std
    mean, std = np.array(spec.mean, dtype=np.float64), np.array(spec.std, dtype=np.float64)
    for rgb, want_px in (((255, 255, 255), (1 - mean) / std), ((0, 0, 0), -mean / std)):
        flat = ev.preprocess(Image.new("RGB", (40, 30), rgb), spec)
        assert flat.shape == (3, 32, 32)
        assert np.allclose(flat.reshape(3, -1), want_px[:, None], atol=1e-5), rgb


# --------------------------------------------------------------------------- run folders


def test_evaluate_run_on_split_and_folder(tmp_path, shapes3, core_modules):
    model, spec, split = make_run(tmp_path / "run", shapes3)
    r = ev.evaluate(tmp_path / "run")
    assert r.n == len(split.val) and r.classes == spec.classes
    assert sum(map(sum, r.confusion)) == r.n
    # the same numbers as scoring the trained model directly
    direct = ev.evaluate_model(model, spec, split.val)
    assert r.accuracy == pytest.approx(direct.accuracy) and r.confusion == direct.confusion
    assert r.accuracy > 1 / 3  # a few steps on an easy task already beat chance
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev.EvalReport.from_json(saved) == r

    rf = ev.evaluate(tmp_path / "run", folder=shapes3)
    assert rf.n == 36 and rf.source == str(shapes3)
    assert [d["support"] for d in rf.per_class] == [12, 12, 12]


def test_predict_files_and_folders_with_bad_file(tmp_path, shapes3, core_modules):
    model, spec, _ = make_run(tmp_path / "run", shapes3)
    circle = sorted((shapes3 / "circle").iterdir())
    bad = tmp_path / "loose" / "b_bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "loose" / "notes.txt").write_text("not an image")  # not an image extension: ignored
    good2 = tmp_path / "loose" / "c_good.png"
    good2.write_bytes(circle[1].read_bytes())
    (tmp_path / "loose" / "a_good.png").write_bytes(circle[2].read_bytes())
    missing = tmp_path / "nope.png"

    preds = ev.predict(tmp_path / "run", [circle[0], missing, tmp_path / "loose"], top_k=5)
    assert [Path(p.path).name for p in preds] == [circle[0].name, "nope.png", "a_good.png", "b_bad.jpg",
                                                  "c_good.png"]
    ok = [p for p in preds if p.error is None]
    assert len(ok) == 3
    assert preds[1].error == "file not found" and preds[1].top == []
    assert preds[3].error and preds[3].top == []
    for p in ok:
        assert len(p.top) == 3  # top-5 asked, 3 classes
        probs = [q for _, q in p.top]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert {c for c, _ in p.top} == set(spec.classes)
    # same answer as running the model by hand on the same image
    import torch
    from PIL import Image

    x = torch.from_numpy(ev.preprocess(Image.open(circle[0]).convert("RGB"), spec))[None]
    with torch.no_grad():
        want = torch.softmax(model(x), 1)[0]
    assert preds[0].top[0][0] == spec.classes[int(want.argmax())]
    assert preds[0].top[0][1] == pytest.approx(float(want.max()), abs=1e-5)
    assert json.loads(json.dumps([p.to_json() for p in preds]))[1]["error"] == "file not found"


def test_measure_latency_positive():
    import timm

    m = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    s = ev.measure_latency(m, 32, batch_size=2, repeats=3, warmup=1)
    assert 0 < s < 5


def test_evaluation_and_prediction_see_the_same_pixels_whatever_the_set_size(tmp_path, shapes3, core_modules):
    """One preprocessing path: a large evaluation (many batches, threaded decoding) gives each image
    exactly the probabilities predict() gives it one at a time; a broken file is reported once."""
    model, spec, run = make_run(tmp_path / "run", shapes3, steps=2)
    samples = list(core_modules.match_classes(core_modules.scan(shapes3), spec.classes).samples)
    bad = shapes3 / "circle" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG broken")
    samples.append(type(samples[0])(str(bad), 0))
    probs, labels, paths, failures = ev.run_samples(ev.torch_forward(model), spec, samples, batch_size=4)
    assert len(paths) == len(samples) - 1 and [f["path"] for f in failures] == [str(bad)]
    import numpy as np

    for path, row in list(zip(paths, probs))[::7]:
        x, ok, _ = ev.load_batch([path], spec)
        single = ev.softmax(np.asarray(ev.torch_forward(model)(x), dtype=np.float64))[0]
        assert ok == [0] and np.allclose(single, row, atol=1e-5), path
