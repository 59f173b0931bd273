"""Optimisers and schedule: the reference 5-step EP training runs (vectors README §5) and unit checks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from epcache.errors import ConfigError
from epcache.probe.heads import from_reference
from epcache.probe.train.optim import LARS, build_optimizer, lr_at

DATA = Path(__file__).resolve().parents[2] / "data" / "train"
TRAIN_FILES = sorted(DATA.glob("*.npz"))
LR = {"sgd": 0.1, "lars": 0.1, "adamw": 1e-3}  # what the vectors were run with
RTOL = 1e-10


def assert_close(actual: torch.Tensor | np.ndarray, desired: np.ndarray, rtol: float = RTOL) -> None:
    a = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert a.shape == desired.shape, (a.shape, desired.shape)
    np.testing.assert_allclose(a, desired, rtol=rtol, atol=rtol * float(np.abs(desired).max()))


def test_training_vectors_are_all_there() -> None:
    assert [p.stem.rsplit("_", 1)[1] for p in TRAIN_FILES] == ["adamw", "lars", "sgd"]


@pytest.mark.parametrize("path", TRAIN_FILES, ids=lambda p: p.stem.rsplit("_", 1)[1])
def test_five_step_training_matches_reference(path: Path) -> None:
    """Same batch 5 times, head in training mode, fixed lr: losses, grads, trajectory, final eval."""
    z = np.load(path)
    name = path.stem.rsplit("_", 1)[1]
    head = from_reference("ep", {k.removeprefix("init."): z[k] for k in z.files if k.startswith("init.")})
    assert next(head.parameters()).dtype == torch.float64
    opt = build_optimizer(name, head.parameters(), lr=LR[name], weight_decay=0.0)
    x, labels = torch.from_numpy(z["x"]), torch.from_numpy(z["labels"])
    traj = {k.removeprefix("traj."): z[k] for k in z.files if k.startswith("traj.")}
    for key, states in traj.items():
        assert_close(head.state_dict()[key], states[0])

    head.train()
    losses = []
    for step in range(5):
        opt.zero_grad()
        logits = head(x)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            assert_close(logits, z["logits_step0"])
            grads = [k for k in z.files if k.startswith("grad_step0.")]
            assert len(grads) == 4
            for k in grads:
                assert_close(head.get_parameter(k.removeprefix("grad_step0.")).grad, z[k])
        opt.step()
        state = head.state_dict()
        for key, states in traj.items():
            assert_close(state[key], states[step + 1])

    assert_close(np.array(losses), z["losses"])
    state = head.state_dict()
    finals = [k for k in z.files if k.startswith("final.")]
    assert len(finals) == 7
    for k in finals:
        assert_close(state[k.removeprefix("final.")], z[k])
    assert int(state["1.num_batches_tracked"]) == 5
    head.eval()
    with torch.no_grad():
        assert_close(head(torch.from_numpy(z["x_eval"])), z["logits_eval_final"])


def test_lars_step_by_hand() -> None:
    """Trust ratio on ndim > 1 only, weight decay only there, momentum on the scaled step."""
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.01)
    w.grad = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    b.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    step_w = torch.tensor([[0.3, 1.4]], dtype=torch.float64)  # g + wd * w
    step_w = step_w * (0.01 * 5.0 / step_w.norm())
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]], dtype=torch.float64) - 0.5 * step_w)
    torch.testing.assert_close(b.detach(), torch.tensor([0.0], dtype=torch.float64))  # 1 - 0.5 * 2, no decay
    opt.step()  # same gradients: momentum buffer = 0.9 * previous + new scaled step
    assert torch.allclose(opt.state[b]["mu"], torch.tensor([2.0 * 0.9 + 2.0], dtype=torch.float64))


def test_lars_zero_norms_fall_back_to_ratio_one() -> None:
    w = torch.nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=1.0)
    w.grad = torch.ones(2, 2)
    opt.step()  # ||w|| = 0: unscaled step
    torch.testing.assert_close(w.detach(), -torch.ones(2, 2))
    v = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([v], lr=1.0)
    v.grad = torch.zeros(2, 2)
    opt.step()  # zero gradient: nothing moves, no division by zero
    torch.testing.assert_close(v.detach(), torch.ones(2, 2))


def test_lars_skips_parameters_without_grad_and_supports_closure() -> None:
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([w], lr=1.0)
    assert opt.step() is None
    torch.testing.assert_close(w.detach(), torch.ones(2, 2))

    def closure() -> float:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss.item()

    assert opt.step(closure) == 4.0
    assert not torch.equal(w.detach(), torch.ones(2, 2))


def test_build_optimizer_kinds_and_defaults() -> None:
    p = [torch.nn.Parameter(torch.zeros(3, 3))]
    lars = build_optimizer("LARS", p, lr=1.6)
    assert isinstance(lars, LARS)
    assert lars.defaults["momentum"] == 0.9 and lars.defaults["trust_coefficient"] == 0.001
    sgd = build_optimizer("sgd", p, lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.0
    adamw = build_optimizer("adamw", p, lr=1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.999)
    assert adamw.defaults["weight_decay"] == 0.0
    groups = build_optimizer("lars", [{"params": p, "lr": 0.3}], lr=1.0)
    assert groups.param_groups[0]["lr"] == 0.3


def test_build_optimizer_errors() -> None:
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(build_optimizer("adam", p, lr=0.1), torch.optim.Adam)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamax'.*sgd, lars, adamw, adam"):
        build_optimizer("adamax", p, lr=0.1)
    with pytest.raises(ConfigError, match="LARS"):
        build_optimizer("lars", p, lr=-1.0)
    with pytest.raises(ConfigError, match="invalid sgd"):
        build_optimizer("sgd", p, lr=-1.0)


def test_lr_schedule_warmup_then_half_cosine() -> None:
    kw = {"base_lr": 1.6, "warmup_steps": 10, "total_steps": 90}
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.8)
    assert lr_at(10, **kw) == pytest.approx(1.6)
    assert lr_at(50, **kw) == pytest.approx(0.8)  # half-way through the cosine
    assert lr_at(70, **kw) == pytest.approx(1.6 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert lr_at(90, **kw) == 0.0
    assert lr_at(1000, **kw) == 0.0
    values = [lr_at(s, **kw) for s in range(91)]
    assert all(a <= b for a, b in itertools.pairwise(values[:11]))  # warm-up rises
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))  # cosine falls
    assert lr_at(0, base_lr=1.0, warmup_steps=0, total_steps=4) == 1.0  # no warm-up


@pytest.mark.parametrize(("step", "warmup", "total"), [(-1, 10, 90), (0, -1, 90), (0, 10, 0), (0, 91, 90)], ids=str)
def test_lr_schedule_rejects_bad_arguments(step: int, warmup: int, total: int) -> None:
    with pytest.raises(ConfigError, match="lr schedule"):
        lr_at(step, base_lr=1.0, warmup_steps=warmup, total_steps=total)
