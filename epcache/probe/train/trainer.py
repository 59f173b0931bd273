"""The fused trainer: every config of one input group trained in one pass over the store.

Per batch the tokens are read once and handed to every stack of heads; the per-config losses
are summed (no parameter is shared, so the gradient of the sum w.r.t. config k's parameters is
the gradient of config k's own loss) and one sliced optimiser step updates all configs with
their own learning rate, weight decay and schedule. After each epoch every config is scored on
the holdout (which selects its epoch; the weights of that epoch are kept on the device) and on
the eval split (the curve and the paper's "best epoch on val" number, recorded as ``oracle``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epcache.probe.config.protocol import optimizer_settings
from epcache.probe.data.layers import ReadSpec
from epcache.probe.data.sources import build_head
from epcache.probe.data.stream import Batch, BatchStream
from epcache.probe.results.metrics import Metrics, MetricsAccumulator
from epcache.probe.results.ranking import epoch_improves
from epcache.probe.sweep.geometry import HeadGeometry
from epcache.probe.sweep.grid import RunSpec
from epcache.probe.train.optim import lr_at
from epcache.probe.train.precision import amp_context, compile_stack, widen
from epcache.probe.train.stacked_optim import SlicedOptimizer
from epcache.probe.train.stacks import HeadStack, TensorStack, cross_entropy_per_config, make_stack

__all__ = ["CKPT_FORMAT", "ConfigOutcome", "GroupTrainer"]

CKPT_FORMAT = "epcache-probe-ckpt"
CKPT_VERSION = 1


@dataclass
class ConfigOutcome:
    """One config after training: its curves, selected epoch, final metrics and selected weights."""

    run: RunSpec
    train_loss: list[float]
    holdout_top1: list[float | None]
    holdout_loss: list[float | None]
    eval_top1: list[float]
    selected_epoch: int
    holdout: Metrics | None
    eval: Metrics
    state: dict[str, Tensor] = field(repr=False)  # selected single-head state dict (CPU)

    @property
    def oracle_epoch(self) -> int:
        return int(np.nanargmax(self.eval_top1)) if any(math.isfinite(v) for v in self.eval_top1) else 0

    @property
    def diverged(self) -> bool:
        return not all(math.isfinite(v) for v in self.train_loss)


class GroupTrainer:
    """Trains the configs of one input group (one layer) together.

    Args:
        runs: the group's configs.
        geometry: width, classes and token layout of the store.
        plan: which tokens the reader delivers and how each head's input is derived.
        device: training device.
        dtype: compute dtype (of the master weights and optimiser states).
        fused: stack same-shape heads (True) or loop over modules (False, the reference path).
        amp: ``"bf16"``: the heads' forward under bfloat16 autocast (``precision.py``); ``"none"``.
        compile: run each stack's forward through ``torch.compile``.
    """

    def __init__(
        self,
        runs: Sequence[RunSpec],
        geometry: HeadGeometry,
        plan: ReadSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        fused: bool = True,
        amp: str = "none",
        compile: bool = False,
    ) -> None:
        self.runs = list(runs)
        self.geometry = geometry
        self.plan = plan
        self.device = device
        self.dtype = dtype
        self.amp = amp
        by_stack: dict[tuple[str, str, str], list[int]] = defaultdict(list)
        for i, run in enumerate(self.runs):
            by_stack[run.stack_key].append(i)
        self.stacks: list[HeadStack] = []
        self.optimizers: dict[str, SlicedOptimizer] = {}
        slots_by_opt: dict[str, list[Any]] = defaultdict(list)
        for s, (key, members) in enumerate(by_stack.items()):
            heads = []
            for i in members:
                run = self.runs[i]
                with torch.random.fork_rng(devices=[]):  # the init depends on the config's seed only
                    torch.manual_seed(run.seed)
                    heads.append(build_head(run.head, geometry.shapes(run), geometry.num_classes))
            stack = make_stack(heads, key[1], members, fused=fused).to(device=device, dtype=dtype)
            self.stacks.append(stack)
            slots_by_opt[key[2]].extend(stack.slots(f"s{s}"))
        protocol = self.runs[0].settings.protocol
        for name, slots in slots_by_opt.items():
            opt = optimizer_settings(protocol, name)
            self.optimizers[name] = SlicedOptimizer(name, slots, momentum=opt["momentum"],
                                                    betas=opt["betas"] or (0.9, 0.999))
        self._forward = [compile_stack(stack, compile) for stack in self.stacks]  # the stacks, or compiled
        self.base_lr = [run.lr for run in self.runs]
        self.wd = torch.tensor([run.wd for run in self.runs], dtype=torch.float64, device=device)
        K = len(self.runs)
        self.epoch = -1  # last completed epoch
        self.steps = 0
        self.train_loss: list[list[float]] = [[] for _ in range(K)]
        self.holdout_top1: list[list[float | None]] = [[] for _ in range(K)]
        self.eval_top1: list[list[float]] = [[] for _ in range(K)]
        self.best_epoch = [-1] * K
        self.best_score = [-math.inf] * K
        self.best_loss = [math.inf] * K
        self.holdout_loss: list[list[float | None]] = [[] for _ in range(K)]
        self._best = [self._snapshot(stack) for stack in self.stacks]

    # ------------------------------------------------------------------ training
    def train_epoch(
        self,
        stream: BatchStream,
        epoch: int,
        *,
        warmup_steps: int,
        total_steps: int,
        passes: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """One epoch with the per-iteration schedule: ``passes`` shuffled passes over ``stream``.

        Pass ``p`` of epoch ``e`` draws its batch order as data epoch ``e · passes + p``, so an
        epoch of several passes (the recipe's step floor on tiny sets) is reproducible and
        resumable like any other, and ``passes=1`` is exactly the one-pass epoch.
        """
        steps = passes * stream.steps_per_epoch()
        batches = (b for p in range(passes) for b in stream.train_epoch(epoch * passes + p))
        self.train_steps(batches, steps, warmup_steps=warmup_steps, total_steps=total_steps, on_batch=on_batch)

    def train_steps(
        self,
        batches: Iterator[Batch],
        steps: int,
        *,
        warmup_steps: int,
        total_steps: int,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """One optimiser step per batch of ``batches`` (``steps`` of them); the schedule continues at ``self.steps``.

        The refit draws its batches as one stream over data epochs of train + holdout rows and cuts it
        into epochs of the selection pass's step count, so both passes run the same schedule.
        """
        for stack in self.stacks:
            stack.train()
        loss_sum = torch.zeros(len(self.runs), dtype=torch.float64, device=self.device)
        n = 0
        lrs = self._lr_table(self.steps, steps, warmup_steps, total_steps)  # (steps, K), one copy
        for batch in batches:
            lr = lrs[n]
            inputs: dict[str, Tensor] = {}
            total = None
            for stack, forward in zip(self.stacks, self._forward, strict=True):
                if stack.selection not in inputs:
                    inputs[stack.selection] = self.plan.derive(batch.x, stack.selection)
                losses = cross_entropy_per_config(self._logits(forward, inputs[stack.selection]), batch.y)  # (K_s,)
                loss_sum.index_add_(0, stack.config_index, losses.detach().to(torch.float64))
                total = losses.sum() if total is None else total + losses.sum()
            for opt in self.optimizers.values():
                opt.zero_grad()
            assert total is not None
            total.backward()
            for opt in self.optimizers.values():
                opt.step(lr, self.wd)
            self.steps += 1
            n += 1
            if on_batch is not None:
                on_batch(len(batch.y))
        means = (loss_sum / max(n, 1)).tolist()  # the one host sync of the epoch
        for k, v in enumerate(means):
            self.train_loss[k].append(v)

    def _logits(self, forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``(K, B, C)`` logits of one stack, under autocast with ``amp``; float32 (or float64) for the loss."""
        with amp_context(self.amp, self.device):
            return widen(forward(x))

    def _lr_table(self, first: int, steps: int, warmup_steps: int, total_steps: int) -> Tensor:
        """Per-config learning rates of ``steps`` iterations from ``first``: ``lr_at`` for each base lr."""
        unique = sorted(set(self.base_lr))
        rows = []
        for t in range(first, first + steps):
            at = {b: lr_at(t, base_lr=b, warmup_steps=warmup_steps, total_steps=total_steps) for b in unique}
            rows.append([at[b] for b in self.base_lr])
        return torch.tensor(rows, dtype=torch.float64).reshape(steps, len(self.base_lr)).to(self.device)

    @torch.inference_mode()
    def evaluate(self, stream: BatchStream, *, confusion: bool = False) -> list[MetricsAccumulator]:
        """Per-class counts of every stack on one pass over ``stream`` (BN in eval mode); ``confusion``
        also counts [true][predicted] pairs (the final eval pass: the report's confusion matrix)."""
        for stack in self.stacks:
            stack.eval()
        accs = [MetricsAccumulator(stack.size, self.geometry.num_classes, self.device, confusion=confusion)
                for stack in self.stacks]
        for batch in stream.eval_pass():
            inputs: dict[str, Tensor] = {}
            for stack, forward, acc in zip(self.stacks, self._forward, accs, strict=True):
                if stack.selection not in inputs:
                    inputs[stack.selection] = self.plan.derive(batch.x, stack.selection)
                acc.update(self._logits(forward, inputs[stack.selection]), batch.y)
        return accs

    def top1(self, accs: Sequence[MetricsAccumulator]) -> list[float]:
        """Top-1 per config (sweep order within the group)."""
        return self._per_config(accs, lambda acc: acc.top1())

    def loss(self, accs: Sequence[MetricsAccumulator]) -> list[float]:
        """Mean cross-entropy per config (sweep order within the group)."""
        return self._per_config(accs, lambda acc: acc.loss())

    def _per_config(self, accs: Sequence[MetricsAccumulator], get: Callable[[MetricsAccumulator], Any]) -> list[float]:
        out = [0.0] * len(self.runs)
        for stack, acc in zip(self.stacks, accs, strict=True):
            for k, v in zip(stack.config_index.tolist(), get(acc).tolist(), strict=True):
                out[k] = float(v)
        return out

    def metrics(self, accs: Sequence[MetricsAccumulator]) -> list[Metrics]:
        """Full metrics per config."""
        out: list[Metrics | None] = [None] * len(self.runs)
        for stack, acc in zip(self.stacks, accs, strict=True):
            for k, m in zip(stack.config_index.tolist(), acc.metrics(), strict=True):
                out[k] = m
        return out  # type: ignore[return-value]

    def end_epoch(
        self, epoch: int, holdout: list[float] | None, eval_top1: list[float], holdout_loss: list[float] | None = None
    ) -> None:
        """Record the epoch's scores; keep the weights of configs whose holdout score improved.

        The rule is :func:`epcache.probe.results.ranking.epoch_improves` (recorded in every row as
        ``protocol.selection``). Without a holdout an epoch is scored by its number, so every epoch
        improves and the last is selected.
        """
        improved = []
        for k in range(len(self.runs)):
            loss = holdout_loss[k] if holdout_loss is not None and math.isfinite(holdout_loss[k]) else math.inf
            score = holdout[k] if holdout is not None else float(epoch)
            self.holdout_top1[k].append(None if holdout is None else holdout[k])
            self.holdout_loss[k].append(None if holdout_loss is None else holdout_loss[k])
            self.eval_top1[k].append(eval_top1[k])
            if epoch_improves(score, loss, self.best_score[k], self.best_loss[k]):
                self.best_score[k] = score
                self.best_loss[k] = loss
                self.best_epoch[k] = epoch
                improved.append(k)
        if improved:
            self.keep(improved)
        self.epoch = epoch

    def keep(self, configs: Sequence[int]) -> None:
        """Keep the current weights of ``configs`` as their selected ones (the refit's snapshot at an epoch)."""
        mask = torch.zeros(len(self.runs), dtype=torch.bool)
        mask[list(configs)] = True
        for stack, best in zip(self.stacks, self._best, strict=True):
            self._copy_slices(stack, best, mask[stack.config_index.cpu()], to_best=True)

    def load_selected(self) -> None:
        """Put every config's selected-epoch weights (and BN statistics) into the stacks."""
        for stack, best in zip(self.stacks, self._best, strict=True):
            self._copy_slices(stack, best, torch.ones(stack.size, dtype=torch.bool), to_best=False)

    def outcomes(self, holdout: list[Metrics] | None, evaluation: list[Metrics]) -> list[ConfigOutcome]:
        """Per-config results; call after :meth:`load_selected` and the final evaluation."""
        out = []
        for stack in self.stacks:
            for local, k in enumerate(stack.config_index.tolist()):
                out.append(
                    ConfigOutcome(
                        run=self.runs[k],
                        train_loss=list(self.train_loss[k]),
                        holdout_top1=list(self.holdout_top1[k]),
                        holdout_loss=list(self.holdout_loss[k]),
                        eval_top1=list(self.eval_top1[k]),
                        selected_epoch=self.best_epoch[k],
                        holdout=None if holdout is None else holdout[k],
                        eval=evaluation[k],
                        state=stack.export(local),
                    )
                )
        order = {run.id: i for i, run in enumerate(self.runs)}
        return sorted(out, key=lambda o: order[o.run.id])

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything needed to continue after the last completed epoch: tensors and JSON state.

        No random state is needed: batch order and view choice are drawn from
        ``(data_seed, epoch)``, and initial weights are already in the tensors.
        """
        tensors: dict[str, Tensor] = {}
        for s, (stack, best) in enumerate(zip(self.stacks, self._best, strict=True)):
            for name, t, _ in _items(stack):
                tensors[f"s{s}.{name}"] = t.detach()
            for name, t in best.items():
                tensors[f"best.s{s}.{name}"] = t
        for opt_name, opt in self.optimizers.items():
            for name, t in opt.state_tensors().items():
                tensors[f"opt.{opt_name}.{name}"] = t
        state = {
            "format": CKPT_FORMAT,
            "version": CKPT_VERSION,
            "config_ids": [run.id for run in self.runs],
            "epoch": self.epoch,
            "steps": self.steps,
            "optimizer_steps": {name: opt.steps for name, opt in self.optimizers.items()},
            "train_loss": self.train_loss,
            "holdout_top1": self.holdout_top1,
            "eval_top1": self.eval_top1,
            "best_epoch": self.best_epoch,
            "best_score": [s if math.isfinite(s) else None for s in self.best_score],
            "best_loss": [s if math.isfinite(s) else None for s in self.best_loss],
            "holdout_loss": self.holdout_loss,
            "rng": {"data_seed": self.runs[0].settings.data_seed, "next_epoch": self.epoch + 1},
        }
        return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, state

    def restore(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint` of the same configs."""
        if state.get("format") != CKPT_FORMAT or state.get("config_ids") != [run.id for run in self.runs]:
            raise ValueError("checkpoint belongs to another set of configs")
        with torch.no_grad():
            for s, (stack, best) in enumerate(zip(self.stacks, self._best, strict=True)):
                for name, t, _ in _items(stack):
                    t.copy_(tensors[f"s{s}.{name}"])
                for name, t in best.items():
                    t.copy_(tensors[f"best.s{s}.{name}"])
        for opt_name, opt in self.optimizers.items():
            prefix = f"opt.{opt_name}."
            sub = {k[len(prefix) :]: v.to(self.device) for k, v in tensors.items() if k.startswith(prefix)}
            opt.load_state_tensors(sub, int(state["optimizer_steps"][opt_name]))
        self.epoch = int(state["epoch"])
        self.steps = int(state["steps"])
        self.train_loss = [[math.nan if v is None else float(v) for v in x] for x in state["train_loss"]]  # JSON null
        self.holdout_top1 = [list(x) for x in state["holdout_top1"]]
        self.eval_top1 = [list(x) for x in state["eval_top1"]]
        self.best_epoch = [int(x) for x in state["best_epoch"]]
        self.best_score = [-math.inf if x is None else float(x) for x in state["best_score"]]
        self.best_loss = [math.inf if x is None else float(x) for x in state.get("best_loss", [None] * len(self.runs))]
        self.holdout_loss = [list(x) for x in state.get("holdout_loss", [[] for _ in self.runs])]

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _snapshot(stack: HeadStack) -> dict[str, Tensor]:
        return {name: t.detach().clone() for name, t, _ in _items(stack)}

    @staticmethod
    @torch.no_grad()
    def _copy_slices(stack: HeadStack, best: dict[str, Tensor], mask: Tensor, *, to_best: bool) -> None:
        for name, t, k in _items(stack):
            src, dst = (t, best[name]) if to_best else (best[name], t)
            if k is None:
                m = mask.to(t.device).view(-1, *([1] * (t.ndim - 1)))
                dst.copy_(torch.where(m, src, dst))
            elif bool(mask[k]):
                dst.copy_(src)


def _items(stack: HeadStack) -> list[tuple[str, Tensor, int | None]]:
    """Every tensor of a stack with the config slice it belongs to (None: a leading K axis)."""
    if isinstance(stack, TensorStack):
        return [(name, t, None) for name, t in stack.state_dict(keep_vars=True).items()]
    out = []
    for k, head in enumerate(stack.heads):  # type: ignore[attr-defined]
        for name, t in head.state_dict(keep_vars=True).items():
            out.append((f"{k}.{name}", t, k))
    return out
