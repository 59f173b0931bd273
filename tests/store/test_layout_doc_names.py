"""cache_layout.md §4.3 names every lock and leftover file a writer makes: the code's names must be the doc's.

Other labs' tools skip these hidden files by name (a lab-wide sync, a cleanup script), so a
rename in the code without the document is a silent break for them.
"""

from __future__ import annotations

from pathlib import Path

from epcache.convert._lock import CONVERT_LOCK_PREFIX
from epcache.probe.rundir import RUN_LOCK_PREFIX
from epcache.store.ops.lock import LOCK_NAME, lock_location
from epcache.store.ops.swap import STAGING_PREFIX

DOC = Path(__file__).resolve().parents[2] / "cache_layout.md"


def _section_43() -> str:
    text = DOC.read_text(encoding="utf-8")
    return " ".join(text.split("### 4.3 Writer lock", 1)[1].split("## 5.", 1)[0].split())


def test_lock_and_leftover_names_are_the_documented_ones(tmp_path: Path) -> None:
    doc = _section_43()
    assert f"`<store>/{LOCK_NAME}`" in doc
    assert lock_location(str(tmp_path / "s.zarr")).endswith(f"s.zarr/{LOCK_NAME}")
    assert lock_location(str(tmp_path / "s.h5")).endswith("s.h5.lock") and "`<file>.lock`" in doc
    assert f"(`{RUN_LOCK_PREFIX}.lock`, or `{RUN_LOCK_PREFIX}.shard-I-of-N.lock` per shard)" in doc
    assert f"`{CONVERT_LOCK_PREFIX}<name>.lock`" in doc
    assert f"`{STAGING_PREFIX}<name>`" in doc
