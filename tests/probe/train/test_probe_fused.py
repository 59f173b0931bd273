"""Stacked heads and sliced optimisers against the single epcache heads and optimisers (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from epcache.probe.heads import create_head
from epcache.probe.train.optim import build_optimizer, lr_at
from epcache.probe.train.stacked_optim import SlicedOptimizer
from epcache.probe.train.stacks import ModuleStack, cross_entropy_per_config, make_stack

D, C, N = 16, 5, 9
CASES = [
    ("ep", {"queries": 4, "d_out": 1}, "patch"),
    ("ep", {"queries": 2, "d_out": 2}, "patch"),
    ("mhca", {"num_heads": 4}, "patch"),
    ("linear", {"tokens": "gap"}, "gap"),
    ("jepa", {"num_heads": 4}, "patch"),  # no stacked kernel: runs as a module loop
    ("mp", {"hidden": 64, "num_heads": 4}, "all"),  # Moment Probing: CLS + patches, grouped convs
]



def single(kind: str, options: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_head(kind, in_dim=D, num_classes=C, num_tokens=N, num_prefix=1, **options).double()


def head_input(kind: str, x: torch.Tensor) -> torch.Tensor:
    return x[:, 1:].mean(1) if kind == "linear" else x


def single_logits(head: torch.nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    # the linear head reads the full token sequence itself (GAP over the patches after 1 prefix token)
    return head(x)


@pytest.mark.parametrize(("kind", "options", "selection"), CASES)
def test_stack_forward_and_grad_equal_single_heads(kind: str, options: dict, selection: str) -> None:
    heads = [single(kind, options, s) for s in range(3)]
    stack = make_stack([single(kind, options, s) for s in range(3)], selection, [0, 1, 2]).double()
    assert isinstance(stack, ModuleStack) == (kind == "jepa")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (8,), generator=g)
    for training in (True, False, True):
        stack.train(training)
        for h in heads:
            h.train(training)
        got = stack(head_input(kind, x))
        want = torch.stack([single_logits(h, kind, x) for h in heads])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    cross_entropy_per_config(stack(head_input(kind, x)), y).sum().backward()
    sum(F.cross_entropy(single_logits(h, kind, x), y) for h in heads).backward()
    for k, h in enumerate(heads):
        exported = stack.export(k)
        assert exported.keys() == h.state_dict().keys()
        for key, t in h.state_dict().items():  # BN running statistics included
            torch.testing.assert_close(exported[key].double() if t.is_floating_point() else exported[key], t)
        grads = _grads(stack, k)
        for name, p in h.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-10, atol=1e-13)


def test_exported_slice_loads_into_create_head() -> None:
    stack = make_stack([single("ep", {"queries": 4}, s) for s in range(2)], "patch", [0, 1]).double()
    stack.eval()
    x = torch.randn(4, N, D, dtype=torch.float64)
    head = create_head("ep", in_dim=D, num_classes=C, queries=4).double().eval()
    head.load_state_dict(stack.export(1))
    torch.testing.assert_close(head(x), stack(x)[1])


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ("lars", {}),
        ("adamw", {}),
        ("sgd", {}),
        ("adam", {}),  # L2 in the gradient, torch.optim.Adam's weight_decay
        ("sgd", {"momentum": 0.9}),  # the dinov2-linear recipe
        ("adamw", {"betas": (0.9, 0.95)}),  # the capi-attentive recipe
    ],
)
@pytest.mark.parametrize("fused", [True, False])
def test_sliced_optimizer_matches_one_optimizer_per_head(optimizer: str, kwargs: dict, fused: bool) -> None:
    lrs, wds = [0.5, 0.1, 0.02], [0.0, 1e-2, 1e-1]
    heads = [single("ep", {"queries": 4}, s) for s in range(3)]
    copies = [single("ep", {"queries": 4}, s) for s in range(3)]
    with torch.no_grad():  # very different weight scales: LARS's trust ratio must be per config
        for h in (heads[2], copies[2]):
            h.pooling.v.weight.mul_(30.0)  # type: ignore[operator]
    stack = make_stack(copies, "patch", [0, 1, 2], fused=fused).double()
    sliced = SlicedOptimizer(optimizer, stack.slots("s0"), **kwargs)
    opts = [
        build_optimizer(optimizer, h.parameters(), lr=lr, weight_decay=wd, **kwargs)
        for h, lr, wd in zip(heads, lrs, wds, strict=True)
    ]
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(8, N, D, generator=g, dtype=torch.float64)
        y = torch.randint(0, C, (8,), generator=g)
        lr = torch.tensor([lr_at(step, base_lr=b, warmup_steps=2, total_steps=6) for b in lrs], dtype=torch.float64)
        sliced.zero_grad()
        cross_entropy_per_config(stack(x), y).sum().backward()
        sliced.step(lr, torch.tensor(wds, dtype=torch.float64))
        for k, (h, opt) in enumerate(zip(heads, opts, strict=True)):
            for group in opt.param_groups:
                group["lr"] = float(lr[k])
            opt.zero_grad()
            F.cross_entropy(h(x), y).backward()
            opt.step()
    for k, h in enumerate(heads):
        exported = stack.export(k)
        for key, t in h.state_dict().items():
            if t.is_floating_point():
                torch.testing.assert_close(exported[key], t, rtol=1e-11, atol=1e-13)


def _grads(stack: torch.nn.Module, k: int) -> dict[str, torch.Tensor]:
    if isinstance(stack, ModuleStack):
        return {n: p.grad for n, p in stack.heads[k].named_parameters()}  # type: ignore[misc]
    return {key: stack.t(key).grad[k] for key in stack._attrs if stack.t(key).grad is not None}  # type: ignore[attr-defined]
