"""The table of the bad-input campaign: each case is a command, the exact outcome, and what must not change.

A case names its command line (built per test from a fresh tiny dataset in ``tmp_path``), the
exit code, a substring of the one-line message, and what it protects: by default nothing may
be created at ``--out`` (and the data root stays as it was); ``keep`` names a path (a user's file,
directory or complete store) that must be byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from reliability_helpers import TINY, make_imagefolder, write_image

__all__ = ["CASES", "Case", "Ctx"]


@dataclass
class Ctx:
    """One case's world: a fresh dataset, an output location, a complete store to protect."""

    tmp: Path
    store: Path  # a complete zarr store (train 8, val 4; layers 0, 11), copied per case when written to
    data: Path = field(init=False)
    out: Path = field(init=False)
    keep: Path | None = None  # set by a case's setup: must be byte-identical afterwards

    def __post_init__(self) -> None:
        self.data = make_imagefolder(self.tmp / "data", splits={"train": 4, "val": 2}, classes=("cat", "dog"))
        self.out = self.tmp / "o" / "s.zarr"


Argv = Callable[[Ctx], list[str]]
Setup = Callable[[Ctx], None]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Argv
    code: int
    message: str
    setup: Setup | None = None
    incomplete: bool = False  # the failure comes mid-run: the store stays, reported incomplete, resumable
    lines: int = 1  # lines of the error (a sweep lists all its problems, one per line)


def ext(*extra: str, split: tuple[str, ...] = ("train=train",), out: str | None = None, random: bool = True) -> Argv:
    """``epcache extract`` of the tiny ViT with ``extra`` options; ``out`` relative to the case's tmp."""

    def argv(c: Ctx) -> list[str]:
        tiny = TINY if random else [a for a in TINY if a != "--random-init"]
        splits = [x for s in split for x in ("--split", s)]
        where = str(c.tmp / out) if out is not None else str(c.out)
        return ["extract", *tiny, "--data", str(c.data), *splits, "--out", where, *[_sub(c, e) for e in extra]]

    return argv


def cmd(*args: str) -> Argv:
    """Any command; ``{tmp}``, ``{data}``, ``{store}`` are filled in."""
    return lambda c: [_sub(c, a) for a in args]


def _sub(c: Ctx, text: str) -> str:
    return text.replace("{tmp}", str(c.tmp)).replace("{data}", str(c.data)).replace("{store}", str(c.store))


# ---------------------------------------------------------------------------------------- setups


def _file(rel: str, content: bytes = b"my notes") -> Setup:
    def make(c: Ctx) -> None:
        p = c.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        c.keep = p

    return make


def _user_dir(rel: str) -> Setup:
    def make(c: Ctx) -> None:
        d = c.tmp / rel
        d.mkdir(parents=True)
        (d / "thesis.tex").write_text("precious")
        c.keep = d

    return make


def _copy_store(rel: str) -> Setup:
    def make(c: Ctx) -> None:
        import shutil

        dst = c.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(c.store, dst)
        c.keep = dst

    return make


def _csv(text: bytes) -> Setup:
    def make(c: Ctx) -> None:
        (c.data / "train.csv").write_bytes(text)

    return make


def _csv_rows(*rows: str) -> Setup:
    return _csv(("\n".join(["train/cat/img_0000.jpg,0", *rows]) + "\n").encode())


def _link(rel: str, target: str) -> Setup:
    def make(c: Ctx) -> None:
        p = c.data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)

    return make


def _lock(**fields: object) -> Setup:
    def make(c: Ctx) -> None:
        doc = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
               "purpose": "epcache extract", **fields}
        c.out.mkdir(parents=True)
        (c.out / ".epcache.lock").write_text(json.dumps(doc))
        c.keep = c.out

    return make


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale_lock(c: Ctx) -> None:
    _lock(pid=_dead_pid())(c)


def _nan_checkpoint(c: Ctx) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["blocks.3.attn.qkv.weight"][0, 0] = float("nan")
    save_file(sd, str(c.tmp / "nan.safetensors"))
    torch.manual_seed(0)


def _float_tiff(c: Ctx) -> None:
    from PIL import Image

    Image.fromarray(np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40), mode="F").save(
        c.data / "train" / "cat" / "float.tif"
    )


def _plain_dir(rel: str) -> Setup:
    def make(c: Ctx) -> None:
        (c.tmp / rel).mkdir(parents=True)
        c.keep = c.tmp / rel

    return make


def _images_only_txt(c: Ctx) -> None:
    d = c.data / "empty" / "cls"
    d.mkdir(parents=True)
    (d / "readme.txt").write_text("no images here")


def _mixed(c: Ctx) -> None:
    (c.data / "val.csv").write_text("val/cat/img_0000.jpg,0\n")


def _outside_link(c: Ctx) -> None:
    write_image(c.tmp / "outside.png", np.random.default_rng(3))
    (c.data / "link.png").symlink_to(c.tmp / "outside.png")
    _csv_rows("link.png,1")(c)


def _split_file(c: Ctx) -> None:
    (c.data / "val").rename(c.data / "val_dir")
    (c.data / "val").write_text("x")


def _empty_split(c: Ctx) -> None:
    (c.data / "empty").mkdir()


# ---------------------------------------------------------------------------------------- the table

E = "extract"
CASES: list[Case] = [
    # options, refused before anything is planned or created
    Case("dtype-int8", ext("--dtype", "int8"), 2, "dtype 'int8' is not one of"),
    Case("dtype-float64", ext("--dtype", "float64"), 2, "dtype 'float64' is not one of"),
    Case("amp-fp8", ext("--amp", "fp8"), 2, "amp 'fp8' is not one of"),
    Case("on-bad-image", ext("--on-bad-image", "ignore"), 2, "must be 'error' or 'skip'"),
    Case("format-tiff", ext("--format", "tiff"), 2, "format 'tiff' must be zarr or h5"),
    Case("views-negative", ext("--views", "-1"), 2, "views must be >= 0"),
    Case("views-100000", ext("--views", "100000"), 2, "over the limit of 256"),
    Case("views-257", ext("--views", "257"), 2, "over the limit of 256"),
    Case("batch-size-0", ext("--batch-size", "0"), 2, "batch_size and max_pending_blocks must be >= 1"),
    Case("batch-size-negative", ext("--batch-size", "-5"), 2, "batch_size and max_pending_blocks must be >= 1"),
    Case("workers-negative", ext("--workers", "-1"), 2, "workers >= 0"),
    Case("img-size-0", ext("--img-size", "0"), 2, "img_size must be positive"),
    Case("img-size-negative", ext("--img-size", "-32"), 2, "img_size must be positive"),
    Case("weights-and-random", ext("--weights", "{tmp}/w.pth"), 2, "exclude each other"),
    Case("resume-and-overwrite", ext("--resume", "--overwrite"), 2, "--resume and --overwrite exclude each other"),
    Case("device-tpu", ext("--device", "tpu"), 2, "must be cpu, cuda or cuda:N"),
    Case("view-splits-unknown", ext("--views", "2", "--view-splits", "test"), 2, "are not among the splits"),
    Case("chunk-samples-0", ext("--chunk-samples", "0"), 2, "--chunk-samples must be >= 1"),
    Case("chunk-samples-negative", ext("--chunk-samples", "-4"), 2, "--chunk-samples must be >= 1"),
    Case("shard-samples-0", ext("--shard-samples", "0"), 2, "--shard-samples must be >= 1"),
    Case("compressor-unknown", ext("--compressor", "lz77"), 2, "unknown zarr compressor 'lz77'"),
    Case("compressor-level", ext("--compressor", "zstd:x"), 2, "is not an integer"),
    Case("compressor-gzip-zarr", ext("--compressor", "gzip"), 2, "unknown zarr compressor 'gzip'"),
    Case("compressor-zstd-h5", ext("--compressor", "zstd", out="o/s.h5"), 2, "unknown HDF5 compressor 'zstd'"),
    Case("split-no-equals", ext(split=("train",)), 2, "--split takes NAME=SUBDIR"),
    Case("split-no-name", ext(split=("=train",)), 2, "--split takes NAME=SUBDIR"),
    Case("split-no-source", ext(split=("train=",)), 2, "--split takes NAME=SUBDIR"),
    Case("split-twice", ext(split=("train=train", "train=val")), 2, "is given twice"),
    Case("split-twice-same", ext(split=("val=val", "val=val")), 2, "is given twice"),
    Case("model-unknown", ext("--model", "vit_nope_patch16"), 2, "unknown model"),
    Case("layers-out-of-range", ext("--layers", "0,40"), 2, "out of range"),
    Case("layers-99", ext("--layers", "99"), 2, "out of range"),
    Case("layers-garbage", ext("--layers", "abc"), 2, "cannot parse --layers 'abc'"),
    Case("layers-slice", ext("--layers", "-40:"), 2, "slice bound -40 is out of range"),
    Case("layers-empty", ext("--layers", ""), 2, "empty --layers"),
    Case("no-weights", ext(random=False), 2, "Pass --weights PATH"),
    Case("weights-missing", ext("--weights", "{tmp}/missing.pth", random=False), 2, "does not exist or is not a file"),
    Case("weights-dir", ext("--weights", "{tmp}", random=False), 2, "does not exist or is not a file"),
    Case("weights-garbage-pth", ext("--weights", "{tmp}/g.pth", random=False), 2, "cannot read weights",
         _file("g.pth", b"garbage" * 10)),
    Case("weights-garbage-safetensors", ext("--weights", "{tmp}/g.safetensors", random=False), 2,
         "cannot read weights", _file("g.safetensors", b"garbage" * 10)),
    Case("weights-nan", ext("--weights", "{tmp}/nan.safetensors", random=False), 2,
         "NaN or inf weights in 1 tensor(s) (blocks.3.attn.qkv.weight)", _nan_checkpoint),
    Case("resnet18-at-32px", cmd(E, "--model", "resnet18", "--random-init", "--img-size", "32", "--data", "{data}",
                                 "--out", "{tmp}/o/s.zarr", "--dry-run"), 0, "resnet18"),  # BatchNorm: eval mode
    # data roots and splits
    Case("data-missing", cmd(E, *TINY, "--data", "{tmp}/nope", "--out", "{tmp}/o/s.zarr"), 2,
         "does not exist or is not a directory"),
    Case("data-is-file", cmd(E, *TINY, "--data", "{tmp}/f", "--out", "{tmp}/o/s.zarr"), 2,
         "does not exist or is not a directory", _file("f")),
    Case("split-missing", ext(split=("train=nope",)), 2, "does not exist"),
    Case("split-climbs-out", ext(split=("train=../x",)), 2, "must be a subdirectory of the data root"),
    Case("split-absolute", ext(split=("train=/etc",)), 2, "must be a subdirectory of the data root"),
    Case("split-is-file", ext(split=("val=val",)), 2, "does not exist", _split_file),
    Case("split-empty-dir", ext(split=("train=empty",)), 2, "no images under", _empty_split),
    Case("split-no-images", ext(split=("train=empty",)), 2, "no images under", _images_only_txt),
    Case("splits-mixed", ext(split=("train=train", "val=val.csv")), 2, "splits mix ImageFolder directories",
         _mixed),
    Case("loop-fake-class", ext(), 2, "is a symlink loop", _link("train/all", ".")),
    Case("loop-to-parent", ext(), 2, "is a symlink loop", _link("train/cat/up", "..")),
    Case("loop-two-up", ext(), 2, "is a symlink loop", _link("train/cat/sub/back", "../..")),
    Case("loop-to-root", ext(), 2, "is a symlink loop", lambda c: _link("train/cat/root", str(c.data))(c)),
    Case("loop-self-ignored", ext(), 0, "4 samples in", _link("train/dog/me", "me")),  # not a directory: no image
    # CSV splits
    Case("csv-latin1", ext(split=("train=train.csv",)), 2, "is not UTF-8",
         _csv("train/cat/img_0000.jpg,0\ntrain/caf\xe9.jpg,1\n".encode("latin-1"))),
    Case("csv-utf16", ext(split=("train=train.csv",)), 2, "is not UTF-8",
         _csv("train/cat/img_0000.jpg,0\n".encode("utf-16"))),
    Case("csv-label-10M", ext(split=("train=train.csv",)), 2, "label 10000000 is too large",
         _csv_rows("train/dog/img_0001.png,10000000")),
    Case("csv-label-1M", ext(split=("train=train.csv",)), 2, "label 1000000 is too large",
         _csv_rows("train/dog/img_0001.png,1000000")),
    Case("csv-label-negative", ext(split=("train=train.csv",)), 2, "is negative",
         _csv_rows("train/dog/img_0001.png,-1")),
    Case("csv-label-float", ext(split=("train=train.csv",)), 2, "integer label",
         _csv_rows("train/dog/img_0001.png,1.5")),
    Case("csv-label-text", ext(split=("train=train.csv",)), 2, "integer label",
         _csv_rows("train/dog/img_0001.png,dog")),
    Case("csv-label-blank", ext(split=("train=train.csv",)), 2, "integer label",
         _csv_rows("train/dog/img_0001.png,")),
    Case("csv-absolute", ext(split=("train=train.csv",)), 2, "is absolute", _csv_rows("/etc/passwd,0")),
    Case("csv-climbs-out", ext(split=("train=train.csv",)), 2, "climbs out with '..'", _csv_rows("../x.png,0")),
    Case("csv-missing-image", ext(split=("train=train.csv",)), 2, "does not exist",
         _csv_rows("train/cat/nope.png,0")),
    Case("csv-directory-row", ext(split=("train=train.csv",)), 2, "does not exist", _csv_rows("train/cat,0")),
    Case("csv-duplicate", ext(split=("train=train.csv",)), 2, "is listed twice",
         _csv_rows("train/cat/img_0000.jpg,1")),
    Case("csv-extra-column", ext(split=("train=train.csv",)), 2, "expected `path,label`",
         _csv_rows("train/dog/img_0001.png,1,extra")),
    Case("csv-one-column", ext(split=("train=train.csv",)), 2, "expected `path,label`",
         _csv_rows("train/dog/img_0001.png")),
    Case("csv-header-only", ext(split=("train=train.csv",)), 2, "has no rows", _csv(b"path,label\n")),
    Case("csv-empty", ext(split=("train=train.csv",)), 2, "has no rows", _csv(b"")),
    Case("csv-nul", ext(split=("train=train.csv",)), 2, "holds a NUL byte", _csv_rows("\x00bad.png,1")),
    Case("csv-missing", ext(split=("train=nope.csv",)), 2, "does not exist"),
    Case("csv-outside-link", ext(split=("train=train.csv",)), 2, "symlink that leads outside", _outside_link),
    # images
    Case("image-float-tiff", ext(), 2, "no defined pixel range", _float_tiff, incomplete=True),
    # --out
    Case("out-under-file-zarr", ext(out="f/s.zarr"), 2, "is a regular file", _file("f")),
    Case("out-under-file-h5", ext(out="f/s.h5"), 2, "is a regular file, so nothing can be created under it",
         _file("f")),
    Case("out-deep-under-file", ext(out="f/a/b/s.zarr"), 2, "is a regular file", _file("f")),
    Case("out-is-file", ext(out="f.zarr"), 2, "exists and is a file, not a zarr store", _file("f.zarr")),
    Case("out-is-file-overwrite", ext("--overwrite", out="f.zarr"), 2, "exists and is a file", _file("f.zarr")),
    Case("out-user-dir-overwrite", ext("--overwrite", out="mine.zarr"), 2, "not a zarr store",
         _user_dir("mine.zarr")),
    Case("out-user-dir", ext(out="mine.zarr"), 2, "already exists", _user_dir("mine.zarr")),
    Case("out-h5-is-dir", ext(out="d.h5"), 2, "already exists", _plain_dir("d.h5")),
    Case("out-h5-is-dir-overwrite", ext("--overwrite", out="d.h5"), 2, "is not an HDF5 store", _plain_dir("d.h5")),
    Case("out-h5-url", cmd(E, *TINY, "--data", "{data}", "--out", "s3://bucket/s.h5"), 2, "cannot live at a URL"),
    Case("out-other-config", ext("--layers", "5", out="st/s.zarr"), 2, "was extracted with a different configuration",
         _copy_store("st/s.zarr")),
    Case("out-resume-nothing", ext("--resume"), 2, "there is no store at"),
    Case("lock-live-break", ext("--break-lock"), 2, "never removes the lock of a process that runs on this host",
         _lock()),
    Case("lock-live", ext(), 2, "is being written by another process", _lock()),
    Case("lock-stale", ext(), 2, "stale writer lock", _stale_lock),
    Case("lock-other-host", ext(), 2, "cannot check a process on another host", _lock(host="gpu-node-17")),
    Case("lock-unreadable", ext(), 2, "unreadable writer lock",
         lambda c: (_lock()(c), (c.out / ".epcache.lock").write_text("{trunc"))),
    # probe
    Case("probe-out-file", cmd("probe", "--store", "{store}", "--head", "linear", "--out", "{tmp}/f"), 2,
         "is an existing file, not a run directory", _file("f")),
    Case("probe-out-under-file", cmd("probe", "--store", "{store}", "--head", "linear", "--out", "{tmp}/f/run"), 2,
         "a part of that path is a regular file", _file("f")),
    Case("probe-store-missing", cmd("probe", "--store", "{tmp}/nope.zarr", "--head", "linear"), 2,
         "does not exist"),
    Case("probe-store-file", cmd("probe", "--store", "{tmp}/f", "--head", "linear"), 2, "is a file", _file("f")),
    Case("probe-store-plain-dir", cmd("probe", "--store", "{tmp}/d", "--head", "linear"), 2,
         "is not a zarr v3 store", _plain_dir("d")),
    Case("probe-layer-99", cmd("probe", "--store", "{store}", "--head", "linear", "--layers", "99"), 2, "99"),
    Case("probe-head-unknown", cmd("probe", "--store", "{store}", "--head", "nope"), 2, "unknown head kind 'nope'",
         lines=2),
    Case("probe-eval-split", cmd("probe", "--store", "{store}", "--head", "linear", "--eval-split", "test"), 2,
         "test"),
    # reading commands
    Case("info-missing", cmd("info", "{tmp}/nope.zarr"), 2, "does not exist"),
    Case("info-file", cmd("info", "{tmp}/f"), 2, "is a file", _file("f")),
    Case("info-plain-dir", cmd("info", "{tmp}/d"), 2, "is not a zarr v3 store", _plain_dir("d")),
    Case("info-h5-garbage", cmd("info", "{tmp}/g.h5"), 2, "g.h5", _file("g.h5", b"not hdf5")),
    Case("ls-missing", cmd("ls", "{tmp}/nope"), 2, "does not exist"),
    Case("ls-loops", cmd("ls", "{tmp}/tree"), 0, "s.zarr",
         lambda c: (_copy_store("tree/a/s.zarr")(c), (c.tmp / "tree/a/up").symlink_to(".."),
                    (c.tmp / "tree/a/self").symlink_to(c.tmp / "tree/a"))),
    Case("verify-plain-dir", cmd("verify", "{tmp}/d", "--no-progress"), 2, "is not a zarr v3 store",
         _plain_dir("d")),
    Case("verify-repair-no-data", cmd("verify", "{store}", "--repair", "--data", "{tmp}/nope", "--no-progress"),
         0, "clean"),
]
