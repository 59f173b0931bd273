"""`epcache convert` keeps the top-level document keys a third-party writer added (cache_layout.md §2.4).

The copy's document is the source's with the converted fields changed, so a key epcache does not
model (a lab's own ``lab_notes``) is copied as it is, and stays inside the copy's provenance key
(§2.3). Keys epcache does model are the copy's own: a source's ``quantization`` is not carried into
a copy decoded with ``--quantize none``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from epcache.convert import ConvertConfig, convert_store
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store, open_store, verify_store
from epcache.store.layout.provenance import provenance_of_document

NOTES = {"lab_notes": {"by": "lab pipeline", "run": 7, "caf\u00e9": [1.5, None]}, "zz_flag": True}


def make_source(path: Path, quantization: str | None) -> None:
    """A small store, then a writer's own top-level keys added to its document (provenance recomputed)."""
    meta = StoreMeta(
        backbone=BackboneMeta("synthetic", "checkpoint", "1", "ab" * 32, "w.safetensors", 2),
        layout=TokenLayout(1, 0, 0, (2, 2)), layers=(0, 1), final_norm=False, dtype="float16",
        dim=8, num_tokens=5, quantization=quantization,
    )
    x = np.random.default_rng(0).standard_normal((10, 1, 5, 8)).astype(np.float16)
    with create_store(str(path), meta) as st:
        st.add_split(SplitSpec("val", np.arange(10) % 2, [f"v/{i}" for i in range(10)], ["a", "b"]), chunk_samples=4)
        for layer in meta.layers:
            for b in range(st.split("val").num_blocks):
                lo, hi = st.block_range("val", b)
                st.write_block("val", layer, b, x[lo:hi])
    doc = {**read_document(path), **NOTES}
    doc["provenance"] = provenance_of_document(doc)
    if path.suffix == ".zarr":
        zarr.open_group(str(path), mode="r+").attrs["epcache"] = doc
    else:
        with h5py.File(path, "r+") as f:
            f.attrs["epcache"] = json.dumps(doc)


def read_document(path: Path) -> dict:
    if path.suffix == ".zarr":
        return dict(zarr.open_group(str(path), mode="r").attrs["epcache"])
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["epcache"])


@pytest.mark.parametrize(("src_fmt", "dst_fmt", "quantization", "options"), [
    ("zarr", "zarr", None, {}),  # a plain copy
    ("zarr", "h5", None, {"layers": "last", "dtype": "float32"}),
    ("h5", "zarr", "int8-channel", {"quantize": "none", "pool_patches": 2}),
])
def test_convert_keeps_a_writers_top_level_keys(tmp_path: Path, src_fmt: str, dst_fmt: str,
                                                quantization: str | None, options: dict) -> None:
    src, dst = tmp_path / f"src.{src_fmt}", tmp_path / f"dst.{dst_fmt}"
    make_source(src, quantization)
    with open_store(str(src)) as s:
        assert s.provenance == s.computed_provenance()  # the source's document is unedited
        source_key = s.provenance
    result = convert_store(ConvertConfig(src=src, dst=dst, **options), progress=False)
    doc = read_document(dst)
    for key, value in NOTES.items():
        assert doc[key] == value
    assert doc["derived_from"]["provenance"] == source_key
    assert "quantization" not in doc and doc["format_version"] == "1.1"  # modelled keys are the copy's own
    assert doc["provenance"] == provenance_of_document(doc) == result.provenance  # unedited, keys inside
    without = {k: v for k, v in doc.items() if k not in NOTES}
    assert provenance_of_document(without) != doc["provenance"]
    with open_store(str(dst)) as d:
        assert d.provenance == d.computed_provenance()
    assert verify_store(dst).ok
    again = tmp_path / f"again.{dst_fmt}"  # a copy of the copy keeps them too
    convert_store(ConvertConfig(src=dst, dst=again), progress=False)
    assert {k: read_document(again)[k] for k in NOTES} == NOTES
