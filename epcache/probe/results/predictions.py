"""A dense row's stored eval predictions, ``RUNDIR/dense/<id>.npz``: written by the probe, read by the report.

uint8 (uint16 beyond 255 classes) arrays in a plain ``.npz`` with pickling off, written to a temporary
name and renamed, so a killed run never leaves a cut file that a report would draw. numpy only: the
report reads these without importing torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from epcache._fs.atomic import atomic_write

__all__ = ["DENSE_DIR", "read_predictions", "write_predictions"]

DENSE_DIR = "dense"  # RUNDIR/dense/<id>.npz: a row's first eval images' predictions and their ground truth


def write_predictions(path: Path, pred: np.ndarray, truth: np.ndarray) -> None:
    """``pred`` and ``truth`` ``[m, H, W]`` class indices, atomically."""
    dtype = np.uint8 if max(int(truth.max(initial=0)), int(pred.max(initial=0))) < 256 else np.uint16
    buf = io.BytesIO()
    np.savez_compressed(buf, pred=pred.astype(dtype), truth=truth.astype(dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """``pred`` and ``truth`` ``[m, H, W]`` of a dense row's first eval images (``allow_pickle`` off)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
