"""`epcache demo`: the whole pipeline on data epcache makes itself, in a few minutes on 2 CPU cores.

It generates a shapes dataset, extracts every layer of a small random-init ViT, sweeps linear
(CLS, GAP), EP with a few query counts and MHCA over two learning rates and several layers in
one fused pass per layer, prints the summary and writes the report. The backbone is random, so
the numbers show that the pipeline works, not how good any model is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from epcache.demo._shapes import ShapesConfig, make_shapes_dataset
from epcache.errors import StoreExistsError

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

REAL_WEIGHTS_HINT = """\
With real weights (a local checkpoint, or timm weights already in the Hugging Face cache):
  epcache extract --model mae_vitb --weights mae_pretrain_vit_base.pth --data /data/imagenet \\
      --split train=train --split val=val --layers -4: --out imagenet_mae_vitb.zarr
  epcache probe --store imagenet_mae_vitb.zarr --head linear,ep --queries 8,32 --layers all \\
      --blr 0.1 --epochs 90 --batch-size 4096 --out runs/mae_vitb
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
             echo: Callable[[str], None] = print, progress: bool = True) -> DemoResult:
    """Run the demo into ``out`` (refuses a non-empty ``out`` that is not a finished demo).

    Raises:
        StoreExistsError: ``out`` holds something else.
    """
    from epcache.extract import ExtractConfig, extract
    from epcache.probe import ProbeConfig, probe

    t0 = time.perf_counter()
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not (root / "demo.txt").exists():
        raise StoreExistsError(f"{root} exists and is not an epcache demo directory; pass another --out")
    root.mkdir(parents=True, exist_ok=True)
    (root / "demo.txt").write_text("epcache demo output; safe to delete\n")
    echo("epcache demo: the backbone is a RANDOM-INIT ViT, so the numbers below show the pipeline, "
         "not a model's quality.")
    data = root / "data"
    if not (data / "val").exists():
        make_shapes_dataset(data, config.shapes)
    n_train = config.shapes.num_classes * config.shapes.train_per_class
    echo(f"1/3 dataset: {config.shapes.num_classes} shape classes, {n_train} train / "
         f"{config.shapes.num_classes * config.shapes.val_per_class} val images of {config.shapes.size}px in {data}")
    store = root / "store.zarr"
    res = extract(
        ExtractConfig(
            model="vit_tiny_patch16_224", data=data, out=store, random_init=True, img_size=config.shapes.size,
            model_kwargs={"depth": config.depth, "patch_size": 8}, workers=0, layers="all", batch_size=32,
        ),
        progress=progress,
    )
    echo(f"2/3 extract: {res.format_text().splitlines()[0]}")
    rundir = root / "run"
    layers = tuple(range(config.depth))
    result = probe(
        ProbeConfig(
            store=str(store), head=("linear(tokens='cls')", "linear(tokens='gap')", "ep", "mhca"),
            queries=config.queries, layers=layers, optimizer=("adamw",), lr=config.lrs, epochs=config.epochs,
            warmup=max(1, config.epochs // 10), batch_size=config.batch_size, holdout=0.15, out=str(rundir),
        ),
        progress=progress,
    )
    echo(f"3/3 probe: {len(result.rows)} configs trained in one fused pass per layer -> {rundir}/results.jsonl")
    echo(result.summary)
    report_path: Path | None = None
    figures: tuple[Path, ...] = ()
    if config.figures:
        from epcache.report import write_report

        rep = write_report(rundir, root / "report")
        report_path, figures = rep.markdown, tuple(rep.figures)
        echo(f"report: {report_path} ({len(figures)} figures)")
    echo(REAL_WEIGHTS_HINT)
    return DemoResult(out=root, data=data, store=store, rundir=rundir, report=report_path, figures=figures,
                      summary=result.summary, seconds=time.perf_counter() - t0)
