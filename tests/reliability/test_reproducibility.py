"""Issue 6, "Reproducibility": the same seed and config give the same metrics and weights;
the run records its seeds and library versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tlstudio.core.runs import folder as runs
from tlstudio.core.events import drive
from tlstudio.core.config import TrainConfig
from tlstudio.core.training.engine import fit
from tlstudio.core.data.synthetic import make_synthetic_folder

METRICS = ("epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1", "lr", "trainable_params")


def run_all(gen):
    return drive(gen)


def settings(**kw) -> dict:
    base = dict(backbone="test_resnet", init="scratch", image_size=48, epochs=2, batch_size=4, freeze="none",
                lr=3e-3, augment="light", seed=7, warmup_epochs=0.5, early_stop_patience=None, precision="fp32",
                workers=0, cache="off",
                leave_one_core=True)  # one torch thread: two crawl on a shared, busy CPU
    base.update(kw)
    return base


def train(data, out, **kw):
    info = run_all(fit(TrainConfig(data_dir=str(data), out_dir=str(out), **settings(**kw))))
    assert info.status == "finished"
    return info


def metrics(run_dir):
    return [[r[k] for k in METRICS] for r in runs.read_history(run_dir)]


def weights(run_dir) -> dict[str, torch.Tensor]:
    best = load_file(str(run_dir / runs.BEST_WEIGHTS))
    last = torch.load(run_dir / runs.LAST_CKPT, map_location="cpu", weights_only=True)["model"]
    return {**{f"best.{k}": v for k, v in best.items()}, **{f"last.{k}": v for k, v in last.items()}}


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def data(tmp_path):
    return make_synthetic_folder(tmp_path / "d", per_class=6, size=48)


def test_same_seed_same_metrics_and_weights(tmp_path, data):
    train(data, tmp_path / "a")
    train(data, tmp_path / "b")
    assert len(metrics(tmp_path / "a")) == 2
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert (tmp_path / "a" / runs.SPLIT_JSON).read_text() == (tmp_path / "b" / runs.SPLIT_JSON).read_text()
    # and the seed matters: another seed is another run (so the equality above is not vacuous)
    train(data, tmp_path / "c", seed=8)
    assert not same_weights(weights(tmp_path / "a"), weights(tmp_path / "c"))
    assert metrics(tmp_path / "a") != metrics(tmp_path / "c")


def test_loader_threads_do_not_change_the_result(tmp_path, data):
    train(data, tmp_path / "w0", workers=0)
    train(data, tmp_path / "w2", workers=2)
    assert metrics(tmp_path / "w0") == metrics(tmp_path / "w2")
    assert same_weights(weights(tmp_path / "w0"), weights(tmp_path / "w2"))


def test_same_result_in_a_fresh_process_with_other_hash_seed(tmp_path, data):
    """Nothing may depend on Python's per-process string hashing (set/dict order of paths...)."""
    train(data, tmp_path / "here")
    base = tmp_path / "settings.json"
    base.write_text(json.dumps(settings()), encoding="utf-8")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "TLSTUDIO_HOME": str(tmp_path / "home2")}
    res = subprocess.run([sys.executable, "-m", "tlstudio", "train", str(data), "--config", str(base),
                          "--out", str(tmp_path / "there"), "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout)["status"] == "finished"
    assert metrics(tmp_path / "here") == metrics(tmp_path / "there")
    assert same_weights(weights(tmp_path / "here"), weights(tmp_path / "there"))


def test_run_records_seeds_and_library_versions(tmp_path, data):
    import platform

    import timm

    import tlstudio

    train(data, tmp_path / "run", seed=11, epochs=1)
    raw = json.loads((tmp_path / "run" / runs.RUN_JSON).read_text(encoding="utf-8"))
    assert raw["seed"] == 11 and raw["config"]["seed"] == 11
    expected = {"tlstudio": tlstudio.__version__, "torch": torch.__version__, "timm": timm.__version__,
                "python": platform.python_version()}
    assert {k: raw["versions"].get(k) for k in expected} == expected
    split = json.loads((tmp_path / "run" / runs.SPLIT_JSON).read_text(encoding="utf-8"))
    assert split["seed"] == 11  # the split seed (defaults to the run seed) is saved with the split
    # the saved config alone reproduces the run
    again = TrainConfig.from_json_file(tmp_path / "run" / runs.CONFIG_JSON)
    assert again.seed == 11 and again.augment == "light"


def test_caches_do_not_change_the_result(tmp_path, data):
    """A cold cache, a warm cache (second run on the same data) and no cache: the same run."""
    train(data, tmp_path / "off", cache="off")
    train(data, tmp_path / "cold", cache="auto")
    train(data, tmp_path / "warm", cache="auto")
    for name in ("cold", "warm"):
        assert metrics(tmp_path / name) == metrics(tmp_path / "off"), name
        assert same_weights(weights(tmp_path / name), weights(tmp_path / "off")), name


def test_feature_cache_cold_and_warm_give_the_same_head(tmp_path, data):
    """Head-only training on cached features: rebuilding the cache or reusing it from disk
    (the second run) trains the very same head."""
    train(data, tmp_path / "cold", freeze="head", cache="auto", epochs=3)
    train(data, tmp_path / "warm", freeze="head", cache="auto", epochs=3)
    log = (tmp_path / "warm" / runs.LOG_TXT).read_text(encoding="utf-8")
    assert "Feature cache (reused)" in log  # the second run really took the warm path
    assert metrics(tmp_path / "cold") == metrics(tmp_path / "warm")
    assert same_weights(weights(tmp_path / "cold"), weights(tmp_path / "warm"))
