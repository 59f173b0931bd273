"""`epcache demo`: the whole pipeline on data epcache makes itself, in a few minutes on 2 CPU cores.

It generates a shapes dataset, extracts every layer of a small random-init ViT, sweeps linear
(CLS, GAP), EP with a few query counts and MHCA over two learning rates and several layers in
one fused pass per layer, prints the summary and writes the report. The backbone is random, so
the numbers show that the pipeline works, not how good any model is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epcache._text import plural
from epcache.demo._shapes import ShapesConfig, make_shapes_dataset
from epcache.errors import StoreExistsError
from epcache.extract import ExtractConfig, extract_store
from epcache.probe import ProbeConfig, ProbeResult, probe_store
from epcache.report import write_report

__all__ = ["DENSE_DEMO_HEADS", "DemoConfig", "DemoResult", "run_demo", "run_dense_demo"]

DEMO_MODEL = "vit_tiny_patch16_224"  # width 192; the demo sets depth and patch size (DemoConfig.depth, patch 8)
DENSE_DEMO_HEADS: tuple[str, ...] = ("dense-knn", "dense-logreg", "seg-linear", "hummingbird", "linear")
REAL_WEIGHTS_HINT = """\
With real weights (a local checkpoint, or timm weights already in the Hugging Face cache):
  epcache extract --model mae_vitb --weights mae_pretrain_vit_base.pth --data /data/imagenet \\
      --split train=train --split val=val --layers -4: --out imagenet_mae_vitb.zarr
  epcache probe --store imagenet_mae_vitb.zarr --head linear,ep,knn,logreg --queries 8,32 \\
      --layers all --out runs/mae_vitb        # recipe auto; --recipe ep-paper: the paper's protocol
  epcache report runs/mae_vitb"""


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``quick()`` is the reduced version the test-suite runs."""

    shapes: ShapesConfig = field(
        default_factory=lambda: ShapesConfig(num_classes=4, train_per_class=100, val_per_class=40, size=64)
    )
    depth: int = 4  # blocks of the random-init ViT (vit_tiny width 192, patch 8 -> 8x8 grid at 64 px)
    queries: tuple[int, ...] = (4, 16)
    lrs: tuple[float, ...] = (3e-3, 1e-2)
    epochs: int = 30
    batch_size: int = 64
    holdout: float = 0.15  # of train: picks each config's epoch and the best config (60 of 400 images)
    figures: bool = True

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(shapes=ShapesConfig(num_classes=3, train_per_class=24, val_per_class=8, size=32), depth=2,
                   queries=(4,), epochs=3, batch_size=16)


@dataclass(frozen=True)
class DemoResult:
    out: Path
    data: Path
    store: Path
    rundir: Path
    report: Path | None
    figures: tuple[Path, ...]
    summary: str
    seconds: float


def run_demo(out: str | Path = "epcache-demo", config: DemoConfig = DemoConfig(), *,
             echo: Callable[[str], None] = print, progress: bool = True, dense: bool = False) -> DemoResult:
    """Run the demo into ``out`` (refuses a non-empty ``out`` that is not a finished demo).

    ``dense``: the segmentation demo instead (:func:`run_dense_demo`), into ``out``'s ``*-dense`` paths.

    Raises:
        StoreExistsError: ``out`` holds something else.
    """
    t0 = time.perf_counter()
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not (root / "demo.txt").exists():
        raise StoreExistsError(f"{root} exists and is not an epcache demo directory; pass another --out")
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.txt").write_text("epcache demo output; safe to delete\n")
    if dense:
        return run_dense_demo(root, config, echo=echo, progress=progress, t0=t0)
    sh = config.shapes
    n_train, n_val = sh.num_classes * sh.train_per_class, sh.num_classes * sh.val_per_class
    kwargs = {"depth": config.depth, "patch_size": 8}
    heads = ("linear(tokens='cls')", "linear(tokens='gap')", "ep", "mhca")
    layers = tuple(range(config.depth))
    n_configs = (3 + len(config.queries)) * len(config.lrs) * len(layers)
    echo(f"epcache demo: a RANDOM-INIT {DEMO_MODEL} ({config.depth} blocks, patch 8, {sh.size} px);\n"
         "the numbers show the pipeline, not a model's quality.")
    echo(f"plan: {n_train} train / {n_val} val images ({sh.num_classes} classes) -> {config.depth} blocks -> "
         f"{n_configs} configs x {config.epochs} epochs -> report")
    data = root / "data"
    if not (data / "val").exists():
        make_shapes_dataset(data, sh)
    store = root / "store.zarr"
    res = extract_store(
        ExtractConfig(model=DEMO_MODEL, data=data, out=store, random_init=True, img_size=sh.size,
                      model_kwargs=kwargs, workers=0, layers="all", batch_size=32),
        progress=progress,
    )
    rundir = root / "run"

    def sweep(on: tuple[int, ...]) -> ProbeResult:
        return probe_store(
            ProbeConfig(
                store=str(store), head=heads, queries=config.queries, layers=on, optimizer=("adamw",), lr=config.lrs,
                epochs=config.epochs, warmup=max(1, config.epochs // 10), batch_size=config.batch_size,
                holdout=config.holdout, out=str(rundir),
                linear_fit="sgd",  # the paper's trained probes side by side; --head linear adds the closed form
            ),
            progress=False,
        )

    # one bar for the whole stage: a sweep per layer (a config's numbers do not depend on its sweep),
    # then the full sweep, which finds every config finished and only gathers the rows
    with _bar(progress, len(layers), "probe (layers)") as bar:
        trained = 0
        for layer in layers:
            part = sweep((layer,))
            trained += len(part.rows) - len(part.skipped)
            bar.update(1)
    result = sweep(layers)
    if trained == len(result.rows):
        echo(f"probe: {plural(trained, 'config')} trained, one fused pass per layer")
    elif trained:
        echo(f"probe: {plural(trained, 'config')} trained, {len(result.rows) - trained} already in {rundir}")
    else:
        echo(f"probe: all {plural(len(result.rows), 'config')} already in {rundir}: skipped (delete it to retrain)")
    echo(result.summary)
    report_path, figures = _report_and_paths(config, echo, rundir, root / "report", status=res.status,
                                             data=f"{data}  ({n_train} train / {n_val} val images)",
                                             store=store, results="")
    echo(f"attention maps: epcache attention {rundir} --config best")
    echo("the same backbone from the CLI:\n"
         f"  epcache extract --model {DEMO_MODEL} --random-init --img-size {sh.size} \\\n"
         f"      --model-kwargs '{json.dumps(kwargs)}' --data {data} --out my_store.zarr")
    echo(REAL_WEIGHTS_HINT)
    return DemoResult(out=root, data=data, store=store, rundir=rundir, report=report_path, figures=figures,
                      summary=result.summary, seconds=time.perf_counter() - t0)


def run_dense_demo(root: Path, config: DemoConfig, *, echo: Callable[[str], None], progress: bool,
                   t0: float) -> DemoResult:
    """The shapes with per-pixel masks -> ``extract --masks`` -> the four dense heads and a linear head -> report.

    Dense heads read the last block only: per-patch fits cost ``images x patches`` rows, and one layer
    shows every head next to the majority floor.
    """
    sh = config.shapes
    n_train, n_val = sh.num_classes * sh.train_per_class, sh.num_classes * sh.val_per_class
    kwargs = {"depth": config.depth, "patch_size": 8}
    last = config.depth - 1
    echo(f"epcache demo --dense: a RANDOM-INIT {DEMO_MODEL} ({config.depth} blocks, patch 8, {sh.size} px);\n"
         "the numbers show the pipeline, not a model's quality.")
    echo(f"plan: {n_train} train / {n_val} val images with masks ({sh.num_classes} shapes + background) -> "
         f"block {last} -> {', '.join(DENSE_DEMO_HEADS)} -> report")
    data, store, rundir = root / "data-dense", root / "store-dense.zarr", root / "run-dense"
    if not (data / "val").exists():
        make_shapes_dataset(data, sh, masks=True)
    res = extract_store(
        ExtractConfig(model=DEMO_MODEL, data=data, out=store, random_init=True, img_size=sh.size, masks=True,
                      model_kwargs=kwargs, workers=0, layers="all", batch_size=32),
        progress=progress,
    )
    result = probe_store(
        ProbeConfig(store=str(store), head=DENSE_DEMO_HEADS, layers=(last,), optimizer=("adamw",), lr=config.lrs[:1],
                    epochs=config.epochs, warmup=max(1, config.epochs // 10), batch_size=config.batch_size,
                    holdout=config.holdout, out=str(rundir), linear_fit="sgd"),
        progress=progress,
    )
    echo(result.summary)
    report_path, figures = _report_and_paths(config, echo, rundir, root / "report-dense", status=res.status,
                                             data=f"{data}  ({n_train} train / {n_val} val images, masks beside them)",
                                             store=store, results=f"  (dense predictions: {rundir / 'dense'})")
    echo("the same from the CLI:\n"
         f"  epcache extract --model {DEMO_MODEL} --random-init --img-size {sh.size} --masks \\\n"
         f"      --model-kwargs '{json.dumps(kwargs)}' --data {data} --out my_store.zarr\n"
         f"  epcache probe --store my_store.zarr --head {','.join(DENSE_DEMO_HEADS)} --layers {last} --out run")
    return DemoResult(out=root, data=data, store=store, rundir=rundir, report=report_path, figures=figures,
                      summary=result.summary, seconds=time.perf_counter() - t0)


@contextmanager
def _bar(enabled: bool, total: int, desc: str) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _report_and_paths(config: DemoConfig, echo: Callable[[str], None], rundir: Path, report_dir: Path, *,
                      status: str, data: str, store: Path, results: str) -> tuple[Path | None, tuple[Path, ...]]:
    """Write the report (unless figures are off) and say where the data, store, results and report are."""
    report_path: Path | None = None
    figures: tuple[Path, ...] = ()
    if config.figures:
        rep = write_report(rundir, report_dir)
        report_path, figures = rep.markdown, tuple(rep.figures)
    echo(f"data     {data}")
    echo(f"store    {store}  ({'reused: already complete' if status == 'already-complete' else 'extracted'})")
    echo(f"results  {rundir / 'results.jsonl'}{results}")
    if report_path is not None:
        echo(f"report   {report_path}  ({plural(len(figures), 'figure')})")
    return report_path, figures
