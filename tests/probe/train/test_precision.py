"""bf16 autocast (``--amp``) and ``--compile`` of the probe heads, checked on the CPU (autocast works there).

Tolerance, stated once: bfloat16 keeps 8 significant bits (relative rounding 2^-9), so heads whose
matmuls run in bfloat16 give logits within 2% of the largest float32 logit (measured here: 0.1-0.4%),
and the updates of four SGD steps (weights and BatchNorm statistics) stay within 2% of the largest
float32 update (10% for a jepa pooler, a transformer block of bf16 matmuls in series; measured
0.3-0.8% and 7%). Parameters whose float32 gradient is ~0 (MHCA's key bias: softmax ignores it)
are compared on that same scale, since bf16 rounding gives them small nonzero updates. The float64 reference
tests (test_heads_reference.py, test_probe_fused.py) stay exact: amp never applies to float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from probe_helpers import config, write_store
from safetensors.torch import load_file
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.device import resolve_amp
from epcache.probe.heads import create_head
from epcache.probe.train.precision import amp_context, widen
from epcache.probe.train.stacked_optim import SlicedOptimizer
from epcache.probe.train.stacks import cross_entropy_per_config, make_stack

D, C, N = 16, 5, 9
CPU = torch.device("cpu")
TOL = 0.02  # relative to the largest float32 value (see the module docstring)
STEP_TOL = 0.02  # weight and BN-statistic updates of 4 SGD steps, relative to the largest float32 update
CASES = [
    ("linear", {"tokens": "gap"}, "gap"),
    ("ep", {"queries": 4, "d_out": 1}, "patch"),
    ("mhca", {"num_heads": 4}, "patch"),
    ("mp", {"hidden": 64, "num_heads": 4}, "all"),
    ("jepa", {"num_heads": 4}, "patch"),  # no stacked kernel: the module loop under autocast
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("amp") / "s.zarr", n_train=160, n_val=48)


def _stack(kind: str, options: dict, selection: str, k: int = 3) -> torch.nn.Module:
    heads = []
    for seed in range(k):
        torch.manual_seed(seed)
        heads.append(create_head(kind, in_dim=D, num_classes=C, num_tokens=N, num_prefix=1, **options))
    return make_stack(heads, selection, list(range(k)))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    err = (got - want).abs().max().item()
    assert err <= TOL * want.abs().max().item() + 1e-6, err


@pytest.mark.parametrize(("kind", "options", "selection"), CASES)
def test_bf16_forward_and_steps_stay_close_to_float32(kind: str, options: dict, selection: str) -> None:
    ref, amp = _stack(kind, options, selection), _stack(kind, options, selection)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, N, D, generator=g)
    y = torch.randint(0, C, (4, 8), generator=g)
    xin = x[..., 1:, :].mean(-2) if kind == "linear" else x
    ref.eval(), amp.eval()
    with amp_context("bf16", CPU):
        low = widen(amp(xin[0]))
    assert low.dtype == torch.float32
    _close(low, ref(xin[0]))
    assert not torch.equal(low, ref(xin[0]))  # autocast really ran in bfloat16
    start = {k: t.clone() for k, t in ref.state_dict().items()}  # (both stacks start equal)
    opts = [SlicedOptimizer("sgd", s.slots("s"), momentum=0.9) for s in (ref, amp)]
    lr, wd = torch.full((3,), 0.05, dtype=torch.float64), torch.full((3,), 1e-4, dtype=torch.float64)
    for step in range(4):  # a few training steps: BN statistics, losses and weights
        for stack, opt, mode in ((ref, opts[0], "none"), (amp, opts[1], "bf16")):
            stack.train()
            with amp_context(mode, CPU):
                logits = stack(xin[step])
            loss = cross_entropy_per_config(widen(logits), y[step])
            assert loss.dtype == torch.float32  # losses in float32
            opt.zero_grad()
            loss.sum().backward()
            opt.step(lr, wd)
    sd_ref, sd_amp = ref.state_dict(), amp.state_dict()
    moved = max((t - start[k]).abs().max().item() for k, t in sd_ref.items() if t.is_floating_point())
    tol = STEP_TOL * (5 if kind == "jepa" else 1)  # jepa: a transformer block, many bf16 matmuls in series
    for name, p_ref in sd_ref.items():
        assert sd_amp[name].dtype == p_ref.dtype, name  # fp32 master weights and BN statistics stay fp32
        if p_ref.is_floating_point():  # every update agrees, on the scale of the largest one
            err = ((sd_amp[name] - start[name]) - (p_ref - start[name])).abs().max().item()
            assert err <= tol * moved, (name, err, moved)
    for p in amp.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)


def test_resolve_amp_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[str] = []
    assert resolve_amp("auto", CPU, "float32", errors) == ("none", "auto: none on cpu")
    assert resolve_amp("auto", CPU, "float64", errors)[0] == "none"
    assert resolve_amp("bf16", CPU, "float32", errors) == ("bf16", "as requested")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda"), "float32", errors) == ("bf16", "auto: bf16 autocast on CUDA")
    assert resolve_amp("auto", torch.device("cuda"), "float64", errors)[0] == "none"
    assert not errors
    resolve_amp("fp16", CPU, "float32", errors)
    resolve_amp("bf16", CPU, "float64", errors)
    assert "amp must be one of auto, none, bf16, got 'fp16'" in errors[0] and "dtype float64" in errors[1]


def test_sweep_in_bf16_matches_float32_and_rows_say_so(store: Path, tmp_path: Path) -> None:
    kw = {"head": "linear,ep,mhca,mp(hidden=64,num_heads=4)", "lr": "0.01,0.03", "epochs": 3}
    ref = probe_store(config(store, amp="none", out=str(tmp_path / "ref"), **kw), progress=False)
    auto = probe_store(config(store, out=None, **kw), progress=False)  # auto on the CPU: none, the same ids
    low = probe_store(config(store, amp="bf16", out=str(tmp_path / "bf16"), **kw), progress=False)
    assert [r["id"] for r in auto.rows] == [r["id"] for r in ref.rows]
    assert {r["id"] for r in low.rows}.isdisjoint(r["id"] for r in ref.rows)  # other numbers, other ids
    for a, b in zip(ref.rows, low.rows, strict=True):
        assert a["name"] == b["name"]
        assert a["protocol"]["amp"] == "none" and a["protocol"]["compile"] is False
        assert b["protocol"]["amp"] == "bf16" and b["protocol"]["amp_rule"] == "as requested"
        assert auto.rows[0]["protocol"]["amp_rule"] == "auto: none on cpu"
        assert b["config"]["amp"] == "bf16"
        loss_a, loss_b = a["curves"]["train_loss"], b["curves"]["train_loss"]
        assert all(abs(x - y) <= 0.05 * abs(x) for x, y in zip(loss_a, loss_b, strict=True)), (loss_a, loss_b)
        assert abs(a["metrics"]["eval"]["top1"] - b["metrics"]["eval"]["top1"]) <= 0.1
        state = load_file(str(tmp_path / "bf16" / b["head_file"]))
        assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    assert any("precision: amp bf16 (as requested" in n for n in low.notes)


def test_float64_refuses_bf16(store: Path) -> None:
    with pytest.raises(ConfigError, match="dtype float64 cannot be combined"):
        probe_store(config(store, amp="bf16", dtype="float64"), progress=False)


@pytest.mark.slow
def test_compiled_stacks_match_eager(store: Path) -> None:
    """torch.compile on the CPU: inductor builds C++ with the system compiler, ~90 s on 2 cores, hence slow."""
    kw = {"head": "linear,ep", "lr": "0.01,0.03", "epochs": 2}
    eager = probe_store(config(store, **kw), progress=False)
    compiled = probe_store(config(store, compile=True, **kw), progress=False)
    for a, b in zip(eager.rows, compiled.rows, strict=True):
        assert a["id"] == b["id"] and b["protocol"]["compile"] is True
        for x, y in zip(a["curves"]["train_loss"], b["curves"]["train_loss"], strict=True):
            assert abs(x - y) <= 1e-4 * abs(x)
        assert a["metrics"]["eval"]["top1"] == pytest.approx(b["metrics"]["eval"]["top1"], abs=1 / 48)


@pytest.mark.parametrize(("args", "message"), [
    (["--amp", "fp16"], "amp must be one of auto, none, bf16, got 'fp16'"),
    (["--amp", "bf16", "--device", "cuda"], "CUDA is not available"),
])
def test_cli_rejects_bad_amp(store: Path, args: list[str], message: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = CliRunner().invoke(app, ["probe", "--store", str(store), "--no-progress", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_grid_file_shares_amp(store: Path, tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text('[[grid]]\nhead = "linear"\namp = "bf16"\n[[grid]]\nhead = "ep"\namp = "none"\n')
    with pytest.raises(ConfigError, match="amp differs between"):
        probe_store(config(store, grid=str(grid)), progress=False)
    assert json.dumps(config(store, amp="bf16").to_json()["amp"]) == '"bf16"'
