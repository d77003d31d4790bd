"""models.features.StageCapture: a stage's output read during the (wrapped) model's own forward.

Plain model, torch.compile (names gain ``_orig_mod.``; a compiled graph traced before the hook
existed never calls it), DDP in a one-process gloo group (names gain ``module.``; the gradient of
a loss on the captured stage reaches the body through the wrapper), distillation's hint loss
unchanged against a reference built from plain torch forward hooks, and the hint under torchrun
(2 gloo processes: the student's and the adapter's gradients averaged over the processes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from tlstudio.core.models.features import (
    FeatureError,
    StageCapture,
    feature_info,
    feature_maps,
    is_compiled,
    resolve_stage,
    unwrap,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _resnet(seed: int = 0, classes: int = 3):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", pretrained=False, num_classes=classes)


def _x(n: int = 4, size: int = 32, seed: int = 1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ resolving a stage spec
def test_resolve_stage_by_index_name_and_wrapper_prefixes():
    m = _resnet()
    info = feature_info(m)
    deepest = resolve_stage(m, "-1")
    assert (deepest.module, deepest.index, deepest.channels) == (info[-1]["module"], len(info) - 1, info[-1]["channels"])
    assert resolve_stage(m, 2).module == info[2]["module"]
    # a module name, also as it appears inside DDP / torch.compile wrappers
    for spec in ("layer3", "module.layer3", "_orig_mod.layer3", "module._orig_mod.layer3"):
        st = resolve_stage(m, spec)
        assert st.module == "layer3" and st.index == [d["module"] for d in info].index("layer3")
    assert resolve_stage(m, "layer3.0.conv1").index is None  # a module feature_info does not list
    with pytest.raises(FeatureError, match=r"stage 9 does not exist; stages are 0\.\.4"):
        resolve_stage(m, "9")
    with pytest.raises(FeatureError, match="nope"):
        resolve_stage(m, "nope")


# ------------------------------------------------------------------ plain model
def test_capture_on_a_plain_model_is_the_stage_map_from_the_same_forward():
    m = _resnet().eval()
    x = _x()
    idx = 2
    with StageCapture(m, str(idx)) as cap, torch.no_grad():
        out, feat = cap(m, x)
        # timm's own forward_intermediates gives the same stage; the output is the normal forward's
        assert torch.equal(out, m(x))
        assert torch.allclose(feat, feature_maps(m, x, [idx])[0], atol=1e-6)
        assert feat.shape[1] == feature_info(m)[idx]["channels"]
        # a forward outside cap(...) keeps nothing
        m(x)
        assert cap.value is None
    # closed: the hook is gone
    assert not m.get_submodule(cap.stage.module)._forward_hooks


def test_capture_refuses_another_model():
    a, b = _resnet(0), _resnet(1)
    cap = StageCapture(a, "1")
    with pytest.raises(FeatureError, match="another model"):
        cap(b, _x())
    cap.close()


# ------------------------------------------------------------------ torch.compile
def test_capture_through_torch_compile_traced_before_the_hook():
    m = _resnet().eval()
    x = _x()
    with torch.no_grad():
        ref_out = m(x)
        ref_feat = feature_maps(m, x, [2])[0]
    compiled = torch.compile(m, backend="eager")
    assert is_compiled(compiled) and unwrap(compiled) is m
    assert "_orig_mod.layer2" in dict(compiled.named_modules())  # the prefix a name lookup would miss
    try:
        with torch.no_grad():
            compiled(x)  # the engine compiles (and runs an example) before the objective's setup
        with StageCapture(compiled, "2") as cap, torch.no_grad():
            assert cap.stage.module == "layer2"
            out, feat = cap(compiled, x)
            assert torch.allclose(out, ref_out, atol=1e-5)
            assert torch.allclose(feat, ref_feat, atol=1e-5)
            out2, feat2 = cap(compiled, x)  # again: the traced graph keeps calling the hook
            assert torch.allclose(feat2, ref_feat, atol=1e-5)
            compiled(x)
            assert cap.value is None  # unarmed compiled forwards keep nothing either
    finally:
        torch.compiler.reset()


# ------------------------------------------------------------------ DDP (one gloo process)
@pytest.fixture
def gloo_group(tmp_path: Path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _hint_like_loss(out, feat, y):
    return torch.nn.functional.cross_entropy(out, y) + feat.pow(2).mean()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_capture_through_ddp_gradient_reaches_the_body(gloo_group):
    from torch.nn.parallel import DistributedDataParallel

    x, y = _x(), torch.tensor([0, 1, 2, 0])
    plain = _resnet()
    ref_cap = StageCapture(plain, "2")
    out, feat = ref_cap(plain, x)
    _hint_like_loss(out, feat, y).backward()
    ref = _grads(plain)
    ref_cap.close()

    inner = _resnet()  # same seed: same weights
    ddp = DistributedDataParallel(inner)
    assert "module.layer2" in dict(ddp.named_modules())
    with StageCapture(ddp, "2") as cap:
        assert cap.stage.module == "layer2" and unwrap(ddp) is inner
        out, feat = cap(ddp, x)  # the wrapper's own forward: DDP's reducer sees this graph
        _hint_like_loss(out, feat, y).backward()
    got = _grads(inner)
    assert set(got) == set(ref)
    for name in ref:  # every gradient equals the plain model's (one process: DDP's mean is itself)
        assert torch.allclose(got[name], ref[name], atol=1e-6), name
    # the stage term really is in the body's gradients (not only the logits' cross-entropy);
    # the stem's weights are before the stage (timm zeroes each block's last BN: its convs get 0)
    stem = "conv1.0.weight"
    assert float(got[stem].abs().sum()) > 0
    plain.zero_grad()
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    assert not torch.allclose(plain.get_parameter(stem).grad, got[stem], atol=1e-6)


def test_capture_through_ddp_around_a_compiled_model(gloo_group):
    """The engine's order with compile on under torchrun: DDP(torch.compile(model))."""
    from torch.nn.parallel import DistributedDataParallel

    x, y = _x(), torch.tensor([0, 1, 2, 0])
    plain = _resnet()
    with StageCapture(plain, "-1") as ref_cap:
        out, feat = ref_cap(plain, x)
        _hint_like_loss(out, feat, y).backward()
    ref = _grads(plain)
    inner = _resnet()
    wrapped = DistributedDataParallel(torch.compile(inner, backend="eager"))
    try:
        # traced before the hook, in the mode of the step below (no retrace from a mode change)
        wrapped(x).sum().backward()
        inner.zero_grad(set_to_none=True)
        with StageCapture(wrapped, "-1") as cap:
            assert cap.stage.module == "layer4" and unwrap(wrapped) is inner
            out, feat = cap(wrapped, x)
            _hint_like_loss(out, feat, y).backward()
        got = _grads(inner)
        assert set(got) == set(ref)
        for name in ref:
            assert torch.allclose(got[name], ref[name], atol=1e-5), name
        assert float(got["conv1.0.weight"].abs().sum()) > 0
    finally:
        torch.compiler.reset()


# ------------------------------------------------------------------ distillation's hint loss
def test_distill_hint_loss_is_what_plain_forward_hooks_give(tmp_path):
    """DistillObjective.loss through StageCapture equals the loss computed from forward hooks on
    the named modules (how the hint read stages before), on a plain and on a compiled student."""
    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.runs.folder import ModelSpec, RunInfo
    from tlstudio.core.tasks.distill import DistillConfig, DistillObjective, Teacher
    from tlstudio.core.tasks.distill.losses import _as_map, hint_loss, kd_loss
    from tlstudio.core.training.objectives import ObjectiveContext

    classes = ["a", "b", "c"]
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval().requires_grad_(False)
    x, y = _x(6), torch.tensor([0, 1, 2, 0, 1, -1])

    def objective_for(student_module):
        cfg = DistillConfig(data_dir=str(tmp_path), teachers=["t"], augment="light", feature_loss="3:-1",
                            feature_weight=0.5, temperature=3.0, alpha=0.6, backbone="test_efficientnet",
                            image_size=32)
        spec = ModelSpec(backbone="test_resnet", num_classes=3, classes=classes, image_size=32)
        obj = DistillObjective(cfg, teachers=[Teacher("t", teacher, RunInfo(config={}, model=spec), None)])
        ctx = ObjectiveContext(model=student_module, device=torch.device("cpu"), classes=classes, precision=None,
                               config=None, train_samples=[Sample(f"s{i}", 0) for i in range(6)],
                               features_mode=False, run_dir=Path(tmp_path))
        list(obj.setup(ctx))
        return obj

    torch.manual_seed(1)
    student = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).train()
    obj = objective_for(student)
    assert (obj._t_cap.stage.module, obj._s_cap.stage.module) == ("layer3", feature_info(student)[-1]["module"])
    torch.manual_seed(2)
    obj.adapter.reset_parameters()
    loss, parts = obj.loss(student, x, y, torch.arange(6))
    loss.backward()
    got_grad = student.conv_stem.weight.grad.clone()

    # the reference: forward hooks registered by name, as the distill objective used to
    seen = {}
    hs = [teacher.get_submodule("layer3").register_forward_hook(lambda m, i, o: seen.__setitem__("t", o)),
          student.get_submodule(obj._s_cap.stage.module).register_forward_hook(lambda m, i, o: seen.__setitem__("s", o))]
    student.zero_grad()
    logits = student(x)
    with torch.no_grad():
        t_logits = teacher(x)
    for h in hs:
        h.remove()
    ref_kd, ref_parts = kd_loss(logits, t_logits, y, T=3.0, alpha=0.6, label_smoothing=obj.config.label_smoothing)
    ref_hint = 0.5 * hint_loss(obj.adapter(_as_map(seen["s"])), seen["t"])
    (ref_kd + ref_hint).backward()
    assert parts["feature"] == float(ref_hint.detach())
    assert (parts["soft"], parts["hard"]) == (ref_parts["soft"], ref_parts["hard"])
    assert float(loss.detach()) == pytest.approx(float((ref_kd + ref_hint).detach()), rel=1e-6)
    assert torch.allclose(student.conv_stem.weight.grad, got_grad, atol=1e-6)

    # the same student (a fresh copy: no hook of the objective above) compiled and traced before
    # the objective's setup: the same hint
    torch.manual_seed(1)
    twin = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).train()
    compiled = torch.compile(twin, backend="eager")
    try:
        compiled(x)  # traced in training mode with gradients: the mode of the loss below
        obj_c = objective_for(compiled)
        obj_c.adapter.load_state_dict(obj.adapter.state_dict())
        loss_c, parts_c = obj_c.loss(compiled, x, y, torch.arange(6))
        assert parts_c["feature"] == pytest.approx(parts["feature"], rel=1e-5)
        assert float(loss_c.detach()) == pytest.approx(float(loss.detach()), rel=1e-5)
    finally:
        torch.compiler.reset()


# ------------------------------------------------------------------ the hint under torchrun (2 processes)
def _hint_setup(rank: int, wrap=None):
    """The same teacher, student and adapter on every process, rank ``rank``'s own images; the
    objective set up on ``wrap(student)`` (the engine's DDP wrapper) when given."""
    import os

    from tlstudio.core.data.dataset import Sample
    from tlstudio.core.runs.folder import ModelSpec, RunInfo
    from tlstudio.core.tasks.distill import DistillConfig, DistillObjective, Teacher
    from tlstudio.core.training.objectives import ObjectiveContext

    classes = ["a", "b", "c"]
    torch.manual_seed(0)
    teacher = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval().requires_grad_(False)
    torch.manual_seed(1)
    student = timm.create_model("test_efficientnet", pretrained=False, num_classes=3)
    module = wrap(student) if wrap is not None else student
    cfg = DistillConfig(data_dir=os.getcwd(), teachers=["t"], augment="light", feature_loss="3:-1",
                        feature_weight=1.0, backbone="test_efficientnet", image_size=32)
    spec = ModelSpec(backbone="test_resnet", num_classes=3, classes=classes, image_size=32)
    obj = DistillObjective(cfg, teachers=[Teacher("t", teacher, RunInfo(config={}, model=spec), None)])
    ctx = ObjectiveContext(model=module, device=torch.device("cpu"), classes=classes, precision=None, config=None,
                           train_samples=[Sample(f"s{i}", 0) for i in range(8)], features_mode=False,
                           run_dir=Path(os.getcwd()), full_model=student)
    torch.manual_seed(2)  # the adapter's initial weights
    list(obj.setup(ctx))
    g = torch.Generator().manual_seed(100 + rank)
    x, y = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0])
    return student, module, obj, x, y


def _student_grads(student, obj) -> dict:
    return {**{f"body.{k}": p.grad.clone() for k, p in student.named_parameters() if p.grad is not None},
            **{f"adapter.{k}": p.grad.clone() for k, p in obj.adapter.named_parameters()}}


def _hint_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as tdist

    from tlstudio.core.runtime.parallel import distributed_context, wrap_ddp

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    student, ddp, obj, x, y = _hint_setup(rank, lambda m: wrap_ddp(m, distributed_context(), torch.device("cpu")))
    ddp.train()
    loss, parts = obj.loss(ddp, x, y, torch.arange(4))
    assert "feature" in parts
    loss.backward()
    torch.save(_student_grads(student, obj), Path(out_dir) / f"rank{rank}.pt")
    tdist.barrier()  # no collective in flight when gloo's threads are torn down (a rare SIGABRT)
    tdist.destroy_process_group()


def test_hint_under_torchrun_averages_body_and_adapter_gradients(tmp_path):
    """Under DDP the student's and the hint adapter's gradients are averaged over the processes
    (logits and stage feature from one forward through the DDP wrapper; the adapter, an extra
    module outside the engine's wrapper, goes through DDP with the student)."""
    import torch.multiprocessing as mp

    mp.spawn(_hint_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g0, g1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    local = []
    for rank in (0, 1):  # the same step in one process on each rank's images, without DDP
        student, module, obj, x, y = _hint_setup(rank)
        student.train()
        obj.loss(student, x, y, torch.arange(4))[0].backward()
        local.append(_student_grads(student, obj))
    assert set(g0) == set(local[0]) and "adapter.weight" in g0
    assert not torch.allclose(local[0]["adapter.weight"], local[1]["adapter.weight"])  # different images
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-6), k  # every process took the same step
        assert torch.allclose(g0[k], (local[0][k] + local[1][k]) / 2, atol=1e-5, rtol=1e-4), k
