"""Readers during an append: a store stays readable while a writer adds a split, never half-written.

cache_layout.md §3.3: a split appears in the metadata only after its arrays exist, and a block's
record is set only after its bytes are durable. A reader that trusts the metadata and the records
therefore never sees partial data, whatever moment it looks at.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from scale_helpers import TINY_VIT, child_env, make_imagefolder

from epcache.extract import ExtractConfig, extract_store
from epcache.store import open_store
from epcache.store.layout.chunking import MISSING
from epcache.store.layout.crc import block_checksum
from epcache.store.ops.lock import read_store_lock

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parents[2] / "helpers"  # slow_extract.py; the children run there
CLI = ["extract", "--model", TINY_VIT, "--random-init", "--img-size", "32", "--layers", "-2:", "--batch-size", "4",
       "--chunk-samples", "4", "--shard-samples", "8", "--workers", "0", "--no-progress"]


def test_reader_sees_only_listed_splits_and_recorded_blocks_during_an_append(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 40, "val": 8})
    out = tmp_path / "s.zarr"
    first = ExtractConfig(model=TINY_VIT, data=data, out=out, splits={"val": "val"}, random_init=True, img_size=32,
                          layers="-2:", batch_size=4, chunk_samples=4, shard_samples=8, workers=0)
    extract_store(first, progress=False)  # the same configuration as CLI, with only the val split
    with open_store(out) as store:
        val_before = {layer: store.read_tokens("val", layer).tobytes() for layer in store.meta.layers}

    cmd = [sys.executable, str(HERE / "slow_extract.py"), *CLI, "--split", "val=val", "--split", "train=train",
           "--data", str(data), "--out", str(out)]
    writer = subprocess.Popen(cmd, cwd=HERE, env=child_env(PID_DIR=str(tmp_path), SLOW_S="0.15"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen_partial = checked_blocks = 0
    try:
        deadline = time.monotonic() + 120
        while writer.poll() is None:
            assert time.monotonic() < deadline, "the writer did not finish"
            with open_store(out) as store:  # a fresh reader each time, as another user's process would be
                assert {layer: store.read_tokens("val", layer).tobytes() for layer in store.meta.layers} == val_before
                if "train" not in store.splits:  # not added yet: nothing of it is visible
                    continue
                holder = read_store_lock(out)  # read before the records: None means the writer is done
                written = 0
                for layer in store.meta.layers:
                    records = store.block_records("train", layer)
                    for block in (records != MISSING).nonzero()[0].tolist():
                        start, stop = store.block_range("train", block)
                        assert block_checksum(store.read_tokens("train", layer, start, stop)) == records[block]
                        checked_blocks += 1
                        written += 1
                if 0 < written < store.split("train").num_blocks * len(store.meta.layers):
                    seen_partial += 1
                    assert holder is not None  # the writer holds the lock while blocks are missing
        _, err = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
        if writer.stderr is not None and not writer.stderr.closed:
            writer.communicate()  # reaps it and closes the pipe when an assertion failed above
    assert writer.returncode == 0, err
    assert seen_partial > 0 and checked_blocks > 0  # the reader really looked while blocks were landing
    with open_store(out) as store:
        assert store.is_complete() and set(store.splits) == {"val", "train"}
    assert read_store_lock(out) is None
