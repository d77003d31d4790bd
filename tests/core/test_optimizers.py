"""The run's optimiser: fused where torch has the kernels, same updates, resumable from old state."""

import copy

import pytest
import torch

from tlstudio.core.training.optimizers import load_optimizer_state, make_optimizer


def _groups(seed=0):
    g = torch.Generator().manual_seed(seed)
    body = torch.nn.Parameter(torch.randn(5, 4, generator=g))
    head = torch.nn.Parameter(torch.randn(3, generator=g))
    frozen = torch.nn.Parameter(torch.randn(2, generator=g), requires_grad=False)  # never gets a grad
    return [{"params": [body, frozen], "lr": 1e-3, "weight_decay": 0.05}, {"params": [head], "lr": 1e-2}]


def _run(opt, groups, steps=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for grp in groups:
            for p in grp["params"]:
                if p.requires_grad:
                    p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for grp in groups for p in grp["params"]]


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_fused_on_cpu_and_same_updates_as_the_default(kind):
    fused_groups, plain_groups = _groups(), _groups()
    fused = make_optimizer(fused_groups, kind, 1e-3)
    assert all(g["fused"] for g in fused.param_groups)
    plain = (torch.optim.SGD(plain_groups, lr=1e-3, momentum=0.9, nesterov=True) if kind == "sgd"
             else torch.optim.AdamW(plain_groups, lr=1e-3))
    a, b = _run(fused, fused_groups), _run(plain, plain_groups)
    moved = [not torch.equal(x, y) for x, y in zip(a, [p for grp in _groups() for p in grp["params"]])]
    assert moved == [True, False, True]  # the frozen tensor is left alone
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_integer_parameters_fall_back_to_the_default():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False)]}]
    assert not make_optimizer(groups, "adamw", 1e-3).param_groups[0]["fused"]


def test_resuming_a_state_saved_unfused_stays_fused_and_continues_the_same():
    groups = _groups()
    plain = torch.optim.AdamW(groups, lr=1e-3)
    _run(plain, groups, steps=3)
    state = copy.deepcopy(plain.state_dict())  # as from a checkpoint file (state_dict shares tensors)
    assert not state["param_groups"][0].get("fused")
    resumed_groups = _groups()  # fresh group dicts (torch writes its defaults into the ones it was given)
    for g_new, g_old in zip(resumed_groups, groups):
        for p_new, p_old in zip(g_new["params"], g_old["params"]):
            p_new.data.copy_(p_old.data)
    resumed = make_optimizer(resumed_groups, "adamw", 1e-3)
    load_optimizer_state(resumed, state)
    assert all(g["fused"] for g in resumed.param_groups)
    a = _run(plain, groups, steps=3, seed=7)
    b = _run(resumed, resumed_groups, steps=3, seed=7)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
