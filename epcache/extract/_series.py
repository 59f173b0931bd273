"""A checkpoint series: one store per pretraining checkpoint, every store over ONE data plan.

A k-NN number that does not reproduce is diagnosed with a curve over training, and a curve only
means something when every point saw the same images in the same order with the same views and
preprocessing. So the plan (splits scanned, transforms, layers, token layout) is resolved once,
from the first checkpoint, and only the weights and the output path change per store; every store
then carries the same split fingerprints (``ids_sha256``, ``labels_sha256``).

Rules, stated once here and in the README:

- ``--weights`` names a series when it is given more than once, holds a comma, or holds a glob
  character (``* ? [``); each glob's matches are taken in name order, the patterns in the order given.
- the store of ``ckpts/checkpoint_12500.pth`` is ``OUT/checkpoint_12500.zarr`` (``.h5`` with
  ``--format h5``): ``--out`` is the series' directory.
- a checkpoint's training step is the last integer in its file name's stem
  (``checkpoint_12500.pth`` -> 12500, ``model_0009999.pth`` -> 9999), unless ``--steps`` lists them
  (one per checkpoint, in the order above).
- every path, step and weights file is checked before the first store is written; a finished store
  is left as it is on a re-run (the extractor's resume rules), so a killed series resumes.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from epcache.errors import ConfigError
from epcache.extract._config import ExtractConfig, ExtractResult
from epcache.extract._prepare import Prepared, prepare
from epcache.extract._run import extract_prepared
from epcache.extract._weights import locate_weights

__all__ = ["Checkpoint", "checkpoint_step", "extract_series", "is_series", "list_checkpoints", "series_store"]

_GLOB = re.compile(r"[*?\[]")
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")
STEP_RULE = "the last integer in the file name's stem (checkpoint_12500.pth -> 12500)"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint of a series and the training step it was saved at."""

    path: Path
    step: int


def is_series(weights: Sequence[str]) -> bool:
    """Whether ``--weights`` values name a series (repeated, a comma list or a glob) rather than one file."""
    return len(weights) > 1 or any("," in w or _GLOB.search(w) for w in weights)


def checkpoint_step(path: Path) -> int:
    """The training step in a checkpoint's file name (:data:`STEP_RULE`).

    Raises:
        ConfigError: the stem holds no integer.
    """
    m = _LAST_INT.search(Path(path).stem)
    if m is None:
        raise ConfigError(
            f"cannot read a training step from the checkpoint {path}: the step is {STEP_RULE}; rename the file "
            "or pass --steps with one step per checkpoint"
        )
    return int(m.group(1))


def list_checkpoints(weights: Sequence[str], steps: Sequence[int] | None = None) -> list[Checkpoint]:
    """The series' checkpoints in step order, each with its step.

    Raises:
        ConfigError: a pattern that matches no file, a step that cannot be read, ``steps`` of
            another length than the files, two checkpoints at one step or with one stem.
    """
    files: list[Path] = []
    for item in weights:
        for pattern in (p.strip() for p in item.split(",")):
            if not pattern:
                continue
            if _GLOB.search(pattern):
                hits = sorted(glob.glob(str(Path(pattern).expanduser())))
                if not hits:
                    raise ConfigError(
                        f"--weights {pattern!r} matches no file; check the directory and the pattern (quote it so "
                        "the shell does not expand it), e.g. --weights 'ckpts/*.pth'"
                    )
                files.extend(Path(h) for h in hits)
            else:
                files.append(Path(pattern).expanduser())
    if not files:
        raise ConfigError("--weights names no checkpoint; pass a file, a comma list or a glob such as 'ckpts/*.pth'")
    if steps is not None and len(steps) != len(files):
        raise ConfigError(
            f"--steps lists {len(steps)} steps for {len(files)} checkpoints ({', '.join(f.name for f in files)}); "
            "give one step per checkpoint, in the order the files are listed"
        )
    series = [Checkpoint(f, int(steps[i]) if steps is not None else checkpoint_step(f)) for i, f in enumerate(files)]
    _refuse_clashes(series)
    return sorted(series, key=lambda c: c.step)


def _refuse_clashes(series: Sequence[Checkpoint]) -> None:
    """Two checkpoints at one step would be one point twice; two with one stem would share a store."""
    by_step: dict[int, Path] = {}
    by_stem: dict[str, Path] = {}
    for c in series:
        if c.step in by_step:
            raise ConfigError(
                f"checkpoints {by_step[c.step]} and {c.path} both read as step {c.step} ({STEP_RULE}); "
                "pass --steps with one distinct step per checkpoint"
            )
        if c.path.stem in by_stem:
            raise ConfigError(
                f"checkpoints {by_stem[c.path.stem]} and {c.path} would both be stored as {c.path.stem}; "
                "rename one of them or extract them in two series"
            )
        by_step[c.step] = c.path
        by_stem[c.path.stem] = c.path


def series_store(out: str | Path, checkpoint: Checkpoint, fmt: str | None = None) -> str:
    """The store of one checkpoint: ``OUT/<checkpoint stem>.zarr`` (``.h5`` for ``fmt="h5"``)."""
    suffix = ".h5" if fmt == "h5" else ".zarr"
    return f"{str(out).rstrip('/')}/{checkpoint.path.stem}{suffix}"


def extract_series(
    config: ExtractConfig, checkpoints: Sequence[Checkpoint], *, progress: bool = True
) -> list[ExtractResult]:
    """Extract one store per checkpoint under ``config.out`` (a directory), all from one plan.

    ``config.weights`` is ignored (each checkpoint replaces it). Everything that can fail before
    a store exists is checked for every checkpoint first: a bad file in the middle of a series
    must not leave half a series behind.

    Raises:
        ConfigError, WeightsError, ModelError, UnknownLayerError: before any store is written.
        Any error of :func:`epcache.extract.extract_store` for the store being written.
    """
    if not checkpoints:
        raise ConfigError("a checkpoint series needs at least one checkpoint")
    if config.random_init:
        raise ConfigError("--weights and --random-init exclude each other; pass one of them")
    if Path(str(config.out)).suffix in (".zarr", ".h5"):
        raise ConfigError(
            f"--out {config.out} looks like one store, but a checkpoint series writes one store per checkpoint "
            f"into --out as a directory (OUT/<checkpoint stem>.zarr); pass a directory such as --out stores/series"
        )
    first = _one(config, checkpoints[0])
    base = prepare(first)
    for c in checkpoints[1:]:  # the file exists and has a weights suffix: refused now, not after three stores
        locate_weights(base.source.timm_name, weights=c.path, random_init=False)
    results = []
    for c in checkpoints:
        results.append(extract_prepared(_reuse(base, _one(config, c), c), progress=progress))
    return results


def _one(config: ExtractConfig, checkpoint: Checkpoint) -> ExtractConfig:
    return dataclasses.replace(
        config, weights=checkpoint.path, out=series_store(config.out, checkpoint, config.format)
    )


def _reuse(base: Prepared, config: ExtractConfig, checkpoint: Checkpoint) -> Prepared:
    """``base``'s plan with this checkpoint's weights and store: the data plan is shared, never re-scanned."""
    source = dataclasses.replace(base.source, path=checkpoint.path)
    plan = dataclasses.replace(base.plan, weights=source.describe(), out=str(config.out))
    return dataclasses.replace(
        base, config=config, source=source, plan=plan, sources_in_store=dict(base.sources), step=checkpoint.step
    )
