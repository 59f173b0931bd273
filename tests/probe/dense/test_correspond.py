"""Correspondence PCK: the matcher against an independent numpy reference, whole-patch shifts, the store path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from correspond_helpers import DIM, GRID, SIZE, centre, rolled, write_grid_store, write_pairs
from PIL import Image

from epcache.errors import ConfigError
from epcache.probe.dense.correspond import match_keypoints, parse_thresholds, pck, read_pairs
from epcache.probe.dense.correspond_run import CorrespondConfig, correspond_store


def _reference_feature(grid_feats: np.ndarray, x: float, y: float, interp: str) -> np.ndarray:
    """Bilinear as a sum of tent weights over every patch centre (no neighbour indexing), or the containing patch."""
    h, w = GRID
    step = SIZE / w
    if interp == "patch":
        return grid_feats[min(int(y // step), h - 1) * w + min(int(x // step), w - 1)]
    u = min(max(x / step - 0.5, 0.0), w - 1.0)
    v = min(max(y / step - 0.5, 0.0), h - 1.0)
    out = np.zeros(grid_feats.shape[1])
    for p in range(h * w):
        weight = max(0.0, 1 - abs(u - p % w)) * max(0.0, 1 - abs(v - p // w))
        out += weight * grid_feats[p]
    return out


def _reference_pck(src: np.ndarray, tgt: np.ndarray, sxy: np.ndarray, txy: np.ndarray, alphas: list[float],
                   scale: float, interp: str) -> np.ndarray:
    """[alphas, K] correct, one keypoint at a time, in float64."""
    s = src / np.linalg.norm(src, axis=1, keepdims=True)
    t = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
    out = np.zeros((len(alphas), len(sxy)), dtype=bool)
    for k, (x, y) in enumerate(sxy):
        f = _reference_feature(s, x, y, interp)
        best = int(np.argmax(t @ f))
        px, py = centre(best)
        err = float(np.hypot(px - txy[k, 0], py - txy[k, 1]))
        out[:, k] = [err < a * scale for a in alphas]
    return out


@pytest.mark.parametrize("interp", ["bilinear", "patch"])
def test_match_and_pck_equal_a_numpy_reference(interp: str) -> None:
    rng = np.random.default_rng(7)
    alphas = [0.05, 0.1, 0.15, 0.3]
    for _ in range(20):
        src, tgt = rng.standard_normal((2, GRID[0] * GRID[1], DIM))
        sxy, txy = rng.uniform(0, SIZE, (2, 9, 2))
        m = match_keypoints(src, tgt, sxy, grid=GRID, size=(SIZE, SIZE), interp=interp)  # type: ignore[arg-type]
        got = pck(m.xy, txy, alphas, scale=SIZE)
        np.testing.assert_array_equal(got, _reference_pck(src, tgt, sxy, txy, alphas, SIZE, interp))
        assert m.kept.all()


def test_pck_counts_strictly_below_the_threshold_and_never_a_dropped_match() -> None:
    pred = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    truth = np.array([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])  # errors 5, 10, 1
    got = pck(pred, truth, [0.05, 0.1, 0.2], scale=100.0, kept=np.array([True, True, False]))
    assert got.tolist() == [[False, False, False], [True, False, False], [True, True, False]]  # 5 < 5, 10 < 10: no
    per_keypoint = pck(pred, truth, [0.1], scale=np.array([40.0, 200.0, 100.0]))  # per-keypoint scales (bbox)
    assert per_keypoint.tolist() == [[False, True, True]]


@pytest.mark.parametrize("shift", [(1, 2), (0, 1), (3, 3)])
def test_whole_patch_shift_lands_every_keypoint_on_its_shifted_patch(shift: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    src = rng.standard_normal((GRID[0] * GRID[1], DIM))
    tgt = rolled(src, shift)
    patches = np.arange(GRID[0] * GRID[1])
    moved = ((patches // GRID[1] + shift[0]) % GRID[0]) * GRID[1] + (patches % GRID[1] + shift[1]) % GRID[1]
    centres = np.array([centre(p) for p in patches])
    truth = np.array([centre(p) for p in moved])
    for interp in ("bilinear", "patch"):
        m = match_keypoints(src, tgt, centres, grid=GRID, size=(SIZE, SIZE), interp=interp, mutual=True)  # type: ignore[arg-type]
        assert m.patch.tolist() == moved.tolist() and m.kept.all()
        assert pck(m.xy, truth, [0.05], scale=SIZE).all()
    # "patch" reads the containing patch, so anywhere inside it matches the same shifted patch
    inside = centres + rng.uniform(-7.9, 7.9, centres.shape)
    m = match_keypoints(src, tgt, inside, grid=GRID, size=(SIZE, SIZE), interp="patch")
    assert m.patch.tolist() == moved.tolist()


def test_mutual_filter_drops_a_match_whose_target_patch_prefers_another_source_patch() -> None:
    rng = np.random.default_rng(2)
    src = rng.standard_normal((16, DIM))
    src[1] = src[0] + 0.01 * rng.standard_normal(DIM)  # source patch 1 nearly repeats patch 0
    tgt = src.copy()
    tgt[1] = rng.standard_normal(DIM)  # ... and has no counterpart in the target
    xy = np.array([centre(0), centre(1), centre(5)])
    plain = match_keypoints(src, tgt, xy, grid=GRID, size=(SIZE, SIZE), interp="patch")
    mutual = match_keypoints(src, tgt, xy, grid=GRID, size=(SIZE, SIZE), interp="patch", mutual=True)
    assert plain.patch.tolist() == [0, 0, 5] and plain.kept.all()
    assert mutual.patch.tolist() == [0, 0, 5] and mutual.kept.tolist() == [True, False, True]


def test_store_pck_equals_the_reference_for_each_layer_and_pair(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ids = ["val/a.png", "val/b.png", "val/c.png"]
    tokens = {i: rng.standard_normal((2, 17, DIM)) for i in ids}
    store = write_grid_store(tmp_path / "s.zarr", tokens)
    pairs_rows, by_pair = [], {}
    for s, t in [("val/a.png", "val/b.png"), ("val/c.png", "val/a.png")]:
        sxy, txy = rng.uniform(0, SIZE, (2, 6, 2))
        by_pair[(s, t)] = (sxy, txy)
        pairs_rows += [(s, t, *a, *b) for a, b in zip(sxy, txy, strict=True)]
    pairs = write_pairs(tmp_path / "p.csv", pairs_rows)
    alphas = [0.1, 0.25]
    r = correspond_store(CorrespondConfig(store=store, pairs=pairs, layers="all", thresholds=alphas,
                                          out=tmp_path / "o"))
    assert r.layers == (0, 1)
    for li, layer in enumerate((0, 1)):
        per = [_reference_pck(tokens[s][li, 1:], tokens[t][li, 1:], sxy, txy, alphas, SIZE, "bilinear")
               for (s, t), (sxy, txy) in by_pair.items()]
        np.testing.assert_allclose(r.per_pair[layer], [p.mean(axis=1) for p in per])
        np.testing.assert_allclose(r.overall[layer], np.concatenate(per, axis=1).mean(axis=1))
    doc = json.loads((tmp_path / "o" / "correspond.json").read_text())
    assert doc["layers"][1]["pck"] == {"0.1": r.overall[1][0], "0.25": r.overall[1][1]}
    assert doc["pairs"][0]["source_id"] == "val/a.png" and doc["pairs"][0]["keypoints"] == 6
    lines = (tmp_path / "o" / "correspond.csv").read_text().splitlines()
    assert lines[0] == "layer,source_id,target_id,keypoints,pck@0.1,pck@0.25" and len(lines) == 1 + 2 * 2
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]  # no temporaries left


def test_bbox_norm_scales_by_the_longer_side_of_the_target_keypoints_box(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    tokens = {i: rng.standard_normal((2, 17, DIM)) for i in ("val/a.png", "val/b.png")}
    store = write_grid_store(tmp_path / "s.zarr", tokens)
    a, b = tokens["val/a.png"][0, 1:], tokens["val/b.png"][0, 1:]
    sxy = np.array([[5.0, 5.0], [40.0, 20.0], [60.0, 60.0]])
    txy = np.array([[10.0, 10.0], [30.0, 14.0], [18.0, 30.0]])  # box 20 x 20: scale 20 px
    pairs = write_pairs(tmp_path / "p.csv", [("val/a.png", "val/b.png", *s, *t) for s, t in zip(sxy, txy, strict=True)])
    r = correspond_store(CorrespondConfig(store=store, pairs=pairs, layers="0", thresholds=(0.5, 1.0),
                                          pck_norm="bbox"))
    expected = _reference_pck(a, b, sxy, txy, [0.5, 1.0], 20.0, "bilinear").mean(axis=1)
    np.testing.assert_allclose(r.overall[0], expected)


def test_read_pairs_groups_rows_by_pair_in_file_order(tmp_path: Path) -> None:
    path = write_pairs(tmp_path / "p.csv", [("b", "a", 1, 2, 3, 4), ("a", "b", 5, 6, 7, 8), ("b", "a", 0, 0, 1, 1)])
    p = read_pairs(path)
    assert p.ids == (("b", "a"), ("a", "b")) and p.pair.tolist() == [0, 1, 0] and p.line.tolist() == [2, 3, 4]
    assert p.source_xy.tolist() == [[1, 2], [5, 6], [0, 0]] and p.target_xy[1].tolist() == [7, 8]


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([("a", "b", 1, 2, 3, 4)], ("source_id", "target_id", "sx", "sy", "tx"), "no column(s) ty"),
        ([("a", "b", 1, "x", 3, 4)], None, "line 2: sy='x' is not a finite number"),
        ([("a", "b", 1, 2, "nan", 4)], None, "line 2: tx='nan' is not a finite number"),
        ([("", "b", 1, 2, 3, 4)], None, "line 2: empty source_id"),
        ([], None, "no keypoints"),
    ],
)
def test_read_pairs_refuses_a_bad_file_naming_the_line(tmp_path: Path, rows: list, header: tuple | None,
                                                        message: str) -> None:
    path = write_pairs(tmp_path / "p.csv", rows, *(() if header is None else (header,)))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(path)
    with pytest.raises(ConfigError, match="no such file"):
        read_pairs(tmp_path / "missing.csv")


def test_thresholds_parse_a_comma_list_in_the_unit_interval() -> None:
    assert parse_thresholds("0.05, 0.1,0.1") == (0.05, 0.1)
    assert parse_thresholds([0.2]) == (0.2,)
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(ConfigError, match="thresholds"):
            parse_thresholds(bad)


@pytest.fixture(scope="module")
def shifted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init two-block ViT over a noise image and its copy moved 1 patch down, 2 right (wrapping)."""
    from extract_helpers import tiny_config

    from epcache.extract import extract_store

    root = tmp_path_factory.mktemp("shift")
    img = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    (root / "data" / "val" / "a").mkdir(parents=True)
    Image.fromarray(img).save(root / "data" / "val" / "a" / "src.png")
    Image.fromarray(np.roll(img, (16, 32), axis=(0, 1))).save(root / "data" / "val" / "a" / "dst.png")
    # crop_pct 1 and 64 px images: the eval resize and crop keep every pixel where it is
    kwargs = {"depth": 2, "img_size": SIZE, "pretrained_cfg_overlay": {"crop_pct": 1.0}}
    extract_store(tiny_config(root / "data", root / "s.zarr", splits={"val": "val"}, dtype="float32",
                              model_kwargs=kwargs))
    return root / "s.zarr"


@pytest.mark.parametrize("interp", ["bilinear", "patch"])
def test_a_store_of_a_shifted_image_matches_every_patch_to_its_shifted_place(
    shifted_store: Path, tmp_path: Path, interp: str
) -> None:
    rows = []
    for p in range(16):
        sx, sy = centre(p)
        rows.append(("val/a/src.png", "val/a/dst.png", sx, sy, (sx + 32) % SIZE, (sy + 16) % SIZE))
        rows.append(("val/a/dst.png", "val/a/src.png", (sx + 32) % SIZE, (sy + 16) % SIZE, sx, sy))
    pairs = write_pairs(tmp_path / "p.csv", rows)
    r = correspond_store(CorrespondConfig(store=shifted_store, pairs=pairs, layers="all", interp=interp,  # type: ignore[arg-type]
                                          mutual=True))
    assert r.size == (SIZE, SIZE) and r.layers == (0, 1) and r.grids[0] == GRID
    for layer in r.layers:
        assert r.overall[layer] == (1.0, 1.0, 1.0) and r.kept[layer] == 32
        assert (r.per_pair[layer] == 1.0).all()
