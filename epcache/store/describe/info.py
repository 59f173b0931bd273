"""`epcache info`: a human (or JSON) summary of a store, never importing torch or timm."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from os import PathLike
from typing import Any

from epcache._fs.paths import resolve_recorded_path
from epcache._text import human_bytes
from epcache.store.describe.sizes import SizeOption, format_size_table, size_options
from epcache.store.layout.provenance import class_map_fingerprint
from epcache.store.open import open_store
from epcache.store.ops.lock import read_store_lock

__all__ = [
    "MissingBlock",
    "SplitInfo",
    "StoreInfo",
    "describe_store",
    "format_ranges",
    "format_store_info",
    "prefix_text",
]


@dataclass(frozen=True)
class MissingBlock:
    split: str
    layer: int
    block: int
    rows: tuple[int, int]  # stored rows [start, stop)


@dataclass(frozen=True)
class SplitInfo:
    name: str
    num_samples: int
    views: int
    num_classes: int
    chunk_samples: int
    block_samples: int
    num_blocks: int
    missing_blocks: int  # blocks missing in at least one layer
    complete: bool  # no block missing (the name and meaning `epcache ls --json` uses)
    class_map: str = ""  # class_map_fingerprint of the split's class list, as results rows record it (data.class_map)


@dataclass(frozen=True)
class StoreInfo:
    location: str
    format: str
    backbone: str
    weights_source: str  # "checkpoint", "timm-hf-cache" or "random-init" (as in `epcache ls --json`)
    weights_sha256: str  # sha256 of the weights (of the seeded random weights for random-init)
    dataset: str  # data root's basename and kind, e.g. "imagenet (imagefolder)", as in `epcache ls --json`
    data_root: str | None  # where the images were at extraction (verify --repair and attention look there)
    layers: list[int]
    num_blocks_model: int
    final_norm: bool
    dtype: str
    dim: int
    num_tokens: int
    layout: dict[str, Any]
    views: dict[str, Any]
    preprocessing: dict[str, Any]
    splits: list[SplitInfo]
    size_bytes: int
    complete: bool
    provenance: str  # the key as STORED in the document
    format_version: str = "1.1"  # of the stored document: "1.0" or "1.1"
    computed_provenance: str = ""  # recomputed from the stored document; differs only when it was edited
    provenance_mismatch: bool = False  # stored != recomputed (the name `epcache ls --json` uses)
    layer_shapes: dict[str, Any] = field(default_factory=dict)  # per-layer grid/dim/T where layers differ
    missing: list[MissingBlock] = field(default_factory=list)
    writer: dict[str, Any] | None = None  # the lock of an extraction writing the store now (store/ops/lock.py)
    pooled_dim: int | None = None  # width of the optional pooled output (cache_layout.md §3.4)
    derived_from: dict[str, Any] | None = None  # `epcache convert`: source provenance, ops and location (§2.4)
    quantization: str | None = None  # cache_layout.md §3.5: "int8-channel", "int8-token", "fp8-e4m3" or None
    sizes: list[dict[str, Any]] = field(default_factory=list)  # bytes of each storage option (store/describe/sizes.py)
    # `extract --taps` (cache_layout.md §2.7): name, module, dim, keep, size_bytes, complete of each nested store
    taps: list[dict[str, Any]] = field(default_factory=list)
    # per-pixel masks (cache_layout.md §3.6): classes, ignore_index, dtype, size and the splits that hold them
    masks: dict[str, Any] | None = None

    @property
    def weights(self) -> str:
        """Source and sha256 prefix, as the text output shows them."""
        if not self.weights_sha256:
            return self.weights_source
        return f"{self.weights_source} sha256:{self.weights_sha256[:12]}"

    @property
    def augmented_views(self) -> int:
        return int(self.views.get("augmented", 0) or 0)

    def to_json(self) -> dict[str, Any]:
        """The same facts under the same names as `epcache ls --json`, plus the details only `info` has."""
        return {**asdict(self), "augmented_views": self.augmented_views}


def describe_store(location: str | PathLike[str], *, max_missing: int = 50) -> StoreInfo:
    """Collect what `epcache info` prints; lists at most ``max_missing`` missing blocks."""
    with open_store(location, "r") as store:
        m = store.meta
        missing: list[MissingBlock] = []
        splits: list[SplitInfo] = []
        for name, s in store.splits.items():
            bad = store.missing_blocks(name)
            splits.append(
                SplitInfo(
                    name,
                    s.num_samples,
                    s.views,
                    len(s.classes),
                    s.chunk_samples,
                    s.block_samples,
                    s.num_blocks,
                    len(bad),
                    not bad,
                    class_map_fingerprint(s.classes),
                )
            )
            for layer in m.layers:
                for b in store.missing_blocks(name, layer):
                    if len(missing) < max_missing:
                        missing.append(MissingBlock(name, layer, b, store.block_range(name, b)))
        taps = [_tap_info(str(location), name) for name in m.taps or {}]
        bb = m.backbone
        kind = m.dataset.get("kind")
        return StoreInfo(
            location=str(location),
            format=store.format,
            backbone=bb.name,
            weights_source=bb.source,
            weights_sha256=bb.weights_sha256,
            dataset=f"{m.dataset.get('name', '?')}" + (f" ({kind})" if kind else ""),
            data_root=_recorded(m.extra.get("data_root"), str(location)),
            layers=list(m.layers),
            num_blocks_model=bb.num_blocks,
            final_norm=m.final_norm,
            dtype=m.dtype,
            dim=m.dim,
            num_tokens=m.num_tokens,
            layout={**asdict(m.layout), "grid": list(m.layout.grid)},
            views=m.views,
            preprocessing=m.preprocessing,
            splits=splits,
            size_bytes=store.size_bytes(),
            complete=store.is_complete() and all(t["complete"] for t in taps),
            provenance=store.provenance,
            format_version=store.format_version,
            computed_provenance=store.computed_provenance(),
            provenance_mismatch=store.provenance != store.computed_provenance(),
            layer_shapes=m.to_json().get("layer_shapes", {}),
            missing=missing,
            writer=_writer(location),
            pooled_dim=store.pooled_dim,
            derived_from=derived(m.derived_from, m.extra, str(location)),
            quantization=m.quantization,
            sizes=[asdict(o) for o in size_options(m, ((s.num_samples, s.views, s.chunk_samples)
                                                        for s in store.splits.values()))],
            taps=taps,
            masks=_masks(store),
        )


def _tap_info(location: str, name: str) -> dict[str, Any]:
    """One tap as `info` lists it; its bytes are part of the parent's, which holds it as a subdirectory."""
    with open_store(location, "r", tap=name) as tap:
        record = tap.meta.tap or {}
        return {"name": name, "module": record.get("module"), "dim": tap.meta.dim, "keep": record.get("keep"),
                "size_bytes": tap.size_bytes(), "complete": tap.is_complete()}


def _masks(store: Any) -> dict[str, Any] | None:
    info = store.dense_info()
    if info is None:
        return None
    return {**asdict(info), "size": list(info.size), "splits": [n for n in store.splits if store.has_masks(n)]}


def _masks_lines(masks: dict[str, Any] | None) -> list[str]:
    if masks is None:
        return []
    h, w = masks["size"]
    names = ", ".join(masks["classes"][:8]) + (", ..." if len(masks["classes"]) > 8 else "")
    return [f"masks       {h}x{w} {masks['dtype']} per view, {len(masks['classes'])} classes ({names}), ignore index "
            f"{masks['ignore_index']}; splits {', '.join(masks['splits']) or 'none'}"]


def format_store_info(info: StoreInfo) -> str:
    """Readable multi-line summary."""
    lay = info.layout
    feature_map = "NCHW" in str(info.preprocessing.get("token_source", ""))
    prefix = prefix_text(lay["num_prefix"], lay["cls_index"], lay["num_registers"], feature_map=feature_map)
    lines = [
        f"store       {info.location}  [{info.format}, format {info.format_version}, {human_bytes(info.size_bytes)}]",
        f"backbone    {info.backbone}  ({info.weights})",
        *_model_line(info.preprocessing),
        f"data        {info.dataset}" + (f" at {info.data_root}" if info.data_root else ""),
        f"layers      {format_ranges(info.layers)} of {info.num_blocks_model} blocks"
        f"{'  (final norm applied)' if info.final_norm else '  (raw block outputs)'}",
        f"tokens      T={info.num_tokens}: {prefix} + {lay['grid'][0]}x{lay['grid'][1]} patches"
        + (f" (patch grid pooled {lay['pool_patches']}x{lay['pool_patches']})" if lay.get("pool_patches", 1) > 1
           else "")
        + (f" (light store: grid averaged into one gap token, keeps {','.join(lay['keep'])})" if lay.get("keep")
           else "")
        + f", D={info.dim}, {info.dtype}"
        + (f" (stored as {info.quantization} codes + scales)" if info.quantization else ""),
        *(
            f"  layer {k:<5} T={v['num_tokens']}: {v['grid'][0]}x{v['grid'][1]} grid, D={v['dim']}"
            for k, v in info.layer_shapes.items()
        ),
        *([f"pooled      D={info.pooled_dim}: the model's own pooled output (forward_head(pre_logits=True))"]
          if info.pooled_dim is not None else []),
        *([f"derived     from {info.derived_from.get('location', '?')} (provenance "
           f"{str(info.derived_from.get('provenance'))[:12]}..., ops {info.derived_from.get('ops')})"]
          if info.derived_from is not None else []),
        *(f"tap         {t['name']:<11} D={t['dim']}" + (f" (keeps {','.join(t['keep'])})" if t["keep"] else "")
          + f"  {human_bytes(t['size_bytes'])}  {'complete' if t['complete'] else 'INCOMPLETE'}  [{t['module']}]"
          for t in info.taps),
        *_masks_lines(info.masks),
        f"views       {1 + int(info.views.get('augmented', 0))} on augmented splits "
        f"(view 0 = eval view, seed {info.views.get('seed', 0)})",
        "splits",
    ]
    for s in info.splits:
        state = "complete" if s.missing_blocks == 0 else f"{s.missing_blocks}/{s.num_blocks} blocks missing"
        lines.append(
            f"  {s.name:<10} N={s.num_samples:<8} V={s.views} classes={s.num_classes:<5} "
            f"chunk={s.chunk_samples} block={s.block_samples}  {state}"
            + (f"  class map {s.class_map[:16]}" if s.class_map else "")
        )
    lines.append(f"status      {'complete' if info.complete else 'INCOMPLETE'}")
    for mb in info.missing:
        lines.append(f"  missing   split={mb.split} layer={mb.layer} block={mb.block} rows={mb.rows[0]}-{mb.rows[1]}")
    lines.append(f"provenance  {info.provenance}")
    if info.computed_provenance and info.computed_provenance != info.provenance:
        lines.append(
            f"WARNING     the stored provenance key is not the hash of the stored metadata "
            f"({info.computed_provenance}): the document was edited after extraction; "
            f"run `epcache verify {info.location}`"
        )
    if info.sizes:
        current = info.quantization or info.dtype
        lines.append(format_size_table([SizeOption(**o) for o in info.sizes], current=current))
    if info.writer is not None:
        w = info.writer
        lines.append(f"writer      {w['purpose']}: pid {w['pid']} on host {w['host']} since {w['started']} (locked)")
    return "\n".join(lines)


def prefix_text(num_prefix: int, cls_index: int | None, num_registers: int, *, feature_map: bool) -> str:
    """``1 prefix (CLS at 0, 4 registers)``, or what a layout without prefix tokens is (never "CLS at None")."""
    if num_prefix == 0:
        return "no prefix tokens (convnet feature map)" if feature_map else "no prefix tokens (no CLS, no registers)"
    cls = f"CLS at {cls_index}" if cls_index is not None else "no CLS"
    return f"{num_prefix} prefix ({cls}, {num_registers} registers)"


def _model_line(pre: dict[str, Any]) -> list[str]:
    """``model       depth=4, patch_size=8; input 64 px``: what makes the backbone other than its name."""
    kwargs = [f"{k}={v}" for k, v in sorted(dict(pre.get("model_kwargs") or {}).items())]
    size = (pre.get("data_config") or {}).get("input_size") or [pre.get("img_size")]
    parts = ([", ".join(kwargs)] if kwargs else []) + ([f"input {size[-1]} px"] if size and size[-1] else [])
    return [f"model       {'; '.join(parts)}"] if parts else []


def _writer(location: str | PathLike[str]) -> dict[str, Any] | None:
    lock = read_store_lock(location)
    return None if lock is None else dict(lock.to_json())


def format_ranges(xs: list[int] | tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> "0-2,5": layer lists in the CLI's summaries."""
    if not xs:
        return "-"
    out, start, prev = [], xs[0], xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


def derived(derived_from: dict[str, Any] | None, extra: dict[str, Any], store: str) -> dict[str, Any] | None:
    """``derived_from`` of the document with the source's location (kept in ``extra``, outside the key)."""
    if derived_from is None:
        return None
    where = extra.get("derived_from")
    where = where if isinstance(where, dict) else {}
    location = _recorded(where.get("location"), store) or where.get("name")  # name only: no path was kept
    return {**derived_from, "location": location}


def _recorded(text: Any, store: str) -> str | None:
    """A location the store recorded, relative to itself by default (cache_layout §2.1), as usable here."""
    if not isinstance(text, str) or not text:
        return None
    return resolve_recorded_path(text, store) or text
