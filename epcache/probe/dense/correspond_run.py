"""`epcache correspond`: keypoint correspondence PCK of one split's stored patch tokens, for several layers.

Everything a user can get wrong (the pairs file, ids the split lacks, keypoints outside the input,
a layer the store lacks, a store without a patch grid, an existing output) is checked before any
token is read, so a refusal writes nothing. Each layer is one read of the rows the pairs name
(``read_rows``, grouped by chunk), view 0 (the eval view), patch tokens only; the matching and PCK
are :mod:`epcache.probe.dense.correspond`'s. ``correspond.json`` and ``correspond.csv`` are written
through temporaries and renamed, so a killed run leaves nothing that looks complete.

Keypoints are in pixels of the model input. Coordinates in the original image cannot be mapped
exactly: the eval transform (resize the shorter side, centre crop) depends on each image's size,
which a store does not record, so that option is deliberately absent.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from epcache._docs import doc, document_fields
from epcache._fs.atomic import atomic_write
from epcache._layerspec import resolve_stored_layers
from epcache.errors import ConfigError, IncompleteStoreError, StoreExistsError
from epcache.probe.dense.correspond import (
    DEFAULT_THRESHOLDS,
    INTERPS,
    PCK_NORMS,
    Interp,
    Pairs,
    PckNorm,
    match_keypoints,
    parse_thresholds,
    pck,
    pck_scale,
    read_pairs,
)
from epcache.store import FeatureStore, open_store

__all__ = ["CorrespondConfig", "CorrespondResult", "correspond_store", "input_size", "layer_entries"]

OUT_FILES: tuple[str, str] = ("correspond.json", "correspond.csv")


@document_fields
@dataclass(frozen=True)
class CorrespondConfig:
    """One correspondence run: the ``pairs`` of ``split`` scored on ``layers`` of ``store``."""

    store: Path | str = doc(doc="the feature store (zarr directory, .h5 file or URL)")
    pairs: Path | str = doc(doc="CSV source_id,target_id,sx,sy,tx,ty, one row per keypoint; ids are the split's "
                            "sample ids, coordinates pixels of the model input (x right, y down)")
    split: str = doc("val", doc="the split holding both images of every pair")
    layers: str = doc("-1", doc="stored layers: a comma list or spec (-1, 0,5,11, -4:, last, all); negative "
                      "counts from the model's last block, as extract does")
    thresholds: tuple[float, ...] = doc(DEFAULT_THRESHOLDS, doc="PCK alphas, each in (0, 1]")
    pck_norm: PckNorm = doc("image", doc="PCK scale: image = max(H, W) of the model input, bbox = max side of the "
                            "box of the pair's target keypoints")
    interp: Interp = doc("bilinear", doc="source keypoint feature: bilinear between patch centres, or patch = the "
                         "patch containing it")
    mutual: bool = doc(False, doc="keep only mutual nearest neighbours; a dropped keypoint counts as a miss")
    out: Path | str | None = doc(None, doc="folder for correspond.json and correspond.csv; unset: print the table only")
    force: bool = doc(False, doc="replace existing correspond.json / correspond.csv in `out`")

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", parse_thresholds(self.thresholds))
        if self.pck_norm not in PCK_NORMS:
            raise ConfigError(f"--pck-norm {self.pck_norm!r}: use {' or '.join(PCK_NORMS)}")
        if self.interp not in INTERPS:
            raise ConfigError(f"--interp {self.interp!r}: use {' or '.join(INTERPS)}")


@dataclass(frozen=True)
class CorrespondResult:
    """PCK per layer and threshold, over all keypoints and per pair (fractions in [0, 1])."""

    config: CorrespondConfig
    store: str
    provenance: str
    size: tuple[int, int]  # (H, W) of the model input
    layers: tuple[int, ...]
    grids: dict[int, tuple[int, int]]
    pairs: tuple[tuple[str, str], ...]
    keypoints_per_pair: tuple[int, ...]
    overall: dict[int, tuple[float, ...]]  # layer -> PCK at each threshold, over every keypoint
    pair_mean: dict[int, tuple[float, ...]]  # layer -> the mean of the per-pair PCKs
    per_pair: dict[int, np.ndarray]  # layer -> [P, len(thresholds)]
    kept: dict[int, int]  # layer -> keypoints the mutual filter kept (all without it)
    written: tuple[str, ...] = field(default=())

    def format_table(self) -> str:
        c = self.config
        k = sum(self.keypoints_per_pair)
        head = (f"PCK % (--pck-norm {c.pck_norm}, {c.interp}{', mutual' if c.mutual else ''}): {k} keypoints in "
                f"{len(self.pairs)} pairs of split {c.split!r}, input {self.size[0]}x{self.size[1]}")
        cols = [f"@{a:g}" for a in c.thresholds]
        lines = [head, "  ".join([f"{'layer':>5}", f"{'grid':>7}", *(f"{h:>6}" for h in cols)])]
        for layer in self.layers:
            grid = "x".join(map(str, self.grids[layer]))
            vals = (f"{100 * v:6.1f}" for v in self.overall[layer])
            lines.append("  ".join([f"{layer:>5}", f"{grid:>7}", *vals]))
        if c.mutual:
            lines.append("kept by the mutual filter: " + ", ".join(f"layer {ly} {self.kept[ly]}/{k}"
                                                                  for ly in self.layers))
        lines.extend(f"wrote {w}" for w in self.written)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        c = self.config
        keys = [f"{a:g}" for a in c.thresholds]
        return {
            "store": self.store, "provenance": self.provenance, "split": c.split, "pairs_file": str(c.pairs),
            "coordinates": "pixels of the model input (view 0), x right, y down, image [0, W) x [0, H)",
            "input_size": list(self.size), "thresholds": list(c.thresholds), "pck_norm": c.pck_norm,
            "interp": c.interp, "mutual": c.mutual, "match_point": "centre of the matched target patch",
            "keypoints": sum(self.keypoints_per_pair), "num_pairs": len(self.pairs),
            "layers": [{"layer": ly, "grid": list(self.grids[ly]), "kept": self.kept[ly],
                        "pck": dict(zip(keys, self.overall[ly], strict=True)),
                        "pck_pair_mean": dict(zip(keys, self.pair_mean[ly], strict=True))} for ly in self.layers],
            "pairs": [{"source_id": s, "target_id": t, "keypoints": n,
                       "pck": {str(ly): dict(zip(keys, self.per_pair[ly][p].tolist(), strict=True))
                               for ly in self.layers}}
                      for p, ((s, t), n) in enumerate(zip(self.pairs, self.keypoints_per_pair, strict=True))],
        }

    def to_csv(self) -> str:
        """One row per layer and pair: the per-pair PCK at each threshold."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["layer", "source_id", "target_id", "keypoints", *(f"pck@{a:g}" for a in self.config.thresholds)])
        for ly in self.layers:
            for p, ((s, t), n) in enumerate(zip(self.pairs, self.keypoints_per_pair, strict=True)):
                w.writerow([ly, s, t, n, *(f"{v:.6g}" for v in self.per_pair[ly][p])])
        return buf.getvalue()


def layer_entries(spec: str) -> list[int | str]:
    """``--layers`` text as entries for :func:`resolve_stored_layers`: ints where a part is one, else the spec."""
    out: list[int | str] = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            out.append(int(part))
        except ValueError:
            out.append(part)
    return out


def input_size(store: FeatureStore) -> tuple[int, int]:
    """(H, W) of the model input the store's tokens saw, from its recorded preprocessing.

    Raises:
        ConfigError: the preprocessing records no input size.
    """
    pre = store.meta.preprocessing
    for source in (pre.get("data_config") or {}, pre):
        size = source.get("input_size") if isinstance(source, dict) else None
        if isinstance(size, list | tuple) and len(size) == 3:
            return int(size[1]), int(size[2])
    if isinstance(pre.get("img_size"), int):
        return int(pre["img_size"]), int(pre["img_size"])
    raise ConfigError(f"{store.location}: its preprocessing records no input size, so keypoint pixels cannot be "
                      "placed on the patch grid; re-extract it with `epcache extract`, which records it")


def correspond_store(config: CorrespondConfig) -> CorrespondResult:
    """Score keypoint correspondence on the store's patch tokens (see the module docstring).

    Raises:
        ConfigError: a bad pairs file, ids the split lacks, keypoints outside the input, a store without a
            patch grid, bbox scaling of a pair with one keypoint.
        UnknownSplitError, UnknownLayerError: what the store lacks.
        IncompleteStoreError: blocks holding a named image were never written.
        StoreExistsError: an output exists and ``force`` is off.
    """
    pairs = read_pairs(config.pairs)
    out = None if config.out is None else Path(config.out)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for {' and '.join(OUT_FILES)}")
        taken = [str(out / n) for n in OUT_FILES if (out / n).exists()]
        if taken and not config.force:
            raise StoreExistsError(f"{', '.join(taken)} exist(s); pass --force to replace, or choose another --out")
    with open_store(config.store) as store:
        store.split(config.split)
        meta = store.meta
        if meta.layout.keep is not None:
            raise ConfigError(f"{store.location} is a light store (--keep {','.join(meta.layout.keep)}): it holds "
                              "one averaged token per image, no patch grid to place keypoints on; use a full store "
                              "(extract without --keep)")
        layers = resolve_stored_layers(layer_entries(config.layers), meta.layers, meta.backbone.num_blocks or None,
                                       model=meta.backbone.name)
        grids = {ly: meta.for_layer(ly).layout.grid for ly in layers}
        _check_grid(store, grids)
        size = input_size(store)
        rows = _rows(store, config.split, pairs)
        _check_inside(pairs, size, config.pairs)
        scale = pck_scale(pairs, config.pck_norm, size)
        _check_written(store, config.split, layers, rows)
        result = _score(store, config, pairs, layers, grids, size, rows, scale)
    if out is None:
        return result
    out.mkdir(parents=True, exist_ok=True)
    payload = {OUT_FILES[0]: json.dumps(result.to_json(), indent=1) + "\n", OUT_FILES[1]: result.to_csv()}
    for name, text in payload.items():
        atomic_write(out / name, lambda f, t=text: f.write(t.encode("utf-8")))  # type: ignore[misc]
    return CorrespondResult(**{**result.__dict__, "written": tuple(str(out / n) for n in OUT_FILES)})


def _check_grid(store: FeatureStore, grids: dict[int, tuple[int, int]]) -> None:
    flat = sorted(ly for ly, (h, w) in grids.items() if h * w < 2)
    if flat:
        raise ConfigError(f"{store.location}: layer(s) {flat} hold a 1x1 patch grid, nothing to match keypoints "
                          "against; use a store pooled less (or not at all: --pool-patches 1)")


def _rows(store: FeatureStore, split: str, pairs: Pairs) -> dict[str, int]:
    """Stored row of every id the pairs name."""
    ids = store.read_ids(split)
    where = {sid: r for r, sid in enumerate(ids)}
    unknown = [i for i in pairs.sample_ids() if i not in where]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        example = f", e.g. {ids[0]!r}" if ids else ""
        raise ConfigError(f"--pairs: {len(unknown)} id(s) not in split {split!r} of {store.location}: {shown}; use "
                          f"the store's sample ids (paths under the data root, '/'-separated{example})")
    labels = store.read_labels(split)
    skipped = [i for i in pairs.sample_ids() if labels[where[i]] < 0]
    if skipped:
        raise ConfigError(f"--pairs: {', '.join(map(repr, skipped[:5]))} were skipped at extraction (label -1, no "
                          "tokens); leave those pairs out or re-extract the images")
    return {i: where[i] for i in pairs.sample_ids()}


def _check_inside(pairs: Pairs, size: tuple[int, int], path: Path | str) -> None:
    height, width = size
    for name, xy in (("sx,sy", pairs.source_xy), ("tx,ty", pairs.target_xy)):
        bad = np.flatnonzero((xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height))
        if bad.size:
            k = int(bad[0])
            raise ConfigError(f"--pairs {path}, line {pairs.line[k]}: keypoint {name}=({xy[k, 0]:g}, {xy[k, 1]:g}) "
                              f"lies outside the {width}x{height} model input ({bad.size} such row(s)); give "
                              "pixels of the model input (after the eval resize and crop), 0 <= x < W, 0 <= y < H")


def _check_written(store: FeatureStore, split: str, layers: list[int], rows: dict[str, int]) -> None:
    needed = np.asarray(sorted(rows.values()), dtype=np.int64)
    for ly in layers:
        for b in store.missing_blocks(split, ly):
            lo, hi = store.block_range(split, b)
            if ((needed >= lo) & (needed < hi)).any():
                raise IncompleteStoreError(f"{store.location}: split {split!r} layer {ly} has block {b} (rows "
                                           f"{lo}..{hi - 1}) not written; finish the extraction (run `epcache "
                                           "extract` again to resume it)")


def _score(
    store: FeatureStore,
    config: CorrespondConfig,
    pairs: Pairs,
    layers: list[int],
    grids: dict[int, tuple[int, int]],
    size: tuple[int, int],
    rows: dict[str, int],
    scale: np.ndarray,
) -> CorrespondResult:
    ids = list(rows)
    slot = {sid: i for i, sid in enumerate(ids)}
    prefix = store.meta.layout.num_prefix
    overall, pair_mean, per_pair, kept = {}, {}, {}, {}
    for ly in layers:
        x = store.read_rows(config.split, ly, [rows[i] for i in ids])  # one read per layer, grouped by chunk
        patches = x[:, 0, prefix:]  # view 0 (eval view), patch grid row-major; float32 per pair, not all at once
        correct = np.zeros((len(config.thresholds), len(pairs)), dtype=bool)
        kept_all = np.zeros(len(pairs), dtype=bool)
        for p, (src, tgt) in enumerate(pairs.ids):
            k = pairs.keypoints(p)
            m = match_keypoints(patches[slot[src]], patches[slot[tgt]], pairs.source_xy[k], grid=grids[ly],
                                size=size, interp=config.interp, mutual=config.mutual)
            correct[:, k] = pck(m.xy, pairs.target_xy[k], config.thresholds, scale=scale[k], kept=m.kept)
            kept_all[k] = m.kept
        table = np.stack([correct[:, pairs.keypoints(p)].mean(axis=1) for p in range(len(pairs.ids))])
        per_pair[ly] = table
        overall[ly] = tuple(float(v) for v in correct.mean(axis=1))
        pair_mean[ly] = tuple(float(v) for v in table.mean(axis=0))
        kept[ly] = int(kept_all.sum())
    counts = tuple(int((pairs.pair == p).sum()) for p in range(len(pairs.ids)))
    return CorrespondResult(config, store.location, store.provenance, size, tuple(layers), grids, pairs.ids, counts,
                            overall, pair_mean, per_pair, kept)
