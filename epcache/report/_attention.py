"""`epcache attention`: what each query of a trained attentive head looks at (docs/EP_SPEC.md §6).

For a head saved by `epcache probe`, on one split of its store: per-predictor attention maps over the
patch grid (on the source images when the data root is given), the mean attention entropy per
predictor, and for EP the uniform-attention ablation: query j's attention becomes 1/N (its channel
slice GAP(X)·W_V[slice j]), all else kept (BN running stats too), and the eval top-1 change is reported.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from epcache._progress import SlowSteps
from epcache._text import short_label
from epcache.errors import ConfigError
from epcache.probe.results.ranking import best_row, rank_rows
from epcache.probe.results.rows import load_head
from epcache.report._model import model_title
from epcache.report._plots import require_matplotlib
from epcache.report._tables import load_rows
from epcache.store import open_store, select_tokens
from epcache.store.layout.tokens import to_torch

__all__ = ["AttentionResult", "attention_figure", "attention_maps", "attention_report", "find_row"]

MAX_COLUMNS = 16  # predictors shown per image row; the table and JSON always cover all of them


@dataclass(frozen=True)
class AttentionResult:
    png: Path | None
    table: Path
    json: Path
    config: str
    split: str
    num_images: int  # images in the split used for entropy and ablation
    top1: float  # the head's top-1 on the split (no ablation)
    entropy: list[float]  # mean attention entropy per predictor, nats (max log N)
    max_entropy: float
    delta_top1: list[float] | None  # top-1(ablated query j) - top-1, EP heads only


def find_row(rows: list[dict[str, Any]], config: str, *, rundir: str = "RUNDIR") -> dict[str, Any]:
    """The row whose id starts with ``config`` or whose name equals it; ``best``: the best attentive config.

    ``best``: the first config with attention maps and a saved head in the one ranking (``ranking.rank``),
    so the summary's and the report's best whenever that one attends.

    Raises:
        ConfigError: no match or an ambiguous id prefix (the message lists candidates).
    """
    if config == "best":
        groups = [g for g in rank_rows(rows) if _attends(g.rows[0]) and best_row(g).get("head_file")]
        if not groups:
            raise ConfigError(_no_attentive_config(rows, rundir))
        return best_row(groups[0])
    hits = [r for r in rows if r["id"].startswith(config) or r["name"] == config]
    if len(hits) == 1:
        return hits[0]
    shown = "\n  ".join(f"{r['id'][:10]}  {short_label(r['config'])}" for r in rows[:20])
    what = "matches several configs" if hits else "matches no config"
    raise ConfigError(f"--config {config!r} {what}; pass an id (prefix) from results.jsonl:\n  {shown}")


_NO_MAPS = ("linear", "dinovit", "mp")  # trained heads without attention maps (solver heads have none either)


def _attends(row: dict[str, Any]) -> bool:  # a trained head with attention maps
    return row["config"].get("kind") not in _NO_MAPS and not row["config"].get("solver")


def _no_attentive_config(rows: list[dict[str, Any]], rundir: str) -> str:
    """Why ``--config best`` found nothing, and what to run: no ``--config ID`` can help when no head attends."""
    kinds = sorted({str(r["config"].get("kind")) for r in rows})
    attentive = sorted({str(r["config"]["kind"]) for r in rows if _attends(r)})
    if attentive:
        return (f"--config best: the attentive configs of this run ({', '.join(attentive)}) have no saved head "
                f"file, so there is nothing to draw; re-run their sweep with --out {rundir}, which saves every head")
    store = (rows[0].get("store") or {}).get("path", "STORE") if rows else "STORE"
    return (f"--config best: this run has no attentive config (its heads: {', '.join(kinds) or 'none'}; "
            f"{', '.join(_NO_MAPS)} and solver heads have no attention maps), so no --config ID would work; "
            f"train one into the same run: `epcache probe --store {store} --head ep --out {rundir}`, "
            f"then `epcache attention {rundir}`")


def attention_maps(head: Any, tokens: Any, *, num_prefix: int, token_selector: str) -> Any:
    """Attention over patch tokens ``(B, P, h*w)`` of a head fed ``tokens`` (as in training).

    With ``all`` tokens (EP's ``ep_all``) the prefix columns are dropped and each row is
    renormalised, as docs/EP_SPEC.md §6.1 prescribes for plotting; with patch tokens this is exactly the
    head's own attention output.
    """
    attn = head.attention(tokens)
    if token_selector == "all" and num_prefix:
        attn = attn[..., num_prefix:]
        attn = attn / attn.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return attn


def attention_report(
    rundir: str | PathLike[str],
    config: str,
    *,
    split: str | None = None,
    images: int = 16,
    data_root: str | PathLike[str] | None = None,
    out: str | PathLike[str] | None = None,
    batch_size: int = 256,
    say: Callable[[str], None] | None = None,  # progress of steps slower than a few seconds; None: silent
) -> AttentionResult:
    """Maps, entropies and the uniform-attention ablation for one trained head of a run.

    Raises:
        ConfigError: unknown config, a head without attention maps, no saved head, missing images.
    """
    import torch

    run = Path(rundir)
    row = find_row(load_rows(run), config, rundir=str(run))
    if not row.get("head_file"):
        raise ConfigError(f"config {row['id']} has no saved head; re-run the sweep with heads saved")
    head, _ = load_head(run / row["head_file"])
    head = head.float().eval()
    kind, layer, sel = row["config"]["kind"], int(row["config"]["layer"]), row["config"]["tokens"]
    if kind in ("linear", "dinovit", "mp"):
        raise ConfigError(f"a {kind!r} head has no attention maps; pick an ep/mhca/... config")
    if row["config"].get("layer_mix", "none") != "none" or sel not in ("patch", "all"):  # layer mixes and vector inputs
        raise ConfigError(f"attention maps are drawn over the patch grid of one layer; config {row['id']} reads "
                          f"tokens={sel} layer_mix={row['config'].get('layer_mix', 'none')}; pick a single-layer "
                          "config reading patch or all tokens")
    split = split or row["config"].get("eval_split", "val")
    store_path = row["eval_store"]["path"] if row.get("eval_store") else row["store"]["path"]
    with open_store(store_path) as store:
        if split not in store.splits:
            store_path = row["store"]["path"]
    if data_root is None and images > 0:
        data_root = _default_data_root(store_path, rundir, row["id"])
    dest = Path(out) if out is not None else run / "attention" / row["id"]
    dest.mkdir(parents=True, exist_ok=True)

    with open_store(store_path) as store, torch.inference_mode():
        layout = store.meta.layout
        labels = torch.from_numpy(store.read_labels(split))
        ids = store.read_ids(split)
        order = store.read_order(split)
        keep = labels >= 0  # label -1: an image skipped at extraction
        n_pred = None
        ent_sum = None
        correct = 0
        ablated: torch.Tensor | None = None
        shown_rows = _pick_rows(order, labels.numpy(), images)
        shown_maps: dict[int, np.ndarray] = {}
        predicted: dict[int, int] = {}
        steps = SlowSteps(say, every_s=None)
        for start, chunk in steps.over(store.iter_chunks(split, layer), total=len(labels), what="attention: scored"):
            x = to_torch(select_tokens(chunk[:, 0], layout, sel)).float()  # view 0 = eval view
            y = labels[start : start + len(x)]
            k = keep[start : start + len(x)]
            for b0 in range(0, len(x), batch_size):
                xb, yb, kb = x[b0 : b0 + batch_size], y[b0 : b0 + batch_size], k[b0 : b0 + batch_size]
                attn = head.attention(xb)  # (B, P, N') as in training, for entropy
                ent = -(attn.clamp_min(1e-30).log() * attn).sum(-1)  # (B, P)
                ent_sum = ent[kb].sum(0) if ent_sum is None else ent_sum + ent[kb].sum(0)
                n_pred = attn.shape[1]
                logits = head(xb)
                correct += int((logits.argmax(-1) == yb)[kb].sum())
                if kind == "ep":
                    m = head.pooling.queries
                    hits = torch.stack(
                        [(head(xb, uniform_queries=[j]).argmax(-1) == yb)[kb].sum() for j in range(m)]
                    )
                    ablated = hits if ablated is None else ablated + hits
                rows_here = np.arange(start + b0, start + b0 + len(xb))
                want = np.isin(rows_here, shown_rows)
                if want.any():
                    maps = attention_maps(head, xb[torch.from_numpy(want)], num_prefix=layout.num_prefix,
                                          token_selector=sel)
                    preds = logits.argmax(-1)[torch.from_numpy(want)]
                    for r, mp, pr in zip(rows_here[want], maps, preds.tolist(), strict=True):
                        shown_maps[int(r)] = mp.numpy()
                        predicted[int(r)] = int(pr)
        n = int(keep.sum())
        if n == 0:
            raise ConfigError(f"split {split!r} has no labelled images")
        top1 = correct / n
        entropy = (ent_sum / n).tolist() if ent_sum is not None else []
        delta = None if ablated is None else [float(a) / n - top1 for a in ablated.tolist()]
        n_tokens = layout.num_tokens if sel == "all" else layout.num_patches
        result = AttentionResult(
            png=None, table=dest / "attention.md", json=dest / "attention.json", config=row["id"], split=split,
            num_images=n, top1=top1, entropy=entropy, max_entropy=math.log(n_tokens), delta_top1=delta,
        )
        png = None
        if shown_maps:
            grid = layout.grid
            ordered = [r for r in shown_rows.tolist() if r in shown_maps]
            fetch = None
            if data_root is not None:
                from epcache.extract.locations import image_fetcher  # lazy: keeps extract out of `epcache report`

                fetch = image_fetcher(store.meta, split, data_root)  # WebDataset / HF: read by id
            with steps.timed(f"attention: read {len(ordered)} source images"):
                pictures = _load_images(data_root, [ids[r] for r in ordered], store.meta.preprocessing, fetch)
            classes = store.split(split).classes
            captions = [
                f"true {classes[int(labels[r])]}\npred {classes[predicted[r]]}" + ("" if pictures[0] is not None
                                                                                 else f"\n{Path(ids[r]).name}")
                for r in ordered
            ]
            title = f"{short_label(row['config'])}  (id {row['id'][:10]}, split {split})\n{model_title(row)}"
            png = _plot_grid(
                [shown_maps[r].reshape(-1, *grid) for r in ordered], pictures, captions,
                dest / "attention.png", title=title, n_pred=n_pred or 0, kind=kind,
            )
    result = AttentionResult(**{**asdict(result), "png": png})
    _write_tables(result, row)
    return result


def _default_data_root(store_path: str, rundir: str | PathLike[str], config_id: str) -> Path | str | None:
    """The data root the store recorded, a relative one resolved against the store's location.

    None when the recorded root is not here (the images moved): the maps are drawn on their own.

    Raises:
        ConfigError: the store records no root at all (extracted without ``--record-paths`` from a
            data root outside its tree), so only ``--data`` can say where the images are.
    """
    from epcache.extract.locations import (  # lazy: keeps extract out of `epcache report`
        recorded_data_root,
        records_data_root,
    )

    with open_store(store_path) as store:
        extra, location = store.meta.extra, str(store.location)
    if not records_data_root(extra):
        raise ConfigError(
            f"the store {location} does not record where its images are (no host path is kept without "
            f"--record-paths); pass their root: `epcache attention {rundir} --config {config_id[:10]} --data ROOT`"
        )
    return recorded_data_root(extra, location)


def _pick_rows(order: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Stored rows of ``count`` images taken round-robin over classes, each class in dataset order."""
    by_class: dict[int, list[int]] = {}
    for row in np.argsort(order).tolist():  # stored rows in dataset order
        if labels[row] >= 0:
            by_class.setdefault(int(labels[row]), []).append(row)
    picked: list[int] = []
    queues = [by_class[c] for c in sorted(by_class)]
    depth = 0
    while len(picked) < count and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: count - len(picked)]
        depth += 1
    return np.asarray(picked, dtype=np.int64)


def _load_images(root: str | PathLike[str] | None, ids: list[str], pre: dict[str, Any],
                 fetch: Callable[[str], bytes] | None = None) -> list[np.ndarray | None]:
    """Source images resized and centre-cropped like the eval transform (no normalisation).

    ``fetch`` reads a WebDataset / HF sample's bytes by id; without it ids are paths under ``root``.
    """
    if root is None:
        return [None] * len(ids)
    from PIL import Image

    size = _input_size(pre)
    crop_pct = float(pre.get("crop_pct", pre.get("eval", {}).get("crop_pct", 1.0)) or 1.0)
    out: list[np.ndarray | None] = []
    for i in ids:
        if fetch is not None:
            p: Path | io.BytesIO = io.BytesIO(fetch(i))
        else:
            base = Path(root).resolve()
            p = (base / i).resolve()
            if base not in p.parents:
                raise ConfigError(f"sample id {i!r} points outside the data root {base}")
            if not p.is_file():
                raise ConfigError(f"image {p} (id {i!r}) not found; pass the --data root used for extraction")
        with Image.open(p) as im:
            im = im.convert("RGB")
            scale = size / crop_pct / min(im.size)
            im = im.resize((max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))),
                           Image.Resampling.BICUBIC)
            left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
            out.append(np.asarray(im.crop((left, top, left + size, top + size))))
    return out


def _input_size(pre: dict[str, Any]) -> int:
    for src in (pre, pre.get("eval", {}), pre.get("data_config", {})):
        if isinstance(src, dict) and "input_size" in src:
            return int(src["input_size"][-1])
    return 224


def _plot_grid(maps: list[np.ndarray], pictures: list[np.ndarray | None], captions: list[str], path: Path, *,
               title: str, n_pred: int, kind: str) -> Path:
    """Write :func:`attention_figure` to ``path``."""
    plt = require_matplotlib()
    fig = attention_figure(maps, pictures, captions, title=title, n_pred=n_pred, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def attention_figure(maps: list[np.ndarray], pictures: list[np.ndarray | None], captions: list[str], *,
                     title: str, n_pred: int, kind: str) -> Any:
    """One row per image: the image, the mean map, one map per predictor, on one shared colour scale.

    Every panel uses the same ``vmin``/``vmax`` (attention mass per patch, upsampled), so a bright
    patch means the same in every column and row; the colour bar on the right gives the scale.
    EP's predictors are queries (``q0``..), MHCA-style poolers' are heads (``h0``..).
    """
    import torch
    import torch.nn.functional as F

    plt = require_matplotlib()
    cols = min(n_pred, MAX_COLUMNS)
    prefix = "q" if kind == "ep" else "h"
    ncols = cols + 2  # image, combined, one per predictor
    ups = []
    for mp, pic in zip(maps, pictures, strict=True):
        size = pic.shape[0] if pic is not None else 8 * mp.shape[-1]
        ups.append(F.interpolate(torch.from_numpy(mp)[None].float(), size=(size, size), mode="bilinear",
                                 align_corners=False)[0].numpy())
    vmax = max(float(u.max()) for u in ups)
    cell = 1.0
    fig_w, fig_h = cell * ncols + 1.9, cell * len(maps) + 1.1
    fig, axes = plt.subplots(len(maps), ncols, figsize=(fig_w, fig_h), dpi=100, squeeze=False)
    fig.subplots_adjust(left=1.1 / fig_w, right=1 - 0.8 / fig_w, top=1 - 0.85 / fig_h, bottom=0.05 / fig_h,
                        wspace=0.05, hspace=0.08)
    image = None
    for r, (up, pic) in enumerate(zip(ups, pictures, strict=True)):
        panels = [("image", None), ("mean", up.mean(0))] + [(f"{prefix}{j}", up[j]) for j in range(cols)]
        for c, (name, m) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if pic is not None:
                ax.imshow(pic)
            if m is not None:
                image = ax.imshow(m, cmap="inferno", alpha=0.65 if pic is not None else 1.0, vmin=0.0, vmax=vmax)
            elif pic is None:
                ax.set_facecolor("0.92")
                ax.text(0.5, 0.5, "no image\n(--data)", ha="center", va="center", fontsize=6, color="0.4",
                        transform=ax.transAxes)
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(captions[r], fontsize=6.5, rotation=0, ha="right", va="center", labelpad=4)
    if image is not None:
        top, bottom = axes[0, -1].get_position().y1, axes[-1, -1].get_position().y0
        cax = fig.add_axes((1 - 0.62 / fig_w, bottom, 0.12 / fig_w, top - bottom))
        bar = fig.colorbar(image, cax=cax)
        bar.set_label("attention per patch", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    what = "queries" if prefix == "q" else "heads"
    more = "" if n_pred <= MAX_COLUMNS else f"  (first {MAX_COLUMNS} of {n_pred} {what})"
    fig.suptitle(title + more, fontsize=8.5, y=1 - 0.08 / fig_h, va="top")
    return fig


def _write_tables(res: AttentionResult, row: dict[str, Any]) -> None:
    lines = [
        f"# Attention of `{short_label(row['config'])}` (id `{row['id']}`)",
        "",
        f"full config: `{row['name']}`",
        "",
        f"split `{res.split}`, {res.num_images} images; top-1 {100 * res.top1:.2f}%; "
        f"entropy in nats (uniform attention = {res.max_entropy:.2f})",
        "",
        "| predictor | mean entropy | Δ top-1 with uniform attention (pp) |",
        "|---:|---:|---:|",
    ]
    prefix = "q" if row["config"]["kind"] == "ep" else "h"
    for j, h in enumerate(res.entropy):
        d = "-" if res.delta_top1 is None else f"{100 * res.delta_top1[j]:+.2f}"
        lines.append(f"| {prefix}{j} | {h:.3f} | {d} |")
    if res.delta_top1 is None:
        lines += ["", "Δ top-1 is `-`: the uniform-attention ablation is defined for EP heads only "
                  "(docs/EP_SPEC.md §6), whose queries own disjoint channel slices; the heads of this pooler share "
                  "their output channels."]
    if res.png is not None:
        lines += ["", f"![attention maps]({res.png.name})"]
    res.table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    doc = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(res).items()}
    res.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
