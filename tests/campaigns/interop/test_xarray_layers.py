"""xarray opens stores whose layers differ in shape (cache_layout.md §3 dimension names).

xarray gives a dimension name one size across a group (and a tree): a resnet ``--layers all`` store
whose five stages shared ``token``/``channel`` could not be opened by ``open_datatree`` or by
``open_zarr`` on its layers group. Such stores name the axes per layer (``token_<L>``,
``channel_<L>``, scales too); stores of same-shaped layers keep ``token``/``channel``; a pooled output
of another width than ``dim`` has ``channel_pooled``. Stores written with the shared names stay
readable by epcache, and by xarray with ``drop_variables``, as §7 says.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import make_imagefolder, tiny_config

from epcache.convert import ConvertConfig, convert_store
from epcache.extract import ExtractConfig, extract_store
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store, verify_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xarray_layers")
    data = make_imagefolder(root / "data", splits={"train": 6, "val": 5})
    out = {"r18": root / "r18.zarr", "vit": root / "vit.zarr"}
    extract_store(ExtractConfig(model="resnet18", data=data, out=out["r18"], layers="all", random_init=True,
                                img_size=32, batch_size=4, workers=0, chunk_samples=2, dtype="float16", pooled=True,
                                allow_duplicate=True), progress=False)
    extract_store(tiny_config(data, out["vit"]), progress=False)
    for scheme in ("int8-channel", "int8-token"):
        out[scheme] = root / f"r18_{scheme}.zarr"
        convert_store(ConvertConfig(src=out["r18"], dst=out[scheme], quantize=scheme, chunk_samples=2, shard_samples=4),
                      progress=False)
    return out


def _values(arr: object) -> np.ndarray:
    return np.asarray(arr.values)  # type: ignore[attr-defined]


def test_datatree_and_open_zarr_read_every_stage(stores: dict[str, Path]) -> None:
    import xarray as xr

    p = stores["r18"]
    tree = xr.open_datatree(p, engine="zarr", consolidated=False)
    with open_store(p) as st:
        assert len({st.meta.layer_shape(layer) for layer in st.meta.layers}) == 5
        for split in st.splits:
            layers = xr.open_zarr(p / "splits" / split / "layers", consolidated=False)
            for layer in st.meta.layers:
                t, d = st.meta.layer_shape(layer)
                for arr in (tree[f"splits/{split}/layers"][str(layer)], layers[str(layer)]):
                    assert arr.dims == ("sample", "view", f"token_{layer}", f"channel_{layer}")
                    assert arr.shape == (st.split(split).num_samples, 1, t, d)
                    np.testing.assert_array_equal(_values(arr), st.read_tokens(split, layer))
            pooled = tree[f"splits/{split}"]["pooled"]
            assert pooled.dims == ("sample", "view", "channel")  # 512 = dim: the shared name
            np.testing.assert_array_equal(_values(pooled), st.read_pooled(split, 0, st.split(split).num_samples))


@pytest.mark.parametrize("scheme", ["int8-channel", "int8-token"])
def test_datatree_reads_codes_and_scales_of_a_quantised_store(stores: dict[str, Path], scheme: str) -> None:
    import xarray as xr

    p = stores[scheme]
    tree = xr.open_datatree(p, engine="zarr", consolidated=False)
    with open_store(p) as st:
        assert st.meta.quantization == scheme and st.split("val").block_samples == 4
        for layer in st.meta.layers:
            codes = tree["splits/val/layers"][str(layer)]
            scales = tree["splits/val/scales"][str(layer)]
            assert codes.dims == ("sample", "view", f"token_{layer}", f"channel_{layer}")
            want = ("chunk", f"channel_{layer}") if scheme == "int8-channel" else ("sample", "view", f"token_{layer}")
            assert scales.dims == want
            stored = st.stored_parts("val", layer, 0, st.split("val").num_chunks)  # codes, scales as stored
            np.testing.assert_array_equal(_values(codes), stored[0])
            np.testing.assert_array_equal(_values(scales), stored[1])


def test_same_shaped_layers_keep_the_shared_names(stores: dict[str, Path]) -> None:
    import xarray as xr

    p = stores["vit"]
    tree = xr.open_datatree(p, engine="zarr", consolidated=False)
    with open_store(p) as st:
        assert not st.meta.layer_shapes
        for layer in st.meta.layers:
            assert tree["splits/val/layers"][str(layer)].dims == ("sample", "view", "token", "channel")


def test_a_pooled_output_of_another_width_has_its_own_channel_name(tmp_path: Path) -> None:
    import xarray as xr

    meta = StoreMeta(backbone=BackboneMeta("synthetic", "random-init", "1", "ab", None, 1),
                     layout=TokenLayout(1, 0, 0, (1, 2)), layers=(0,), final_norm=False, dtype="float32",
                     dim=4, num_tokens=3)
    p = tmp_path / "s.zarr"
    with create_store(str(p), meta) as st:
        st.add_split(SplitSpec("val", np.zeros(3, np.int64), ["a", "b", "c"], ["x"]), chunk_samples=2)
        st.add_pooled("val", 6)
        for b in range(st.split("val").num_blocks):
            lo, hi = st.block_range("val", b)
            st.write_pooled_block("val", b, np.full((hi - lo, 1, 6), b, np.float32))
            st.write_block("val", 0, b, np.full((hi - lo, 1, 3, 4), b, np.float32))
    tree = xr.open_datatree(p, engine="zarr", consolidated=False)
    assert tree["splits/val"]["pooled"].dims == ("sample", "view", "channel_pooled")
    assert tree["splits/val/layers"]["0"].dims == ("sample", "view", "token", "channel")
    assert _values(tree["splits/val"]["pooled"]).tolist() == [[[0.0] * 6]] * 2 + [[[1.0] * 6]]


def test_a_store_with_the_shared_names_stays_readable(stores: dict[str, Path], tmp_path: Path) -> None:
    """Stores written before the per-layer names: epcache reads them; xarray with drop_variables."""
    import xarray as xr

    old = tmp_path / "old.zarr"
    shutil.copytree(stores["r18"], old)
    for doc in old.glob("splits/*/layers/*/zarr.json"):
        meta = json.loads(doc.read_text())
        meta["dimension_names"] = ["sample", "view", "token", "channel"]
        doc.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="conflicting sizes"):
        xr.open_zarr(old / "splits" / "val" / "layers", consolidated=False)
    with open_store(old) as st, open_store(stores["r18"]) as new:
        assert st.provenance == new.provenance  # dimension names are not in the document
        for layer in st.meta.layers:
            np.testing.assert_array_equal(st.read_tokens("val", layer), new.read_tokens("val", layer))
            others = [str(x) for x in st.meta.layers if x != layer]
            one = xr.open_zarr(old / "splits" / "val" / "layers", consolidated=False, drop_variables=others)
            np.testing.assert_array_equal(_values(one[str(layer)]), new.read_tokens("val", layer))
    assert verify_store(old).ok
    copy = tmp_path / "copy.zarr"  # convert rewrites it with the per-layer names
    convert_store(ConvertConfig(src=old, dst=copy), progress=False)
    layers = xr.open_zarr(copy / "splits" / "val" / "layers", consolidated=False)
    assert layers["0"].dims == ("sample", "view", "token_0", "channel_0")
