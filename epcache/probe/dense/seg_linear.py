"""seg-linear: BatchNorm2d + 1x1 convolution on the patch grid, G (lr, wd) pairs trained in one pass.

The head of the DINOv2/DINOv3 linear segmentation evaluation: the patch grid of one layer or of several
layers concatenated along the channels, ``BatchNorm2d(D)`` then a 1x1 conv ``D -> C``; the LOGITS (never
the features) are resized bilinearly (``align_corners=False``) to the label grid and trained by pixel
cross-entropy with the ignore index left out (mean over the labelled pixels of a batch).

Fused grid. The batch statistics of BatchNorm depend only on the input, so every head of a grid shares
them (and the running mean and variance) and differs only in its affine part and conv:
``logits_g = W_g (γ_g ⊙ x̂ + β_g) + b_g`` for G stacked parameter tensors, one ``einsum`` per batch.
The loss is the sum of the G heads' losses, so each head's gradient is its own, and a hand-written
AdamW with a per-head lr and weight decay (decoupled, on the conv weight only) steps them: the G-head
run equals G one-head runs. Parameters start at zeros (γ = 1), the batches come from one seeded
permutation per epoch, the lr follows a cosine from its value to 0 over the steps: deterministic on the
CPU, and independent of G.

Selection: the heads train on 90% of the training images, the best holdout mIoU (whole images, seeded;
a tie keeps the earlier grid entry) picks (lr, wd), and that one head is retrained on all training images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError
from epcache.probe.dense.inputs import DenseData, DenseResult, as_tensor, holdout_split, score_patch_scores
from epcache.probe.dense.metrics import SegMetrics
from epcache.probe.dense.patch_labels import upsample_logits

__all__ = ["SEG_LINEAR_LRS", "SEG_LINEAR_WDS", "SegLinearHeads", "run_seg_linear", "train_seg_linear"]

SEG_LINEAR_LRS: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
SEG_LINEAR_WDS: tuple[float, ...] = (1e-4, 1e-2)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class SegLinearHeads:
    """G trained heads over one shared BatchNorm: running statistics and the stacked parameters."""

    running_mean: Tensor  # (D,)
    running_var: Tensor  # (D,)
    gamma: Tensor  # (G, D)
    beta: Tensor  # (G, D)
    weight: Tensor  # (G, C, D)
    bias: Tensor  # (G, C)

    def logits(self, feats: Tensor) -> Tensor:
        """``[b, h, w, D]`` -> ``[G, b, C, h, w]`` patch logits, BatchNorm in eval mode (running statistics)."""
        xhat = (feats - self.running_mean) / torch.sqrt(self.running_var + BN_EPS)
        return _heads(xhat, self.gamma, self.beta, self.weight, self.bias)


def _heads(xhat: Tensor, gamma: Tensor, beta: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    # W_g(γ_g ⊙ x̂ + β_g) + b_g = (W_g ⊙ γ_g) x̂ + (W_g β_g + b_g): one einsum over all G heads
    w = weight * gamma[:, None, :]
    b = torch.einsum("gcd,gd->gc", weight, beta) + bias
    out = torch.einsum("bhwd,gcd->gbchw", xhat, w)
    return out + b[:, None, :, None, None]


def train_seg_linear(
    feats: Tensor,
    labels: Tensor,
    *,
    lrs: Sequence[float],
    wds: Sequence[float],
    num_classes: int,
    ignore_index: int,
    epochs: int = 10,
    batch_size: int = 16,
    seed: int = 0,
) -> SegLinearHeads:
    """Train one head per ``(lrs[g], wds[g])`` pair on ``[n, h, w, D]`` features and ``[n, H, W]`` labels.

    Raises:
        ConfigError: lrs and wds of different lengths or empty, a non-positive lr, epochs or batch size < 1.
    """
    G = len(lrs)
    if G == 0 or len(wds) != G:
        raise ConfigError(f"seg-linear needs one wd per lr, got {len(lrs)} lrs and {len(wds)} wds")
    if any(not lr > 0 for lr in lrs) or any(wd < 0 for wd in wds) or epochs < 1 or batch_size < 1:
        raise ConfigError(f"seg-linear: lr must be > 0, wd >= 0, epochs and batch size >= 1 (lrs={list(lrs)}, "
                          f"wds={list(wds)}, epochs={epochs}, batch_size={batch_size})")
    n, _, _, D = feats.shape
    dt = feats.dtype
    params = [torch.ones(G, D, dtype=dt), torch.zeros(G, D, dtype=dt), torch.zeros(G, num_classes, D, dtype=dt),
              torch.zeros(G, num_classes, dtype=dt)]  # gamma, beta, weight, bias
    for p in params:
        p.requires_grad_(True)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    lr0 = torch.tensor(list(lrs), dtype=dt)
    wd = torch.tensor(list(wds), dtype=dt)
    run_mean, run_var = torch.zeros(D, dtype=dt), torch.ones(D, dtype=dt)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            rows = order[s : s + batch_size]
            x, y = feats[rows], labels[rows]
            flat = x.reshape(-1, D)
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            with torch.no_grad():
                m = flat.shape[0]
                run_mean.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * mean)
                run_var.mul_(1 - BN_MOMENTUM).add_(BN_MOMENTUM * var * m / max(1, m - 1))
            out = _heads((x - mean) / torch.sqrt(var + BN_EPS), *params)  # [G, b, C, h, w]
            loss = _pixel_ce(out, y, ignore_index)
            grads = torch.autograd.grad(loss, params)
            step += 1
            scale = 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
            with torch.no_grad():
                _adamw(params, grads, moments, lr0 * scale, wd, step)
    gamma, beta, weight, bias = (p.detach() for p in params)
    return SegLinearHeads(run_mean, run_var, gamma, beta, weight, bias)


def _pixel_ce(out: Tensor, y: Tensor, ignore_index: int) -> Tensor:
    """Sum over heads of each head's mean pixel cross-entropy over the labelled pixels of the batch."""
    G, b, C, h, w = out.shape
    up = upsample_logits(out.reshape(G * b, C, h, w), tuple(y.shape[1:]))
    per_px = torch.nn.functional.cross_entropy(up, y.repeat(G, 1, 1), ignore_index=ignore_index, reduction="none")
    labelled = int((y != ignore_index).sum())
    return per_px.sum() / max(1, labelled)


def _adamw(params: list[Tensor], grads: Sequence[Tensor], moments: list[tuple[Tensor, Tensor]], lr: Tensor,
           wd: Tensor, step: int) -> None:
    """One AdamW step (torch.optim.AdamW's update) with a per-head lr and decay, the decay on the conv weight."""
    b1, b2 = BETAS
    for i, (p, g, (m, v)) in enumerate(zip(params, grads, moments, strict=True)):
        shape = (-1,) + (1,) * (p.ndim - 1)
        if i == 2:
            p.mul_(1 - (lr * wd).reshape(shape))
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**step)).sqrt_().add_(ADAM_EPS)
        p.sub_(lr.reshape(shape) / (1 - b1**step) * m / denom)


def score_heads(heads: SegLinearHeads, feats: Tensor, labels: np.ndarray, *, num_classes: int,
                ignore_index: int) -> list[tuple[SegMetrics, np.ndarray]]:
    """Each head's metrics and preview predictions on ``[m, h, w, D]`` features and ``[m, H, W]`` labels."""
    with torch.no_grad():
        logits = heads.logits(feats)  # [G, m, C, h, w]
    return [score_patch_scores(logits[g], labels, num_classes=num_classes, ignore_index=ignore_index)
            for g in range(logits.shape[0])]


def run_seg_linear(
    data: DenseData,
    *,
    lrs: Sequence[float] = SEG_LINEAR_LRS,
    wds: Sequence[float] = SEG_LINEAR_WDS,
    epochs: int = 10,
    batch_size: int = 16,
    holdout: float = 0.1,
    seed: int = 0,
    refit: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DenseResult:
    """Train the lr x wd grid fused on 90% of train, pick by holdout mIoU, retrain it on all train, score eval."""
    pairs = [(float(lr), float(wd)) for lr in lrs for wd in wds]
    if not pairs:
        raise ConfigError("seg-linear needs at least one lr and one wd")
    fit, hold = holdout_split(data.train_feats.shape[0], data.train_groups, fraction=holdout, seed=seed)
    feats = as_tensor(data.train_feats, dtype)
    labels = torch.from_numpy(data.train_labels.astype(np.int64))
    kw = {"num_classes": data.num_classes, "ignore_index": data.ignore_index, "epochs": epochs,
          "batch_size": batch_size, "seed": seed}
    heads = train_seg_linear(feats[fit], labels[fit], lrs=[p[0] for p in pairs], wds=[p[1] for p in pairs], **kw)
    scored = score_heads(heads, feats[hold], data.train_labels[hold], num_classes=data.num_classes,
                         ignore_index=data.ignore_index)
    table: list[tuple[dict[str, object], float]] = [({"lr": lr, "wd": wd}, m.miou)
                                                    for (lr, wd), (m, _) in zip(pairs, scored, strict=True)]
    best = max(range(len(table)), key=lambda i: (np.nan_to_num(table[i][1], nan=-1.0), -i))
    lr, wd = pairs[best]
    if refit:
        heads = train_seg_linear(feats, labels, lrs=[lr], wds=[wd], **kw)
    else:
        heads = SegLinearHeads(heads.running_mean, heads.running_var, heads.gamma[best : best + 1],
                               heads.beta[best : best + 1], heads.weight[best : best + 1], heads.bias[best : best + 1])
    ((metrics, preview),) = score_heads(heads, as_tensor(data.eval_feats, dtype), data.eval_labels,
                                        num_classes=data.num_classes, ignore_index=data.ignore_index)
    chosen: dict[str, object] = {"lr": lr, "wd": wd, "epochs": epochs, "batch_size": batch_size, "refit": refit}
    return DenseResult("seg-linear", metrics, chosen, table, preview)
