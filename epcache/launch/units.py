"""Work units: what one array task (or Ray actor call, or torchrun rank) does, planned once up front.

- extract: a ``(split, block range)``. The blocks are the store's write-blocks (a zarr shard plus
  its record), the same unit torchrun ranks deal out (``extract/_dist.py``); a unit extracts the
  blocks of its range that are not yet recorded, so a requeued or re-submitted unit resumes from
  its last complete block and a finished one costs one read of the records.
- probe: one layer of the sweep with every config that reads it (all heads, lrs, seeds), so each
  layer is streamed once per epoch by exactly one unit, where ``--shard I/N`` made every shard
  stream every layer. A unit is an ordinary sweep restricted to that layer in its own run
  directory (``units/<id>/``), so it resumes from its last epoch checkpoint like any sweep.
  A sweep whose configs read several layers at once (``--layer-mix``), the pooled output, or a
  grid file's own layer lists runs as one unit: splitting those by layer would train configs twice.

Planning the extraction creates the store (as rank 0 does under torchrun), so every task opens a
store whose arrays exist and writes blocks only.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError
from epcache.extract.stages import ensure_pooled, load_backbone, open_or_create, prepare, store_meta
from epcache.launch._configs import extract_config_from_json, extract_config_to_json, probe_config_to_json
from epcache.launch._rundir import LaunchPlan
from epcache.probe.sweep.grid import load_grid, resolve_request, sweep_layers
from epcache.store import open_store
from epcache.store.ops.lock import acquire_store_lock

__all__ = ["block_ranges", "plan_extract_units", "plan_probe_units"]


def block_ranges(num_blocks: dict[str, int], units: int) -> list[dict[str, Any]]:
    """Contiguous block ranges, about ``units`` in all, sized in proportion to each split's blocks.

    Every split gets at least one unit; ranges never cross splits, so a unit reads one split's
    sources. The ranges cover every block exactly once (``gather`` checks the store for that too).
    """
    if units < 1:
        raise ConfigError(f"--units must be at least 1, got {units}")
    total = sum(num_blocks.values())
    out: list[dict[str, Any]] = []
    for split, n in num_blocks.items():
        if n == 0:
            continue
        k = max(1, min(n, round(units * n / max(total, 1))))
        edges = [round(i * n / k) for i in range(k + 1)]
        for a, b in itertools.pairwise(edges):
            out.append({"id": f"{split}-b{a:06d}-{b:06d}", "split": split, "start": a, "stop": b})
    return out


def plan_extract_units(config: Any, units: int, run_dir: Path, *, progress: bool = True) -> LaunchPlan:
    """Create (or continue) the store under its writer lock and cut its blocks into units.

    Raises:
        ConfigError: an HDF5 store (one writer at a time), ``--overwrite`` or ``--dry-run`` (a
            launched run writes into the store in place; delete the old store first), plus every
            error ``epcache extract`` raises before it writes a block.
    """
    if config.taps:  # units write block outputs only; a store listing taps it never fills would look complete
        raise ConfigError(
            f"--taps {config.taps} cannot be launched yet: array tasks write the block outputs only. "
            "Run `epcache extract --taps ...` directly (torchrun works), or launch without --taps"
        )
    if config.overwrite or config.dry_run:
        flag = "--overwrite" if config.overwrite else "--dry-run"
        raise ConfigError(
            f"{flag} cannot be launched: array tasks write into {config.out} in place. "
            + ("Delete the old store first, or choose a new --out" if config.overwrite
               else "run `epcache extract --dry-run ...` directly")
        )
    prep = prepare(config)
    if prep.plan.format == "h5":
        raise ConfigError(
            f"{config.out}: an HDF5 store takes one writer at a time, so its blocks cannot be written by "
            "array tasks; write a zarr store instead (--out NAME.zarr or --format zarr)"
        )
    model, report = load_backbone(prep.source, model_kwargs=config.model_kwargs, img_size=config.effective_img_size,
                                  final_norm=config.final_norm, seed=config.seed)
    del model  # only its state-dict report goes into the store's metadata
    meta = store_meta(prep, report)
    lock = acquire_store_lock(config.out, break_lock=config.break_lock, purpose=f"epcache submit {run_dir}")
    try:
        target = open_or_create(config, prep, meta, progress=progress)
        with target.store as store:
            ensure_pooled(store, prep.sources_in_store, prep.pooled_dim, resumed=target.resumed)
            counts = {name: store.split(name).num_blocks for name in prep.sources}
    finally:
        lock.release()
    cfg = extract_config_to_json(dataclasses.replace(config, resume=False, break_lock=False))
    extract_config_from_json(cfg)  # every task rebuilds it: fail here, not in N tasks
    extra = {"skipped": {k: list(v) for k, v in target.skipped.items()}}
    return LaunchPlan("extract", cfg, tuple(block_ranges(counts, units)), extra)


def plan_probe_units(config: Any) -> LaunchPlan:
    """One unit per layer of the sweep (or one unit for all, see the module docstring).

    Raises:
        ConfigError: ``--shard`` together with a launcher (units replace shards), or no ``--out``.
        Every error of ``epcache probe``'s checks on the store and the grid is raised by the units.
    """
    if config.run.shard is not None:
        raise ConfigError("--shard cannot be combined with a launcher: the launcher splits the sweep into "
                          "layer units itself; drop --shard")
    request = resolve_request(config)
    with open_store(config.store) as store:
        layers = sweep_layers(request, store.meta)
    per_layer = len(layers) > 1 and _grid_leaves_layers(config) and all(
        all(m == "none" for m in b.inputs.layer_mix) and "pooled" not in b.inputs.tokens for b in request.blocks
    )
    cfg = probe_config_to_json(config)
    if not per_layer:
        units = [{"id": "all", "layers": None}]
    else:
        units = [{"id": f"layer{layer:03d}", "layers": [layer]} for layer in layers]
    return LaunchPlan("probe", cfg, tuple(units), {})


def _grid_leaves_layers(config: Any) -> bool:
    """No grid file, or one that sets no layers (a unit's own layer would be replaced by the file's)."""
    if config.grid is None:
        return True
    top, tables = load_grid(config.grid)
    return "layers" not in top and all("layers" not in t for t in tables)
