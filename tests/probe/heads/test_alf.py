"""ALF (Attentive Layer Fusion) against an independent float64 rendering of docs/ALF.md, fused and alone, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from probe_helpers import make_meta, write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import HeadSpecError
from epcache.probe import load_head
from epcache.probe.data.layers import LayersRead, MultiLayerSource
from epcache.probe.data.sources import head_input
from epcache.probe.heads import AttentiveLayerFusion, create_head, head_cost, heads_table
from epcache.probe.train.stacks import ALFStack, cross_entropy_per_config, make_stack
from epcache.store import open_store

D, C, L, H, M = 16, 5, 3, 4, 2
runner = CliRunner()
FAST = ["--epochs", "2", "--warmup", "1", "--batch-size", "32", "--optimizer", "adamw", "--no-progress"]


def reference_logits(x: torch.Tensor, p: dict[str, torch.Tensor], heads: int) -> torch.Tensor:
    """docs/ALF.md written out with loops over queries and heads; ``p`` holds the head's named tensors."""
    dh = x.shape[-1] // heads
    z = x + p["0.embed"][0]  # layer/type embedding, one row per (layer, CLS|GAP) position
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    z = (z - mu) / torch.sqrt(var + 1e-6) * p["0.norm.weight"] + p["0.norm.bias"]
    keys = z @ p["0.k.weight"].T + p["0.k.bias"]
    values = z @ p["0.v.weight"].T + p["0.v.bias"]
    outs = []
    for m in range(p["0.query"].shape[1]):
        qm = p["0.query"][0, m] @ p["0.q.weight"].T + p["0.q.bias"]
        per_head = []
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            a = torch.softmax(keys[:, :, sl] @ qm[sl] / math.sqrt(dh), dim=-1)  # (B, N) over the 2L tokens
            per_head.append((a.unsqueeze(-1) * values[:, :, sl]).sum(1))
        outs.append(torch.cat(per_head, -1) @ p["0.proj.weight"].T + p["0.proj.bias"])
    f = torch.cat(outs, -1)  # (B, M·D): the queries' outputs side by side
    f = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + 1e-6)  # BatchNorm, batch statistics
    return f @ p["2.weight"].T + p["2.bias"]


def _head(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_head("alf", in_dim=D, num_classes=C, num_tokens=2 * L, queries=M, num_heads=H).double()


def test_forward_and_gradient_equal_the_paper_equations_in_float64() -> None:
    head = _head(0).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2 * L, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (7,), generator=g)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases, so every term is exercised
        for name, t in head.named_parameters():
            if name.endswith("bias") or name == "0.norm.weight":
                t.add_(0.3 * torch.randn(t.shape, generator=g, dtype=torch.float64))
    params = {n: t.detach().clone().requires_grad_(True) for n, t in head.named_parameters()}
    want = reference_logits(x, params, H)
    got = head(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    F.cross_entropy(want, y).backward()
    F.cross_entropy(got, y).backward()
    for name, t in head.named_parameters():
        torch.testing.assert_close(t.grad, params[name].grad, rtol=1e-10, atol=1e-13)
    assert head.attention(x).shape == (7, H * M, 2 * L)
    assert torch.allclose(head.attention(x).sum(-1), torch.ones((), dtype=torch.float64))


def test_the_fused_stack_equals_the_configs_trained_alone() -> None:
    heads = [_head(s) for s in range(3)]
    stack = make_stack([_head(s) for s in range(3)], "cls+gap", [0, 1, 2]).double()
    assert isinstance(stack, ALFStack)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2 * L, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (8,), generator=g)
    for training in (True, False, True):
        stack.train(training)
        for h in heads:
            h.train(training)
        torch.testing.assert_close(stack(x), torch.stack([h(x) for h in heads]), rtol=1e-12, atol=1e-12)
    cross_entropy_per_config(stack(x), y).sum().backward()
    sum(F.cross_entropy(h(x), y) for h in heads).backward()
    for k, h in enumerate(heads):
        exported = stack.export(k)
        assert exported.keys() == h.state_dict().keys()
        for key, t in h.state_dict().items():
            torch.testing.assert_close(exported[key].double() if t.is_floating_point() else exported[key], t)
        for name, p in h.named_parameters():
            torch.testing.assert_close(stack.t(name).grad[k], p.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("dim", "layers", "queries", "classes"), [(768, 12, 1, 1000), (64, 5, 4, 10)])
def test_parameter_count_is_the_formula(dim: int, layers: int, queries: int, classes: int) -> None:
    cost = head_cost("alf", dim=dim, num_classes=classes, num_tokens=2 * layers, queries=queries)
    pooling = 2 * layers * dim + 2 * dim + queries * dim + 4 * dim * dim + 4 * dim
    assert cost.pooling_params == pooling
    assert cost.params == pooling + queries * dim * classes + classes
    # FLOPs: Q, K/V of 2L tokens, output projection, scores and weighted sums, classifier (2 per MAC)
    n = 2 * layers
    macs = 2 * queries * dim * dim + 2 * n * dim * dim + 2 * queries * n * dim + queries * dim * classes
    assert cost.flops == 2 * macs
    row = next(r for r in heads_table(dim=dim, num_classes=classes, layers=layers, kinds=None) if r.kind == "alf")
    assert row.variant.endswith(f",layers={layers}") and row.params == head_cost(
        "alf", dim=dim, num_classes=classes, num_tokens=2 * layers).params


def test_the_layer_tokens_are_each_layer_s_cls_and_gap_in_order(tmp_path: Path) -> None:
    layers = (0, 1, 2)
    store = write_store(tmp_path / "s.zarr", n_train=32, n_val=16, layers=layers, meta=make_meta(layers=layers))
    with open_store(store) as st:
        rows = np.array([1, 5, 7])
        x = np.stack([st.read_tokens("train", la, 0, 16)[rows, 0] for la in layers], axis=1).astype(np.float64)
        plan = LayersRead(frozenset({"tokens:cls+gap"}), st.meta.layout, len(layers), torch.float64)
        assert plan.mode == "vectors"  # two vectors per layer travel, not the token grids
        source = MultiLayerSource(st, "train", layers, plan)
        got = plan.derive(torch.from_numpy(np.asarray(source.rows(0, rows, None))).double(), "tokens:cls+gap")
        source.close()
    want = np.stack([v for i in range(len(layers)) for v in (x[:, i, 0], x[:, i, 1:].mean(1))], axis=1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("tokens", "mix", "message"), [
    ("patch", "tokens", "not tokens='patch'"),
    ("cls+gap", "concat", "not layer_mix='concat'"),
])
def test_a_wrong_input_is_refused_naming_the_fix(tokens: str, mix: str, message: str) -> None:
    with pytest.raises(HeadSpecError, match=message) as info:
        head_input("alf", tokens, mix, 4, dim=D, num_prefix=1, cls_index=0, num_registers=0, num_patches=16)
    assert "--tokens cls+gap --layer-mix tokens" in str(info.value)
    with pytest.raises(HeadSpecError, match="no CLS"):
        head_input("alf", "cls+gap", "tokens", 4, dim=D, num_prefix=0, cls_index=None, num_registers=0,
                   num_patches=16)


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layers = (0, 1, 2)
    return write_store(tmp_path_factory.mktemp("alf") / "s.zarr", n_train=96, n_val=32, layers=layers,
                       meta=make_meta(layers=layers))


def test_cli_trains_alf_over_every_layer(layered: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    r = runner.invoke(app, ["probe", "--store", str(layered), "--head", "alf,linear", "--layers", "all", *FAST,
                            "--lr", "1e-3,3e-3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    alf = [row for row in rows if row["config"]["kind"] == "alf"]
    assert len(alf) == 2  # one config per lr, each fusing all three layers
    assert all(row["input"] == {"tokens": "cls+gap", "layer_mix": "tokens", "layers": [0, 1, 2]} for row in alf)
    assert {tuple(row["input"]["layers"]) for row in rows if row["config"]["kind"] == "linear"} == {(0,), (1,), (2,)}
    assert all(row["params"] == 6 * 16 + 2 * 16 + 16 + 4 * 16 * 16 + 4 * 16 + 16 * 4 + 4 for row in alf)  # D=16, C=4
    saved = [p for p in (out / "heads").glob("*.safetensors") if p.stem in {row["id"] for row in alf}]
    head, meta = load_head(saved[0])
    assert isinstance(head.pooling, AttentiveLayerFusion) and meta["num_tokens"] == 6
    assert head(torch.randn(2, 6, meta["in_dim"])).shape == (2, 4)


@pytest.mark.parametrize(("args", "message"), [
    (["--layers", "0"], "'alf' fuses at least 2 layers"),
    (["--layers", "all", "--layer-mix", "concat"], "add --layer-mix tokens"),
    (["--layers", "all", "--tokens", "patch"], "'alf' heads read cls+gap"),
])
def test_cli_refuses_a_wrong_combination(layered: Path, tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, ["probe", "--store", str(layered), "--head", "alf", *FAST, "--out", str(tmp_path / "r"),
                            *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
