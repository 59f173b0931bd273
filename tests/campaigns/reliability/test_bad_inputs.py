"""Bad-input campaign through the CLI: every case ends in its exact expected outcome.

Broken images and CSVs fail with exit 2 naming the file (never a traceback) and leave no store
looking complete; odd-but-valid images (grayscale, palette, CMYK, alpha, huge) are converted to
RGB exactly as the RGB-converted image would be; damaged stores make `verify` exit 1 and the
readers exit 2; a failed `extract --overwrite` must not cost the user the store they had.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from verify_helpers import chunk_file, copy_store, store_files, write_image

from epcache.cli import app
from epcache.errors import CorruptStoreError
from epcache.store import open_store

runner = CliRunner()
TINY = ["--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32", "--workers", "0", "--no-progress",
        "--layers", "0,11", "--chunk-samples", "4", "--batch-size", "4"]


def _dataset(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_image(root / "train" / ("cat" if i % 2 else "dog") / f"ok_{i}.png", rng, size=(40, 36))
    return root


def _extract(data: Path, out: Path, *args: str) -> object:
    return runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--split", "train=train",
                               *args])


def _rgb_image(path: Path, mode: str) -> Path:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (44, 52, 3), dtype=np.uint8))
    im = {
        "L": lambda: rgb.convert("L"),
        "P": lambda: rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "CMYK": lambda: rgb.convert("CMYK"),
        "RGBA": lambda: Image.merge("RGBA", (*rgb.split(), rgb.convert("L"))),
        "LA": lambda: Image.merge("LA", (rgb.convert("L"), rgb.getchannel(0))),
        "I;16": lambda: Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 10).astype(np.uint16)),
    }[mode]()
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _truncated(suffix: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        write_image(path.with_suffix(suffix), np.random.default_rng(2), size=(60, 60))
        full = path.with_suffix(suffix).read_bytes()
        path.with_suffix(suffix).write_bytes(full[: len(full) // 3])
        return path.with_suffix(suffix)

    return make


def _raw(data: bytes, suffix: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        p = path.with_suffix(suffix)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    return make


# ---------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_truncated(".jpg"), id="truncated-jpeg"),
        pytest.param(_truncated(".png"), id="truncated-png"),
        pytest.param(_raw(b"", ".jpg"), id="zero-byte-jpeg"),
        pytest.param(_raw(b"", ".png"), id="zero-byte-png"),
        pytest.param(_raw(b"name,label\nthis is text\n", ".jpg"), id="text-named-jpg"),
        pytest.param(_raw(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, ".png"), id="png-signature-then-garbage"),
    ],
)
def test_undecodable_image_fails_naming_it_and_nothing_looks_complete(make: Callable, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    bad = make(data / "train" / "cat" / "bad")
    out = tmp_path / "s" / "s.zarr"
    r = _extract(data, out)
    rel = bad.relative_to(data).as_posix()
    assert r.exit_code == 2, r.output
    assert rel in r.output and "cannot decode" in r.output and "--on-bad-image skip" in r.output
    assert "Traceback" not in r.output
    v = runner.invoke(app, ["verify", str(out), "--no-progress"])
    assert v.exit_code == 1 and "missing block(s)" in v.output  # incomplete, and says so
    r = _extract(data, out, "--on-bad-image", "skip", "--overwrite")
    assert r.exit_code == 0 and "skipped 1 unreadable images" in r.output, r.output
    with open_store(out) as st:
        assert rel not in st.read_ids("train") and st.split("train").num_samples == 6


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16"])
def test_non_rgb_image_is_extracted_as_its_rgb_conversion(mode: str, tmp_path: Path) -> None:
    """timm's loader convention: ``Image.convert("RGB")`` (alpha dropped); 16-bit values scaled to 8 bits
    (``round(v * 255 / 65535)``), not clipped at 255 as ``convert`` does."""
    data = _dataset(tmp_path / "data", n=2)
    odd = _rgb_image(data / "train" / "cat" / ("odd.jpg" if mode == "CMYK" else "odd.png"), mode)
    with Image.open(odd) as im:
        assert im.mode == mode
        if mode == "I;16":
            eight = np.round(np.asarray(im, dtype=np.float64) * 255 / 65535).astype(np.uint8)
            Image.fromarray(eight).convert("RGB").save(data / "train" / "dog" / "twin.png")
        else:
            im.convert("RGB").save(data / "train" / "dog" / "twin.png")  # lossless: the exact RGB pixels
    out = tmp_path / "s" / "s.zarr"
    r = _extract(data, out)
    assert r.exit_code == 0, r.output
    with open_store(out) as st:
        ids = st.read_ids("train")
        i, j = ids.index(odd.relative_to(data).as_posix()), ids.index("train/dog/twin.png")
        for layer in st.meta.layers:
            x = st.read_tokens("train", layer)
            assert x[i].tobytes() == x[j].tobytes(), (mode, layer)


def test_huge_image_is_accepted(tmp_path: Path) -> None:
    """8000 x 8000 = 64 Mpixel: under PIL's decompression-bomb limit (89 Mpixel), decoded and resized."""
    data = _dataset(tmp_path / "data", n=3)
    Image.new("RGB", (8000, 8000), (200, 30, 90)).save(data / "train" / "cat" / "huge.png")
    r = _extract(data, tmp_path / "s" / "s.zarr")
    assert r.exit_code == 0, r.output


def test_decompression_bomb_is_refused_naming_the_file(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", n=3)
    Image.new("1", (14000, 14000)).save(data / "train" / "cat" / "bomb.png")  # 196 Mpixel, 24 KB on disk
    r = _extract(data, tmp_path / "s" / "s.zarr")
    assert r.exit_code == 2 and "train/cat/bomb.png" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------------------- CSV and paths


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["../outside.png,0"], "climbs out with '..'"),
        (["/etc/passwd,0"], "is absolute"),
        (["train/cat/ok_1.png,cat"], "integer label"),
        (["train/cat/ok_1.png,1.5"], "integer label"),
        (["train/cat/ok_1.png,-1"], "negative"),
        (["train/cat/ok_1.png,0", "train/cat/ok_1.png,1"], "listed twice"),
        (["train/cat/ok_1.png,0,extra"], "expected `path,label`"),
        (["train/cat/nope.png,0"], "does not exist"),
        (["path,label"], "has no rows"),
        (["link.png,0"], "symlink that leads outside"),
    ],
)
def test_bad_csv_rows_are_refused_naming_the_row(rows: list[str], message: str, tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    write_image(tmp_path / "outside.png", np.random.default_rng(3))
    (data / "link.png").symlink_to(tmp_path / "outside.png")
    (data / "train.csv").write_text("\n".join(["train/dog/ok_0.png,0", *rows]) if rows != ["path,label"] else
                                    "path,label\n")
    out = tmp_path / "s" / "s.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(out), "--split", "train=train.csv"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert "train.csv" in r.output
    assert not out.exists()


def test_files_where_directories_are_expected(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    r = _extract(not_dir, tmp_path / "a" / "s.zarr")  # data root is a file
    assert r.exit_code == 2 and "is not a directory" in r.output
    (data / "val").write_text("x")  # split directory is a file
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(tmp_path / "b" / "s.zarr"),
                            "--split", "val=val"])
    assert r.exit_code == 2 and "val" in r.output and "does not exist" in r.output
    out_file = tmp_path / "c" / "s.zarr"  # --out is a plain file: kept, never replaced
    out_file.parent.mkdir()
    out_file.write_text("my notes")
    for extra in ([], ["--overwrite"]):
        r = _extract(data, out_file, *extra)
        assert r.exit_code == 2 and "Traceback" not in r.output and str(out_file) in r.output, r.output
        assert out_file.read_text() == "my notes"
    r = runner.invoke(app, ["verify", str(out_file), "--no-progress"])
    assert r.exit_code == 2 and "is a file" in r.output
    mine = tmp_path / "d" / "s.zarr"  # --out is a directory of the user's files
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("precious")
    r = _extract(data, mine, "--overwrite")
    assert r.exit_code == 2 and "not a zarr store" in r.output
    assert (mine / "thesis.tex").read_text() == "precious"


# ---------------------------------------------------------------------------------------- damaged stores


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    data = _dataset(root / "data", n=10)
    out = {"data": data}
    for fmt in ("zarr", "h5"):
        path = root / fmt / f"s.{fmt}"
        r = _extract(data, path)
        assert r.exit_code == 0, r.output
        out[fmt] = path
    return out


def _edit_zarr_meta(store: Path, edit: Callable[[dict], None]) -> None:
    doc_path = store / "zarr.json"
    doc = json.loads(doc_path.read_text())
    edit(doc["attributes"]["epcache"])
    doc_path.write_text(json.dumps(doc))


def _set_split(key: str, value: object) -> Callable[[dict], None]:
    return lambda m: m["splits"]["train"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("edit", "message", "info_exit"),
    [
        (_set_split("num_samples", 11), "metadata says split 'train' layer 0 has shape", 2),
        (lambda m: m.__setitem__("format_version", 2), "format version 2", 2),
        (lambda m: m.pop("layout"), "missing the key 'layout'", 2),
        (lambda m: m["splits"]["train"].pop("ids_sha256"), "missing the key 'ids_sha256'", 2),
        (_set_split("num_samples", "ten"), "malformed", 2),
        (lambda m: m.__setitem__("dim", 7), "shape", 2),
        (lambda m: m.__setitem__("dtype", "int8"), "malformed", 2),
        (lambda m: m["preprocessing"].__setitem__("img_size", 224), "provenance key", 0),
        (_set_split("ids_sha256", "0" * 64), "do not match ids_sha256", 0),
        (_set_split("classes", ["cat"]), "outside 0..0", 0),
    ],
    ids=["shape", "version", "missing-key", "missing-split-key", "bad-type", "dim", "dtype", "provenance", "ids-sha",
         "classes"],
)
def test_hand_edited_metadata(good: dict[str, Path], tmp_path: Path, edit: Callable, message: str,
                              info_exit: int) -> None:
    b = copy_store(good["zarr"], tmp_path / "b" / "s.zarr")
    _edit_zarr_meta(b, edit)
    v = runner.invoke(app, ["verify", str(b), "--no-progress"])
    assert v.exit_code == 1 and message in v.output and "Traceback" not in v.output, v.output
    i = runner.invoke(app, ["info", str(b)])
    assert i.exit_code == info_exit and "Traceback" not in i.output, i.output


def test_root_document_that_is_not_json(good: dict[str, Path], tmp_path: Path) -> None:
    b = copy_store(good["zarr"], tmp_path / "b" / "s.zarr")
    (b / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    v = runner.invoke(app, ["verify", str(b), "--no-progress"])
    assert v.exit_code == 1 and "zarr.json is damaged: not valid JSON" in v.output
    i = runner.invoke(app, ["info", str(b)])
    assert i.exit_code == 2 and "Traceback" not in i.output


def test_hdf5_metadata_edit_and_layer_that_is_a_file(good: dict[str, Path], tmp_path: Path) -> None:
    import h5py

    b = copy_store(good["h5"], tmp_path / "b" / "s.h5")
    with h5py.File(b, "r+") as f:
        doc = json.loads(f.attrs["epcache"])
        doc["format_version"] = 99
        f.attrs["epcache"] = json.dumps(doc)
    v = runner.invoke(app, ["verify", str(b), "--no-progress"])
    assert v.exit_code == 1 and "format version 99" in v.output
    z = copy_store(good["zarr"], tmp_path / "z" / "s.zarr")
    shutil.rmtree(z / "splits/train/layers/11")
    (z / "splits/train/layers/11").write_text("a file where the array directory belongs")
    v = runner.invoke(app, ["verify", str(z), "--no-progress"])
    assert v.exit_code == 1 and "layers/11 of split 'train' is missing" in v.output, v.output
    assert runner.invoke(app, ["info", str(z)]).exit_code == 2


def test_damaged_chunk_is_named_by_readers(good: dict[str, Path], tmp_path: Path) -> None:
    b = copy_store(good["zarr"], tmp_path / "b" / "s.zarr")
    f = chunk_file(b, "train", 11, 1)
    f.write_bytes(f.read_bytes()[:50])
    with open_store(b) as st, pytest.raises(CorruptStoreError, match=r"chunk 1 \(rows 4-8\) of 'train' layer 11"):
        st.read_chunk("train", 11, 1)
    v = runner.invoke(app, ["verify", str(b), "--no-progress"])
    assert v.exit_code == 1 and "splits/train/layers/11/c/1/0/0/0" in v.output


def test_deleted_chunk_of_a_written_block_is_an_error_for_readers(good: dict[str, Path], tmp_path: Path) -> None:
    b = copy_store(good["zarr"], tmp_path / "b" / "s.zarr")
    chunk_file(b, "train", 0, 2).unlink()
    with open_store(b) as st, pytest.raises(CorruptStoreError):
        st.read_chunk("train", 0, 2)


# ---------------------------------------------------------------------------------------- --overwrite


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vit_nope_patch16"], "unknown model"),
        (["--data", "MISSING"], "does not exist"),
        (["--layers", "0,40"], "out of range"),
        (["--split", "train=nope"], "does not exist"),
    ],
)
def test_failed_overwrite_keeps_the_store_when_validation_fails(good: dict[str, Path], tmp_path: Path,
                                                                args: list[str], message: str) -> None:
    b = copy_store(good["zarr"], tmp_path / "b" / "s.zarr")
    before = store_files(b)
    data = tmp_path / "missing" if "MISSING" in args else good["data"]
    split = [] if "--split" in args else ["--split", "train=train"]  # a split given twice is refused on its own
    argv = ["extract", *TINY, "--data", str(data), "--out", str(b), *split, "--overwrite"]
    for k in range(0, len(args), 2):
        if args[k] != "--data":
            argv = [*argv, args[k], args[k + 1]]
    r = runner.invoke(app, argv)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert store_files(b) == before


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_overwrite_that_fails_mid_run_keeps_the_old_store(good: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    """--overwrite builds the new store beside the old one: a bad image mid-run costs nothing."""
    data = shutil.copytree(good["data"], tmp_path / "data")
    _truncated(".png")(data / "train" / "cat" / "zz_bad")
    b = copy_store(good[fmt], tmp_path / "b" / f"s.{fmt}")
    before = store_files(b) if fmt == "zarr" else {"file": b.read_bytes()}
    r = _extract(data, b, "--overwrite")
    assert r.exit_code == 2 and "train/cat/zz_bad.png" in r.output
    assert (store_files(b) if fmt == "zarr" else {"file": b.read_bytes()}) == before
    assert sorted(p.name for p in b.parent.iterdir()) == [b.name]  # no staging store left behind
    v = runner.invoke(app, ["verify", str(b), "--no-progress"])
    assert v.exit_code == 0, v.output


def test_nothing_is_written_outside_the_output(good: dict[str, Path], tmp_path: Path) -> None:
    """A campaign of failures leaves the data root exactly as it was."""
    data = shutil.copytree(good["data"], tmp_path / "data")
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    for args in (["--model", "nope"], ["--layers", "99"]):
        runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(tmp_path / "o.zarr"), *args])
    _extract(data, tmp_path / "ok" / "s.zarr")
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before
    assert not os.path.exists(tmp_path / "o.zarr")
