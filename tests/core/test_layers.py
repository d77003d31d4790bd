"""Layer groups, freezing, BN statistics, plans and optimiser groups over six timm families."""

from __future__ import annotations

import pytest
import torch

from tlstudio.core.models.backbones import create_model
from tlstudio.core.models.layers import (
    FreezeSpecError,
    apply_freeze,
    count_params,
    frozen_prefix_is_whole_body,
    gradual_plan,
    layer_groups,
    param_groups,
    plan_from_spec,
    set_train_mode,
)
from tlstudio.core.models.train_memory import estimate_train_memory
from tlstudio.core.models.weights import head_prefixes

FAMILIES = ["test_resnet", "test_efficientnet", "mobilenetv3_small_050", "test_convnext", "test_vit", "regnetx_002"]
SIZE = 48


def _model(name, n=3):
    torch.manual_seed(0)
    return create_model(name, n, init="scratch")


def _bn_state(model, names):
    sd = model.state_dict()
    return {k: sd[k].clone() for k in names}


@pytest.mark.parametrize("name", FAMILIES)
def test_groups_partition_params_and_head_is_last(name):
    m = _model(name)
    groups = layer_groups(m)
    all_names = [n for n, _ in m.named_parameters()]
    listed = [n for g in groups for n in g.param_names]
    assert sorted(listed) == sorted(all_names)  # every parameter exactly once
    assert len(groups) >= 4
    assert groups[-1].is_head and not any(g.is_head for g in groups[:-1])
    assert groups[-1].name == "head"
    heads = head_prefixes(m)
    assert set(groups[-1].param_names) == {n for n in all_names if n.startswith(heads)}
    assert groups[0].name == "stem"
    assert all_names[0] in groups[0].param_names  # forward order: the first parameter is in the stem
    assert [g.index for g in groups] == list(range(len(groups)))
    assert sum(g.n_params for g in groups) == count_params(m)[1]
    assert len({g.name for g in groups}) == len(groups)


@pytest.mark.parametrize("name", FAMILIES)
def test_frozen_params_and_bn_stats_bit_identical_after_training(name):
    m = _model(name)
    groups = layer_groups(m)
    trainable, every = plan_from_spec("last:1", groups)
    assert every is None
    apply_freeze(m, groups, trainable)
    frozen_names = {n for g, t in zip(groups, trainable) if not t for n in g.param_names}
    frozen_before = {n: p.detach().clone() for n, p in m.named_parameters() if n in frozen_names}
    train_before = {n: p.detach().clone() for n, p in m.named_parameters() if n not in frozen_names}
    # running statistics belonging to frozen modules
    frozen_mods = {n.rsplit(".", 1)[0] for n in frozen_names}
    stat_keys = [k for k in m.state_dict() if k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                                         "num_batches_tracked")
                 and k.rsplit(".", 1)[0] in frozen_mods]
    stats_before = _bn_state(m, stat_keys)
    # running statistics of BatchNorm layers in the trainable (unfrozen) part of the body
    trainable_mods = {n.rsplit(".", 1)[0] for n, _ in m.named_parameters() if n not in frozen_names}
    live_keys = [k for k in m.state_dict() if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")
                 and k.rsplit(".", 1)[0] in trainable_mods]
    live_before = _bn_state(m, live_keys)
    opt = torch.optim.AdamW(param_groups(m, groups, trainable, lr=1e-2), lr=1e-2)
    torch.manual_seed(1)
    for _ in range(3):
        set_train_mode(m, groups, trainable)
        x = torch.randn(4, 3, SIZE, SIZE)
        y = torch.randint(0, 3, (4,))
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in frozen_names:
            assert torch.equal(p, frozen_before[n]), n
            assert p.grad is None, n
    for k, v in _bn_state(m, stat_keys).items():
        assert torch.equal(v, stats_before[k]), k
    changed = [n for n, p in m.named_parameters() if n not in frozen_names and not torch.equal(p, train_before[n])]
    assert any(n in groups[-1].param_names for n in changed)  # the head learned
    # BN families have BatchNorm in the frozen body (whose statistics stayed put, checked above)
    if name in ("test_resnet", "test_efficientnet", "mobilenetv3_small_050", "regnetx_002"):
        assert stat_keys, "expected frozen BatchNorm statistics in a BN family"
    # ... and the statistics of the trainable BN layers did move (train mode), where the family
    # has BN in its last stage (mobilenetv3's last group is conv_head, convnext/vit use LayerNorm)
    if name in ("test_resnet", "test_efficientnet", "regnetx_002"):
        assert len(live_keys) >= 4
        after = _bn_state(m, live_keys)
        assert [k for k in live_keys if torch.equal(after[k], live_before[k])] == []
    else:
        assert live_keys == []


@pytest.mark.parametrize("name", ["test_resnet", "mobilenetv3_small_050"])
def test_set_train_mode_puts_only_frozen_norms_in_eval(name):
    m = _model(name)
    groups = layer_groups(m)
    trainable, _ = plan_from_spec("head", groups)
    set_train_mode(m, groups, trainable)
    bns = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(not mod.training for _, mod in bns)  # whole body frozen
    assert m.training
    trainable, _ = plan_from_spec("none", groups)
    set_train_mode(m, groups, trainable)
    assert all(mod.training for _, mod in bns)


def test_presets_and_counts():
    m = _model("test_resnet")
    groups = layer_groups(m)
    n = len(groups)
    head, _ = plan_from_spec("head", groups)
    assert head == [False] * (n - 1) + [True]
    apply_freeze(m, groups, head)
    assert count_params(m) == (groups[-1].n_params, sum(g.n_params for g in groups))
    assert frozen_prefix_is_whole_body(head)
    last2, _ = plan_from_spec("last:2", groups)
    assert last2 == [False] * (n - 3) + [True] * 3
    apply_freeze(m, groups, last2)
    assert count_params(m)[0] == sum(g.n_params for g in groups[-3:])
    assert not frozen_prefix_is_whole_body(last2)
    assert plan_from_spec("none", groups)[0] == [True] * n
    assert plan_from_spec("last:99", groups)[0] == [True] * n
    assert plan_from_spec("last:0", groups)[0] == head
    # the head can never be frozen
    apply_freeze(m, groups, [False] * n)
    assert count_params(m)[0] == groups[-1].n_params
    for bad in ("first:2", "gradual:0", "last:x", "everything"):
        with pytest.raises(FreezeSpecError):
            plan_from_spec(bad, groups)


def test_gradual_plan_opens_one_group_every_k_epochs():
    groups = layer_groups(_model("test_resnet"))
    n = len(groups)
    first, every = plan_from_spec("gradual:2", groups)
    assert every == 2 and first == [False] * (n - 1) + [True]
    opened = [sum(gradual_plan(groups, e, 2)) for e in range(12)]
    assert opened[:6] == [1, 1, 2, 2, 3, 3]
    assert max(opened) == n  # eventually everything trains, never more
    # groups open from the top (next to the head) down to the stem
    p = gradual_plan(groups, 4, 2)
    assert p == [False] * (n - 3) + [True] * 3


def test_param_groups_discriminative_lr_and_no_decay():
    m = _model("test_convnext")
    groups = layer_groups(m)
    trainable, _ = plan_from_spec("last:2", groups)
    apply_freeze(m, groups, trainable)
    pg = param_groups(m, groups, trainable, lr=1e-3, body_lr_mult=0.1, weight_decay=0.05)
    in_groups = {id(p) for g in pg for p in g["params"]}
    want = {id(p) for p in m.parameters() if p.requires_grad}
    assert in_groups == want  # frozen ones left out, all trainable present
    names = {id(p): n for n, p in m.named_parameters()}
    for g in pg:
        if g["name"].startswith("head"):
            assert g["lr"] == pytest.approx(1e-3)
        else:
            assert g["lr"] == pytest.approx(1e-4)
        for p in g["params"]:
            if p.ndim <= 1:
                assert g["weight_decay"] == 0.0, names[id(p)]
        if g["weight_decay"]:
            assert all(p.ndim > 1 for p in g["params"])
    # layer-wise decay: deeper body groups learn faster, head fastest
    trainable, _ = plan_from_spec("none", groups)
    apply_freeze(m, groups, trainable)
    pg = param_groups(m, groups, trainable, lr=1e-3, body_lr_mult=0.5, layer_decay=0.7)
    by_name = {}
    for g in pg:
        by_name.setdefault(g["name"].replace(" (no decay)", ""), g["lr"])
    lrs = [by_name[g.name] for g in groups]
    assert lrs == sorted(lrs) and lrs[0] < lrs[-2] < lrs[-1]
    assert lrs[-2] == pytest.approx(5e-4)
    assert lrs[-3] == pytest.approx(5e-4 * 0.7)
    # usable by a real optimiser
    torch.optim.AdamW(pg)


def test_vit_tokens_go_with_stem_and_skip_decay():
    m = _model("test_vit")
    groups = layer_groups(m)
    assert "cls_token" in groups[0].param_names and "pos_embed" in groups[0].param_names
    trainable, _ = plan_from_spec("none", groups)
    pg = param_groups(m, groups, trainable, lr=1e-3)
    pos = dict(m.named_parameters())["pos_embed"]
    g = next(g for g in pg if any(p is pos for p in g["params"]))
    assert g["weight_decay"] == 0.0


def test_memory_estimate_grows_with_trainable_and_batch():
    m = _model("test_efficientnet")
    groups = layer_groups(m)
    head, _ = plan_from_spec("head", groups)
    last2, _ = plan_from_spec("last:2", groups)
    none, _ = plan_from_spec("none", groups)
    e_head = estimate_train_memory(m, groups, head, 8, SIZE)
    e_last = estimate_train_memory(m, groups, last2, 8, SIZE)
    e_none = estimate_train_memory(m, groups, none, 8, SIZE)
    assert e_head < e_last < e_none
    e_none32 = estimate_train_memory(m, groups, none, 32, SIZE)
    e_none1 = estimate_train_memory(m, groups, none, 1, SIZE)
    per_sample = (e_none - e_none1) / 7
    assert per_sample > 0
    assert e_none32 - e_none == pytest.approx(24 * per_sample, rel=1e-6)  # linear in the batch
    assert estimate_train_memory(m, groups, none, 8, 2 * SIZE) > e_none
    total = count_params(m)[1]
    assert e_none > 16 * total  # weights + grads + two AdamW moments, fp32


class _NoMatcher(torch.nn.Module):
    """A model without timm's group_matcher: the automatic fallback grouping must still work."""

    def __init__(self):
        super().__init__()
        layers = []
        c = 3
        for w in (8, 8, 16, 16, 32, 32):
            layers += [torch.nn.Conv2d(c, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU()]
            c = w
        self.features = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(c, 3)
        self.pretrained_cfg = {"classifier": "fc"}

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_fallback_grouping_without_group_matcher():
    torch.manual_seed(0)
    m = _NoMatcher()
    groups = layer_groups(m)
    assert len(groups) >= 3 and groups[-1].is_head
    assert set(groups[-1].param_names) == {"fc.weight", "fc.bias"}
    assert sorted(n for g in groups for n in g.param_names) == sorted(n for n, _ in m.named_parameters())
    trainable, _ = plan_from_spec("head", groups)
    apply_freeze(m, groups, trainable)
    set_train_mode(m, groups, trainable)
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("fc.")}
    opt = torch.optim.AdamW(param_groups(m, groups, trainable, lr=1e-2))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(m(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_param_groups_follow_the_plan_not_requires_grad():
    """The engine freezes first, then builds groups for every parameter so gradual unfreezing
    needs no new optimiser: the plan passed in decides, not the current requires_grad."""
    m = _model("test_resnet")
    groups = layer_groups(m)
    head, _ = plan_from_spec("head", groups)
    apply_freeze(m, groups, head)
    pg = param_groups(m, groups, [True] * len(groups), lr=1e-3)
    assert {id(p) for g in pg for p in g["params"]} == {id(p) for p in m.parameters()}
