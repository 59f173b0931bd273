"""A sharded split's block record must agree with its chunks, for probe's reads as for `epcache verify`.

In a format-1.1 sharded split each chunk has its own record (``chunk_records``), which probe's read
checks compare every chunk with; the shard's own record is the chunks' records combined
(cache_layout.md §3.3). An edited shard record leaves every chunk record intact, so it has to be
compared too: verify (which hashes the whole shard against it) and probe must both refuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from corrupt_helpers import copy, edit_vector, probe, verify, write
from test_quantized import make

from epcache.errors import CorruptStoreError
from epcache.store import open_store, verify_store

pytestmark = pytest.mark.reliability_corruption


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("sharded") / "s.zarr", shard=16)  # train: 2 shards of 4 chunks


def _forge(block: int, value: int | None = None) -> object:
    def edit(r: np.ndarray) -> np.ndarray:
        r = r.copy()
        r[block] = (int(r[block]) ^ 0x5A5A) if value is None else value
        return r

    return edit


@pytest.mark.parametrize(
    ("block", "value", "verify_says"),
    [
        (0, None, "checksum: crc32c of the stored bytes"),  # another crc32c
        (1, None, "checksum: crc32c of the stored bytes"),
        (1, 2**40, "bad-record: record 1099511627776 is neither -1 nor a crc32c"),  # not a crc32c at all
    ],
)
def test_an_edited_shard_record_fails_verify_and_probe(
    sharded: Path, tmp_path: Path, block: int, value: int | None, verify_says: str
) -> None:
    store = copy(sharded, tmp_path / "s.zarr")
    edit_vector(store, "train", "records/1", _forge(block, value))
    code, out = verify(store)
    assert code == 1 and verify_says in out and f"block={block}" in out, out
    code, out = probe(store, "--out", str(tmp_path / "run"))
    assert code == 2, out
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1 and "Traceback" not in out, out
    rows = f"rows {16 * block}-{16 * block + 16}"
    assert f"the record of shard {block} ({rows}) of 'train' layer 1 disagrees with its per-chunk records" in out
    assert "--repair" in out, out
    assert not (tmp_path / "run" / "results.jsonl").exists()


def test_every_read_of_the_shard_is_refused_and_the_other_shard_reads(sharded: Path, tmp_path: Path) -> None:
    store = copy(sharded, tmp_path / "s.zarr")
    edit_vector(store, "train", "records/1", _forge(1))
    with open_store(store, verify_reads=True) as st:
        for chunk in range(4):  # shard 0 is intact
            st.read_chunk("train", 1, chunk)
        for chunk in range(4, 8):  # any chunk of shard 1, read first or not
            with pytest.raises(CorruptStoreError, match="the record of shard 1 "):
                st.read_chunk("train", 1, chunk)
        with pytest.raises(CorruptStoreError, match="the record of shard 1 "):
            list(st.read_chunks("train", 1, [7, 0]))
    with open_store(store, verify_reads=False) as st:  # --trust-store: not checked
        st.read_chunk("train", 1, 4)


@pytest.mark.parametrize("scheme", ["int8-channel", "int8-token", "fp8-e4m3"])
def test_quantised_shards_combine_codes_and_scales(tmp_path: Path, scheme: str) -> None:
    """The combined record covers each chunk's codes and its scales: intact shards read, a forged one fails."""
    store = tmp_path / "q.zarr"
    make(store, scheme, shard=8)  # 37 samples: shards of 2 chunks, the last chunk partial
    assert verify_store(store).ok
    with open_store(store, verify_reads=True) as st:
        for chunk in range(st.split("train").num_chunks):
            st.read_chunk("train", 0, chunk)
    edit_vector(store, "train", "records/0", _forge(4))
    with open_store(store, verify_reads=True) as st:
        st.read_chunk("train", 0, 0)
        with pytest.raises(CorruptStoreError, match="the record of shard 4 "):
            st.read_chunk("train", 0, 9)
