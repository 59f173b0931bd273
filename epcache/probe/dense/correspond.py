"""Training-free keypoint correspondence on patch features: the pairs file, the matcher and PCK.

This is the scoring Probe3D uses for frozen encoders (SPair-71k and NAVI correspondence), on the
patch tokens a store already holds, with no training and no backbone:

- features are L2-normalised per patch (cosine similarity is then a dot product);
- a source keypoint's feature is read from the source grid, by default **bilinearly** between the
  four nearest patch centres (Probe3D samples bilinearly too, ``grid_sample``), or, with
  ``interp="patch"``, as the feature of the one patch that contains it; the sampled feature is
  normalised again, which changes no argmax and keeps the score a cosine;
- the match is the target patch of highest cosine, and the prediction is that patch's **centre** in
  pixels. Probe3D maps the argmax index ``i / w`` (the patch's top-left corner), a bias of half a patch
  down and right; the centre is the unbiased choice, so it is used here;
- a match is correct when its distance to the true target keypoint is strictly below
  ``alpha * scale`` (Probe3D's ``errors < thresh``). ``norm="image"``: scale is max(H, W) of the
  model input; ``norm="bbox"``: max(width, height) of the bounding box of the pair's target
  keypoints. Probe3D's default scales by the target *object's* box, which a pairs file does not carry;
  the keypoints' box is the nearest thing it does, and smaller, so bbox PCK is the stricter number.

Bilinear sampling places patch ``(i, j)``'s feature at its centre ``((j + 0.5) * sx, (i + 0.5) * sy)``
(``sx = W / w``, ``sy = H / h`` pixels per patch) and clamps at the border half-patch, the
``align_corners=False`` convention; Probe3D's ``align_corners=True`` on ``x / W`` instead puts patch
centres half a patch off at the edges, which is why it is not copied.

The optional mutual filter keeps a match only when the target patch's own nearest source patch is
the patch containing the source keypoint; a dropped keypoint counts as a miss, so PCK stays the
fraction of all keypoints and ``kept`` says how many survived.

Coordinates are pixels of the model input (view 0, after the eval resize and crop), x right, y down,
the image spanning ``[0, W) x [0, H)``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from epcache.errors import ConfigError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "INTERPS",
    "PAIR_COLUMNS",
    "PCK_NORMS",
    "Interp",
    "Matches",
    "Pairs",
    "PckNorm",
    "match_keypoints",
    "parse_thresholds",
    "pck",
    "pck_scale",
    "read_pairs",
]

PAIR_COLUMNS: tuple[str, ...] = ("source_id", "target_id", "sx", "sy", "tx", "ty")
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.05, 0.10, 0.15)
PckNorm = Literal["image", "bbox"]
Interp = Literal["bilinear", "patch"]
PCK_NORMS: tuple[str, ...] = ("image", "bbox")
INTERPS: tuple[str, ...] = ("bilinear", "patch")


@dataclass(frozen=True)
class Pairs:
    """Keypoints grouped into image pairs: keypoint ``k`` belongs to pair ``pair[k]``.

    ``ids[p]`` is pair ``p``'s (source id, target id), in the order the file first names them; ``line[k]``
    is keypoint ``k``'s line in the file, so an error can point at it.
    """

    ids: tuple[tuple[str, str], ...]
    pair: np.ndarray  # [K] int64 index into ids
    source_xy: np.ndarray  # [K, 2] float64 pixels (x, y) in the source image
    target_xy: np.ndarray  # [K, 2] float64 pixels (x, y) in the target image
    line: np.ndarray  # [K] int64, 1-based line of the file (the header is line 1)

    def __len__(self) -> int:
        return len(self.pair)

    def keypoints(self, p: int) -> np.ndarray:
        """Indices of pair ``p``'s keypoints."""
        return np.flatnonzero(self.pair == p)

    def sample_ids(self) -> list[str]:
        """Every image the pairs name, each once, sorted."""
        return sorted({i for pair in self.ids for i in pair})


def read_pairs(path: Path | str) -> Pairs:
    """The pairs of a CSV with the columns ``source_id,target_id,sx,sy,tx,ty``, one row per keypoint.

    Raises:
        ConfigError: a missing file, a missing column, a value that is not a finite number, no rows.
    """
    path = Path(path)
    fix = f"one row per keypoint under the header {','.join(PAIR_COLUMNS)}"
    if not path.is_file():
        raise ConfigError(f"--pairs {path}: no such file; give a CSV with {fix}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"--pairs {path}: no column(s) {', '.join(missing)}; the file needs {fix}")
        index: dict[tuple[str, str], int] = {}
        pair, xy, line = [], [], []
        for row in reader:
            n = reader.line_num
            key = (str(row["source_id"]).strip(), str(row["target_id"]).strip())
            if not all(key):
                raise ConfigError(f"--pairs {path}, line {n}: empty source_id or target_id; every row names both")
            pair.append(index.setdefault(key, len(index)))
            xy.append([_number(path, n, row, c) for c in PAIR_COLUMNS[2:]])
            line.append(n)
    if not pair:
        raise ConfigError(f"--pairs {path}: no keypoints; the file needs {fix}")
    coords = np.asarray(xy, dtype=np.float64)
    return Pairs(tuple(index), np.asarray(pair, np.int64), coords[:, :2], coords[:, 2:], np.asarray(line, np.int64))


def _number(path: Path, line: int, row: dict[str, str | None], column: str) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"--pairs {path}, line {line}: {column}={text!r} is not a finite number of pixels")
    return value


def parse_thresholds(values: str | Sequence[float]) -> tuple[float, ...]:
    """PCK thresholds from a comma list (``"0.05,0.1"``) or numbers; each in (0, 1].

    Raises:
        ConfigError: a value that is not a number in (0, 1], or none at all.
    """
    parts = [p.strip() for p in values.split(",") if p.strip()] if isinstance(values, str) else list(values)
    out = []
    for p in parts:
        try:
            a = float(p)
        except ValueError:
            a = math.nan
        if not 0.0 < a <= 1.0:
            raise ConfigError(f"--thresholds: {p!r} is not a fraction in (0, 1]; use e.g. 0.05,0.10,0.15")
        out.append(a)
    if not out:
        raise ConfigError("--thresholds is empty; use e.g. 0.05,0.10,0.15")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Matches:
    """Where each source keypoint landed in its target image, in target pixels."""

    xy: np.ndarray  # [K, 2] float64: the centre of the matched target patch
    patch: np.ndarray  # [K] int64: the matched target patch, row-major
    kept: np.ndarray  # [K] bool: False where the mutual filter dropped the match
    score: np.ndarray  # [K] float32: the cosine of the match


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def _containing_patch(xy: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The row-major index of the patch each (x, y) lies in (a point on the far edge: the last patch)."""
    (h, w), (height, width) = grid, size
    col = np.clip(np.floor(xy[:, 0] * w / width), 0, w - 1).astype(np.int64)
    row = np.clip(np.floor(xy[:, 1] * h / height), 0, h - 1).astype(np.int64)
    return row * w + col


def _bilinear(grid_feats: np.ndarray, xy: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Features at (x, y), bilinear between the four nearest patch centres (clamped at the border)."""
    (h, w), (height, width) = grid, size
    u = np.clip(xy[:, 0] * w / width - 0.5, 0, w - 1)
    v = np.clip(xy[:, 1] * h / height - 0.5, 0, h - 1)
    c0, r0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    c1, r1 = np.minimum(c0 + 1, w - 1), np.minimum(r0 + 1, h - 1)
    fu, fv = (u - c0)[:, None], (v - r0)[:, None]
    g = grid_feats.reshape(h, w, -1)
    top = g[r0, c0] * (1 - fu) + g[r0, c1] * fu
    bottom = g[r1, c0] * (1 - fu) + g[r1, c1] * fu
    return np.asarray(top * (1 - fv) + bottom * fv, dtype=np.float32)


def match_keypoints(
    source: np.ndarray,
    target: np.ndarray,
    source_xy: np.ndarray,
    *,
    grid: tuple[int, int],
    size: tuple[int, int],
    interp: Interp = "bilinear",
    mutual: bool = False,
) -> Matches:
    """Match keypoints of one source image to the nearest (cosine) patch of one target image.

    ``source`` and ``target`` are the two images' patch features ``[h * w, D]`` (row-major, any
    scale: they are normalised here); ``source_xy`` is ``[K, 2]`` pixels in an image of ``size``
    ``(H, W)``. See the module docstring for the sampling, the patch centres and the mutual filter.
    """
    h, w = grid
    if source.shape[0] != h * w or target.shape[0] != h * w:
        raise ValueError(f"features hold {source.shape[0]} and {target.shape[0]} patches, the grid {h}x{w}")
    src, tgt = _normalise(source), _normalise(target)
    xy = np.asarray(source_xy, dtype=np.float64).reshape(-1, 2)
    own = _containing_patch(xy, grid, size)
    query = src[own] if interp == "patch" else _normalise(_bilinear(src, xy, grid, size))
    sim = query @ tgt.T  # [K, h*w]
    best = sim.argmax(axis=1)
    score = sim[np.arange(len(best)), best]
    kept = np.ones(len(best), dtype=bool)
    if mutual:
        back = (tgt[best] @ src.T).argmax(axis=1)  # each matched target patch's nearest source patch
        kept = back == own
    height, width = size
    centre = np.stack([(best % w + 0.5) * (width / w), (best // w + 0.5) * (height / h)], axis=1)
    return Matches(centre.astype(np.float64), best.astype(np.int64), kept, score.astype(np.float32))


def pck(
    predicted: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float],
    *,
    scale: float | np.ndarray,
    kept: np.ndarray | None = None,
) -> np.ndarray:
    """``[len(thresholds), K]`` bool: keypoint k is correct at alpha when ``|pred - truth| < alpha * scale``.

    ``scale`` is one number or one per keypoint (``norm="bbox"`` gives each pair its own); a keypoint
    not ``kept`` (mutual filter) is never correct. Average over axis 1 for the PCK of a set of keypoints.
    """
    err = np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64), axis=-1)
    alphas = np.asarray(thresholds, dtype=np.float64)[:, None]
    correct = err[None, :] < alphas * np.asarray(scale, dtype=np.float64)
    if kept is not None:
        correct &= np.asarray(kept, dtype=bool)[None, :]
    return correct


def pck_scale(pairs: Pairs, norm: PckNorm, size: tuple[int, int]) -> np.ndarray:
    """Each keypoint's PCK scale in pixels: max(H, W) of the input, or max side of its pair's target-keypoint box.

    Raises:
        ConfigError: ``norm="bbox"`` and a pair whose target keypoints span no box (fewer than two distinct points).
    """
    if norm == "image":
        return np.full(len(pairs), float(max(size)))
    scale = np.empty(len(pairs))
    for p, (src, tgt) in enumerate(pairs.ids):
        k = pairs.keypoints(p)
        side = float((pairs.target_xy[k].max(axis=0) - pairs.target_xy[k].min(axis=0)).max())
        if side <= 0:
            raise ConfigError(f"--pck-norm bbox: the target keypoints of pair {src} -> {tgt} (line "
                              f"{pairs.line[k[0]]}) span no box; give it two or more distinct keypoints, "
                              "or use --pck-norm image")
        scale[k] = side
    return scale
