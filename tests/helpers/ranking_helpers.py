"""Hand-built results rows for the ranking tests: a true top-1 tie that only the holdout loss breaks."""

from __future__ import annotations

from typing import Any


def _m(top1: float, loss: float | None) -> dict[str, Any]:
    return {"top1": top1, "balanced_acc": top1, "loss": loss, "top5": None, "n": 4, "per_class": []}


def tie_rows() -> list[dict[str, Any]]:
    """Two mhca configs with equal seed-mean holdout top-1 (lr=0.003 first, with the higher loss), 2 seeds each."""

    def row(lr: float, seed: int, hold: float, loss: float, ev: float, oracle: float) -> dict[str, Any]:
        group = f"mhca-{lr}"
        return {"id": f"{group}-{seed}".ljust(16, "x"), "name": f"mhca layer=0 tokens=patch lr={lr} seed={seed}",
                "seed_group": group, "config": {"kind": "mhca", "head": "mhca", "layer": 0, "tokens": "patch",
                                                "lr": lr, "seed": seed, "head_options": {}},
                "params": 100, "flops": 300, "metrics": {"holdout": _m(hold, loss), "eval": _m(ev, None)},
                "selected_epoch": 2, "oracle": {"epoch": 3, "eval_top1": oracle},
                "final": {"epoch": 3, "eval_top1": ev}, "curves": {"eval_top1": [ev, ev, oracle]},
                "head_file": f"heads/{group}-{seed}.safetensors",
                "store": {"backbone": "toy", "path": "s.zarr", "provenance": "ab" * 32}}

    return [row(0.003, 0, 0.75, 0.90, 0.70, 0.74), row(0.003, 1, 0.75, 0.80, 0.72, 0.78),
            row(0.01, 0, 0.75, 0.50, 0.68, 0.73), row(0.01, 1, 0.75, 0.40, 0.70, 0.77)]
