"""The store side of taps (cache_layout.md §2.7): the ``taps``/``tap`` keys, the names, nested stores."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from epcache.errors import ConfigError
from epcache.store import BackboneMeta, StoreMeta, TokenLayout, create_store, open_store
from epcache.store.layout.provenance import compute_provenance
from epcache.store.layout.taps import GAP_KEEP, TAPS, TapSpec, parse_taps, tap_location, tap_record


def _meta(**changes: object) -> StoreMeta:
    meta = StoreMeta(
        backbone=BackboneMeta("vit_test", "random-init", "1.0", "random-init", None, 2),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(2, 2)),
        layers=(0, 1), final_norm=False, dtype="float32", dim=4, num_tokens=5,
    )
    return dataclasses.replace(meta, **changes)


def test_documents_without_taps_are_unchanged_and_the_keys_round_trip() -> None:
    plain = _meta()
    doc = plain.to_json()
    assert "taps" not in doc and "tap" not in doc
    parent = _meta(taps={"mlp_hidden": {"dim": 16, "keep": None}})
    tap = _meta(dim=16, tap=tap_record(TapSpec("mlp_hidden")))
    for meta in (plain, parent, tap):
        assert StoreMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta
    assert tap.to_json()["tap"] == {"name": "mlp_hidden", "module": "blocks.{layer}.mlp.act", "keep": None}


def test_the_tap_record_and_the_parent_listing_are_inside_the_provenance_key() -> None:
    keys = {
        compute_provenance(_meta(), {}),
        compute_provenance(_meta(taps={"attn_norm": {"dim": 4, "keep": None}}), {}),
        compute_provenance(_meta(tap=tap_record(TapSpec("attn_norm"))), {}),
        compute_provenance(_meta(tap=tap_record(TapSpec("attn_out"))), {}),
        compute_provenance(_meta(tap=tap_record(TapSpec("attn_norm", GAP_KEEP))), {}),
    }
    assert len(keys) == 5  # equal shapes, other values: never one key


def test_parse_taps_names_and_refusals() -> None:
    assert parse_taps(None) == parse_taps("block") == ()
    assert parse_taps(" mlp_hidden:gap, block ,attn_out") == (TapSpec("attn_out"), TapSpec("mlp_hidden", GAP_KEEP))
    assert [t.module for t in parse_taps(",".join(TAPS))] == [
        "blocks.{layer}.attn", "blocks.{layer}.norm2", "blocks.{layer}.mlp.act", "blocks.{layer}.mlp"]
    for bad, words in [("mlp", "unknown tap 'mlp'"), ("attn_out:cls", "':gap'"), ("attn_out,attn_out", "twice"),
                       ("block:gap", "block")]:
        with pytest.raises(ConfigError, match=words):
            parse_taps(bad)
    assert tap_location("s3://bucket/s.zarr/", "attn_out") == "s3://bucket/s.zarr/taps/attn_out"


def test_a_nested_tap_store_opens_through_its_parent(tmp_path: Path) -> None:
    from epcache.store import SplitSpec

    out = tmp_path / "s.zarr"
    spec = SplitSpec("val", labels=np.array([0, 1, 0]), ids=["a", "b", "c"], classes=["x", "y"])
    with create_store(out, _meta(taps={"attn_out": {"dim": 4, "keep": None}})) as parent:
        parent.add_split(spec)
    tap_meta = _meta(tap=tap_record(TapSpec("attn_out")))
    with create_store(tap_location(str(out), "attn_out"), tap_meta) as tap:
        tap.add_split(spec)
        tap.write_block("val", 1, 0, np.full((3, 1, 5, 4), 2.5, np.float32))
    with open_store(out) as parent, open_store(out, tap="attn_out") as tap:
        assert parent.meta.tap is None and tap.meta.tap == tap_meta.tap
        assert tap.read_ids("val") == parent.read_ids("val")
        assert np.all(tap.read_tokens("val", 1) == 2.5) and tap.provenance != parent.provenance
    with pytest.raises(ConfigError, match="re-extract with `--taps mlp_out`"):
        open_store(out, tap="mlp_out")
