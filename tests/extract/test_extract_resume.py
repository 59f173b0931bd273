"""Resume: a run killed at any moment and re-run yields the bytes of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, read_all, tiny_config

from epcache.errors import ProvenanceMismatchError, StoreNotFoundError
from epcache.extract import extract_store
from epcache.store import open_store

# The child process is a real extraction; a sleep hook on the patch embedding (one call per
# batch) makes it slow enough that the kill lands mid-run instead of after the last block.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import timm
    _create = timm.create_model
    def slow_create(*args, **kwargs):
        model = _create(*args, **kwargs)
        if not str(next(model.parameters()).device) == "meta":
            model.patch_embed.register_forward_pre_hook(lambda *_: time.sleep(0.15))
        return model
    timm.create_model = slow_create
    from epcache.extract import ExtractConfig, extract_store
    extract_store(ExtractConfig(
        model={model!r}, data=Path({data!r}), out={out!r}, splits={{"train": "train", "val": "val"}},
        random_init=True, model_kwargs={kwargs!r}, views=1, batch_size=4, workers=0, chunk_samples=4,
    ), progress=False)
    """
)


def _written_blocks(path: Path) -> int:
    try:
        with open_store(path) as store:
            return sum(store.split(s).num_blocks - len(store.missing_blocks(s)) for s in store.splits)
    except Exception:  # not created yet, or caught between two metadata writes
        return 0


@pytest.mark.slow  # a child process extracting, killed mid-run, then the resumed run
def test_killed_run_resumes_to_identical_bytes(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 40, "val": 8})
    out = tmp_path / "killed.zarr"
    code = _CHILD.format(model=TINY_VIT, data=str(data), out=str(out), kwargs=TINY_VIT_KWARGS)
    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _written_blocks(out) < 2:
            assert child.poll() is None, f"child ended early: {child.stderr.read().decode() if child.stderr else ''}"
            assert time.monotonic() < deadline, "child never wrote a block"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    with open_store(out) as store:
        assert not store.is_complete()  # the kill landed mid-run
        done_before = {s: store.split(s).num_blocks - len(store.missing_blocks(s)) for s in store.splits}
    assert sum(done_before.values()) >= 2

    cfg = tiny_config(data, out, views=1, break_lock=True)
    result = extract_store(cfg, progress=False)
    assert result.status == "complete" and result.resumed
    assert sum(result.samples.values()) < 48 + 0  # only the missing blocks were extracted

    reference = tiny_config(data, tmp_path / "clean.zarr", views=1)
    extract_store(reference, progress=False)
    resumed, clean = read_all(out), read_all(reference.out)
    assert resumed.keys() == clean.keys()
    for key, arr in clean.items():
        assert resumed[key].dtype == arr.dtype
        assert resumed[key].tobytes() == arr.tobytes(), key
    with open_store(out) as a, open_store(reference.out) as b:
        assert a.is_complete() and a.provenance == b.provenance
        for s in b.splits:
            for layer in b.meta.layers:
                np.testing.assert_array_equal(a.block_records(s, layer), b.block_records(s, layer))


def test_finished_store_is_left_alone(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 5})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"})
    first = extract_store(cfg, progress=False)
    before = read_all(cfg.out)
    again = extract_store(dataclasses.replace(cfg, batch_size=2, workers=1), progress=False)  # speed knobs only
    assert again.status == "already-complete" and again.provenance == first.provenance
    assert "already complete" in again.format_text()
    after = read_all(cfg.out)
    assert all(np.array_equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"layers": "last"}, "layers"),
        ({"dtype": "float32"}, "dtype"),
        ({"final_norm": True}, "final_norm"),
        ({"img_size": 48, "model_kwargs": {"depth": 2}}, "layout"),
        ({"seed": 1}, "backbone"),  # random init is seeded: other seed, other weights
    ],
)
def test_other_configuration_into_existing_store_is_refused(tmp_path: Path, change: dict, field: str) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 3})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"})
    extract_store(cfg, progress=False)
    other = dataclasses.replace(cfg, **change)
    with pytest.raises(ProvenanceMismatchError, match=rf"{field}.*--overwrite"):
        extract_store(other, progress=False)
    replaced = extract_store(dataclasses.replace(other, overwrite=True), progress=False)
    assert replaced.status == "complete" and not replaced.resumed


def test_changed_images_are_refused(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"val": 3})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"})
    extract_store(cfg, progress=False)
    (data / "val" / "cat" / "img_0000.jpg").rename(data / "val" / "dog" / "img_0000.jpg")  # relabelled
    with pytest.raises(ProvenanceMismatchError, match=r"split 'val'.*ids_sha256, labels_sha256"):
        extract_store(cfg, progress=False)


def test_resume_needs_a_store_and_new_splits_are_added(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 4, "val": 3})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"}, resume=True)
    with pytest.raises(StoreNotFoundError, match="no store at .* to resume"):
        extract_store(cfg, progress=False)
    assert not Path(cfg.out).exists()
    extract_store(dataclasses.replace(cfg, resume=False), progress=False)
    both = extract_store(dataclasses.replace(cfg, splits={"val": "val", "train": "train"}), progress=False)
    assert both.resumed and both.samples == {"train": 4}
    with open_store(cfg.out) as store:
        assert set(store.splits) == {"val", "train"} and store.is_complete()


def test_resume_uses_the_existing_model_name_and_kwargs(tmp_path: Path) -> None:
    """Model kwargs are provenance: the same architecture with other kwargs is another network."""
    data = make_imagefolder(tmp_path / "data", splits={"val": 2})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"val": "val"})
    extract_store(cfg, progress=False)
    with open_store(cfg.out) as store:
        assert store.meta.preprocessing["model_kwargs"] == TINY_VIT_KWARGS
    other = dataclasses.replace(cfg, model_kwargs={**TINY_VIT_KWARGS, "qkv_bias": False})
    with pytest.raises(ProvenanceMismatchError):
        extract_store(other, progress=False)
