"""`epcache extract --masks`: mask sources, the view geometry of masks, resume and refusals (cache_layout.md §3.6)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, tiny_config
from PIL import Image
from typer.testing import CliRunner

from epcache.cli import app
from epcache.demo import ShapesConfig, make_shapes_dataset
from epcache.demo._shapes import COLOURS, SHAPES
from epcache.errors import ConfigError, ProvenanceMismatchError
from epcache.extract import extract_store
from epcache.extract._loader import ViewDataset
from epcache.extract._mask_geometry import load_mask, view_geometry, warp_mask
from epcache.extract._mask_sources import scan_mask_splits
from epcache.extract._pixels import pil_steps
from epcache.extract._transforms import ViewAugment, create_eval_transform, crop_flip
from epcache.store import open_store, verify_store
from epcache.store.read.masks import MASKS

runner = CliRunner()
SMALL = ShapesConfig(num_classes=3, train_per_class=2, val_per_class=1, size=40, object_size=16, seed=3)
PALETTE = np.array([(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10)], np.uint8)
DATA_CONFIG = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
               "crop_pct": 0.9, "crop_mode": "center"}


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("seg"), SMALL, masks=True)


@pytest.fixture(scope="module")
def extracted(seg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "s.zarr"
    extract_store(tiny_config(seg, out, masks=True, views=2), progress=False)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--model", TINY_VIT, "--random-init", "--model-kwargs", json.dumps(TINY_VIT_KWARGS),
            "--data", str(data), "--out", str(out), "--masks", "--workers", "0", "--chunk-samples", "2",
            "--no-progress", *extra]


# ---------------------------------------------------------------- the geometry of a view's mask


def test_mask_geometry_is_the_pixel_geometry(tmp_path: Path) -> None:
    """On an image whose classes can be read off its pixels, every view's mask is what its pixels say."""
    rng = np.random.default_rng(1)
    classes = np.kron(rng.integers(0, 4, size=(4, 5)), np.ones((24, 24), np.int64))  # 96 x 120, 24-px blocks
    image = tmp_path / "blocks.png"
    Image.fromarray(PALETTE[classes]).save(image)
    mask = Image.fromarray(classes.astype(np.uint8))
    eval_transform = create_eval_transform(DATA_CONFIG)
    augment = ViewAugment((32, 32), (0.5,) * 3, (0.5,) * 3)
    ds = ViewDataset([image], split="train", eval_transform=eval_transform, input_size=(3, 32, 32), views=6,
                     augment=augment, seed=11)
    _, views, error, _ = ds[0]
    assert error == ""
    steps = pil_steps(eval_transform)
    agree = []
    for v in range(6):
        geom = view_geometry(steps, 120, 96, seed=11, split="train", index=0, view=v)
        want = warp_mask(mask, geom, (32, 32))
        pixels = views[v].numpy().transpose(1, 2, 0).astype(np.int64)  # (32, 32, 3), bicubic
        from_pixels = np.abs(pixels[:, :, None, :] - PALETTE[None, None].astype(np.int64)).sum(-1).argmin(-1)
        interior = np.ones_like(want, bool)  # away from class edges, where bicubic blends two colours
        for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1)):
            interior &= np.roll(want, (dy, dx), axis=(0, 1)) == want
        agree.append(float((from_pixels == want)[interior].mean()))
        if v:  # the image cut by the same geometry with nearest resampling is exactly the mask's colours
            same = np.asarray(crop_flip(Image.open(image).convert("RGB"), geom, (32, 32), nearest=True))
            np.testing.assert_array_equal(same, PALETTE[want])
    assert min(agree) > 0.98, agree


def _crop_params(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (scale 0.08-1, ratio 3/4-4/3) on a numpy generator, re-stated."""
    for _ in range(10):
        target = width * height * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width  # square images: the fallback is the whole image


def test_stored_masks_are_the_views_crop_and_flip(extracted: Path, seg: Path) -> None:
    """Augmented views: the full mask cut by the view's box and mirrored by its flip, reproduced here by hand."""
    with open_store(extracted) as store:
        doc = store.meta_document()
        order, ids = store.read_order("train"), store.read_ids("train")
        stored = [store.read_masks("train", np.arange(len(ids)), view=v) for v in range(3)]
    crop_pct = doc["preprocessing"]["data_config"]["crop_pct"]
    scale = math.floor(32 / crop_pct)
    offset = round((scale - 32) / 2.0)
    for row, sid in enumerate(ids):
        source = seg / sid.replace("/images/", "/masks/")
        full = Image.open(source)
        eval_view = full.resize((scale, scale), Image.NEAREST).crop((offset, offset, offset + 32, offset + 32))
        np.testing.assert_array_equal(stored[0][row], np.asarray(eval_view))
        for view in (1, 2):
            rng = np.random.default_rng(np.random.SeedSequence([0, zlib.crc32(b"train"), int(order[row]), view]))
            top, left, h, w = _crop_params(full.width, full.height, rng)
            want = full.crop((left, top, left + w, top + h)).resize((32, 32), Image.NEAREST)
            if rng.random() < 0.5:
                want = want.transpose(Image.FLIP_LEFT_RIGHT)
            np.testing.assert_array_equal(stored[view][row], np.asarray(want))


# ---------------------------------------------------------------- sources


def test_demo_masks_agree_with_the_objects_pixels(seg: Path) -> None:
    for path in sorted((seg / "train" / "images").iterdir()):
        shape = path.stem.rsplit("_", 1)[0]
        c = SHAPES.index(shape)
        img = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
        mask = np.asarray(Image.open(seg / "train" / "masks" / path.name))
        assert set(np.unique(mask).tolist()) == {0, 1 + c}
        inside = img[mask == 1 + c]
        colours = {tuple(x) for x in inside.tolist()} - {(0, 0, 0)}  # the object's fill and its black outline
        assert len(colours) == 1
        (col,) = colours
        assert max(abs(a - b) for a, b in zip(col, COLOURS[c], strict=True)) <= 25
        assert not (img[mask == 0] == col).all(-1).any()  # the class colour is nowhere outside the mask
    assert (seg / "classes.txt").read_text().split() == ["background", *SHAPES[:3]]


def test_demo_without_masks_is_the_classification_dataset(seg: Path, tmp_path: Path) -> None:
    plain = make_shapes_dataset(tmp_path / "plain", SMALL)
    for split in ("train", "val"):
        for path in sorted((seg / split / "images").iterdir()):
            shape, i = path.stem.rsplit("_", 1)
            assert (plain / split / shape / f"{i}.png").read_bytes() == path.read_bytes()


def test_imagefolder_layout_gives_classes_and_labels(seg: Path) -> None:
    sources, info = scan_mask_splits(seg, {"train": "train", "val": "val"}, ignore_index=255, size=(32, 32))
    assert info.classes == ("background", *SHAPES[:3]) and info.dtype == "uint8" and info.size == (32, 32)
    train = sources["train"]
    assert list(train.ids) == sorted(train.ids) and len(train) == 6
    for sid, label, (mask, _) in zip(train.ids, train.labels.tolist(), train.masks or (), strict=True):
        assert label == 1 + SHAPES.index(sid.split("/")[-1].rsplit("_", 1)[0])  # the object's class, not background
        assert mask == sid.replace("/images/", "/masks/")


def test_csv_rows_with_and_without_labels(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    for k in range(3):
        Image.fromarray(np.full((10, 12, 3), 40 * k, np.uint8)).save(root / "img" / f"{k}.png")
        m = np.zeros((10, 12), np.uint8)
        m[:2] = 2
        m[5:] = 1 + (k == 2)  # image 2: class 2 the most frequent
        m[0, 0] = 255
        Image.fromarray(m).save(root / "img" / f"{k}_mask.png")
    (root / "a.csv").write_text("path,mask_path\nimg/1.png,img/1_mask.png\nimg/0.png,img/0_mask.png\n")
    (root / "b.csv").write_text("img/2.png,img/2_mask.png,0\n")
    sources, info = scan_mask_splits(root, {"a": "a.csv", "b": "b.csv"}, ignore_index=255, size=(8, 8))
    assert info.classes == ("class_0", "class_1", "class_2")
    assert sources["a"].ids == ("img/0.png", "img/1.png") and sources["a"].labels.tolist() == [1, 1]
    assert sources["b"].labels.tolist() == [0]  # the CSV's label wins over the mask's
    assert sources["a"].kind == "csv"


def test_many_classes_take_uint16(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for kind, arr in (("images", np.zeros((6, 6, 3), np.uint8)), ("masks", np.full((6, 6), 299, np.uint16))):
        (root / "s" / kind).mkdir(parents=True)
        Image.fromarray(arr).save(root / "s" / kind / "x.png")
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(300)) + "\n")
    _, info = scan_mask_splits(root, {"s": "s"}, ignore_index=65535, size=(4, 4))
    assert info.dtype == "uint16" and len(info.classes) == 300
    with pytest.raises(ConfigError, match="--mask-ignore-index 65535"):
        scan_mask_splits(root, {"s": "s"}, ignore_index=255, size=(4, 4))
    assert np.asarray(load_mask(root / "s" / "masks" / "x.png")).max() == 299


# ---------------------------------------------------------------- the store an extraction writes


def test_extracted_store_holds_verified_masks(extracted: Path) -> None:
    report = verify_store(extracted)
    assert report.ok, report.problems
    with open_store(extracted) as store:
        info = store.dense_info()
        assert info is not None and info.classes == ("background", *SHAPES[:3]) and info.size == (32, 32)
        assert store.has_masks("train") and store.has_masks("val")
        assert store.split("train").classes == info.classes
        masks = store.read_masks("val", [0, 1, 2])
        labels = store.read_labels("val")
        for m, label in zip(masks, labels.tolist(), strict=True):
            assert set(np.unique(m).tolist()) <= {0, label}


def test_edited_mask_file_is_refused_on_resume(seg: Path, extracted: Path, tmp_path: Path) -> None:
    data = _copy(seg, tmp_path / seg.name)  # the same dataset name: only the mask differs
    store = _copy(extracted, tmp_path / "s.zarr")
    mask = data / "val" / "masks" / "circle_0000.png"
    a = np.asarray(Image.open(mask)).copy()
    a[0, 0] = 1
    Image.fromarray(a).save(mask)
    with pytest.raises(ProvenanceMismatchError, match="masks"):
        extract_store(tiny_config(data, store, masks=True, views=2), progress=False)


def test_killed_run_redoes_only_missing_mask_blocks(seg: Path, extracted: Path, tmp_path: Path) -> None:
    store = _copy(extracted, tmp_path / "s.zarr")
    with open_store(store) as s:
        before = s.read_mask_rows("train", 0, 6)
    with open_store(store, "a") as s:
        s._write_record("train", MASKS, 1, -1)  # as if killed after block 1's tokens, before its masks
        s.write_masks_block("train", 0, np.zeros_like(before[:4]))  # and block 0 damaged: verify, not resume, sees it
        s.write_masks_block("train", 0, before[:4])
        assert s.missing_blocks("train") == [1]
    result = extract_store(tiny_config(seg, store, masks=True, views=2), progress=False)
    assert result.blocks_written == 1
    with open_store(store) as s:
        np.testing.assert_array_equal(s.read_mask_rows("train", 0, 6), before)
    assert verify_store(store).ok


@pytest.mark.parametrize("damage", ["size", "missing", "class", "rgb", "csv"])
def test_bad_inputs_exit_2_with_nothing_written(seg: Path, tmp_path: Path, damage: str) -> None:
    data = _copy(seg, tmp_path / "data")
    mask = data / "train" / "masks" / "square_0001.png"
    split = "train"
    if damage == "size":
        Image.fromarray(np.zeros((39, 40), np.uint8)).save(mask)
    elif damage == "missing":
        mask.unlink()
    elif damage == "class":
        Image.fromarray(np.full((40, 40), 7, np.uint8)).save(mask)
    elif damage == "rgb":
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(mask)
    else:
        (data / "rows.csv").write_text("train/images/square_0001.png\n")
        split = "rows.csv"
    out = tmp_path / "out.zarr"
    r = runner.invoke(app, _argv(data, out, "--split", f"train={split}"))
    assert r.exit_code == 2, r.output
    assert not out.exists()
    text = " ".join(r.output.split())
    want = {"size": "is 40x39 but its image", "missing": "has no mask", "class": "holds class index 7",
            "rgb": "not a single-channel mask", "csv": "expected `path,mask_path`"}[damage]
    assert want in text
    if damage != "csv":
        assert "square_0001.png" in text


def test_a_split_added_later_gets_its_masks(seg: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    extract_store(tiny_config(seg, out, masks=True, splits={"val": "val"}), progress=False)
    result = extract_store(tiny_config(seg, out, masks=True, splits={"val": "val", "train": "train"}),
                           progress=False)
    assert result.resumed and set(result.samples) == {"train"}
    with open_store(out) as store:
        assert store.has_masks("train") and set(store.meta.dense["masks_sha256"]) == {"val", "train"}
    assert verify_store(out).ok


def test_hf_dataset_with_a_mask_column_gives_the_same_masks(seg: Path, tmp_path: Path) -> None:
    """An hf: parquet dataset of the same images and masks stores the masks the file layout stores."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    ds = tmp_path / "ds"
    cell = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split in ("train", "val"):
        names = sorted(p.name for p in (seg / split / "images").iterdir())

        def column(kind: str, names: list[str] = names, split: str = split) -> object:
            return pa.array([{"bytes": (seg / split / kind / n).read_bytes(), "path": None} for n in names], cell)

        table = pa.table({"image": column("images"), "annotation": column("masks")})
        (ds / split).mkdir(parents=True)
        pq.write_table(table, ds / split / f"{split}-00000-of-00001.parquet")
    (ds / "classes.txt").write_text((seg / "classes.txt").read_text())
    out, ref = tmp_path / "hf.zarr", tmp_path / "ref.zarr"
    r = runner.invoke(app, [*_argv(ds, out), "--data", f"hf:{ds}", "--hf-mask-key", "annotation"])
    assert r.exit_code == 0, r.output
    extract_store(tiny_config(seg, ref, masks=True, chunk_samples=2), progress=False)
    with open_store(out) as a, open_store(ref) as b:
        assert a.dense_info() == b.dense_info()
        for split in ("train", "val"):
            ids_a, ids_b = a.read_ids(split), b.read_ids(split)
            by_id = dict(zip(ids_b, range(len(ids_b)), strict=True))
            names = sorted(p.name for p in (seg / split / "images").iterdir())
            rows_b = [by_id[f"{split}/images/{names[int(sid.rsplit('/', 1)[1])]}"] for sid in ids_a]
            np.testing.assert_array_equal(a.read_masks(split, np.arange(len(ids_a))), b.read_masks(split, rows_b))
            np.testing.assert_array_equal(a.read_labels(split), b.read_labels(split)[rows_b])
    bad = runner.invoke(app, [*_argv(ds, tmp_path / "bad.zarr"), "--data", f"hf:{ds}", "--mask-column", "nope"])
    assert bad.exit_code == 2 and "--mask-column" in bad.output and not (tmp_path / "bad.zarr").exists()


def test_a_segmentation_layout_without_masks_is_pointed_at_the_flag(seg: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from epcache.extract import plan_extract

    plan = plan_extract(tiny_config(seg, tmp_path / "s.zarr"))
    assert plan.splits[0].num_classes == 2  # images/ and masks/ taken as classes, as ImageFolder says
    assert "pass --masks" in capsys.readouterr().err


def test_taps_and_masks_in_one_extraction(seg: Path, extracted: Path, tmp_path: Path) -> None:
    """Masks live in the parent only; each tap store is complete without them and the tokens are unchanged."""
    out = tmp_path / "t.zarr"
    extract_store(tiny_config(seg, out, masks=True, views=2, taps="attn_norm"), progress=False)
    assert verify_store(out).ok
    with open_store(out) as s, open_store(extracted) as ref, open_store(out, tap="attn_norm") as tap:
        assert s.has_masks("train") and not tap.has_masks("train") and tap.dense_info() is None
        assert tap.is_complete() and s.is_complete()
        np.testing.assert_array_equal(s.read_mask_rows("train", 0, 6), ref.read_mask_rows("train", 0, 6))
        layer = s.meta.layers[-1]
        np.testing.assert_array_equal(s.read_rows("val", layer, [0, 1, 2]), ref.read_rows("val", layer, [0, 1, 2]))
