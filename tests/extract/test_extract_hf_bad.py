"""Hugging Face sources that cannot be trusted: unreadable data files and image paths that leave the dataset.

A truncated parquet or a corrupt Arrow file is refused naming the file and the fix (one line,
exit 2 on the CLI), or left out with ``--on-bad-image skip`` and recorded. Image cells that hold
only a path are confined to the dataset directory exactly as CSV paths are, unless
``--allow-outside-paths`` says the paths are trusted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, tiny_config
from source_helpers import imagefolder_samples, write_parquet, write_save_to_disk
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.extract import extract_store
from epcache.extract._hf import list_hf
from epcache.store import open_store

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.reliability_bad_input

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 8})


def _cli(data: str, out: Path, *extra: str) -> object:
    args = ["extract", "--model", TINY_VIT, "--random-init", "--model-kwargs", json.dumps(TINY_VIT_KWARGS),
            "--data", data, "--out", str(out), "--split", "train=train", "--workers", "0", "--no-progress",
            "--allow-duplicate", *extra]
    return CliRunner().invoke(app, args)


def _one_line_error(result: object, *needles: str) -> None:
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    text = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text


def test_truncated_parquet_is_refused_naming_the_file_or_skipped_and_recorded(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = tmp_path / "ds"
    write_parquet(folder, "train", ds / "train", files=2)
    cut = ds / "train" / "train-00001-of-00002.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # the footer is gone
    out = tmp_path / "a.zarr"
    with pytest.raises(ConfigError, match=r"train-00001-of-00002\.parquet cannot be read as parquet .*truncated or "
                       r"corrupt.*--on-bad-image skip"):
        extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}), progress=False)
    assert not out.exists()
    _one_line_error(_cli(f"hf:{ds}", out), "train-00001-of-00002.parquet cannot be read", "--on-bad-image skip")
    assert not out.exists()

    capsys.readouterr()
    result = extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}, on_bad_image="skip"), progress=False)
    assert result.status == "complete"
    note = capsys.readouterr().err
    assert "left out 1 unreadable file(s)" in note and "train-00001-of-00002.parquet" in note
    with open_store(out) as store:
        assert store.is_complete()
        assert sorted(store.read_ids("train")) == [f"train/{r:08d}" for r in range(4)]  # the first file's rows
        (recorded,) = store.meta.extra["skipped_files"]["train"]
        assert recorded.startswith("train/train-00001-of-00002.parquet: ")


def test_parquet_with_an_intact_footer_keeps_its_row_ids_and_skips_them(folder: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    write_parquet(folder, "train", ds / "train", files=2)
    broken = ds / "train" / "train-00000-of-00002.parquet"
    md = pq.ParquetFile(broken).metadata
    label = next(i for i in range(md.num_columns) if md.schema.column(i).path == "label")
    data = bytearray(broken.read_bytes())
    at = md.row_group(0).column(label).data_page_offset
    data[at : at + 16] = b"\xff" * 16  # a page header no reader can parse
    broken.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"train-00000-of-00002\.parquet cannot be read as parquet"):
        extract_store(tiny_config(f"hf:{ds}", tmp_path / "a.zarr", splits={"train": "train"}), progress=False)
    out = tmp_path / "b.zarr"
    result = extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}, on_bad_image="skip"), progress=False)
    first = tuple(f"train/{r:08d}" for r in range(4))
    assert tuple(sorted(result.skipped["train"])) == first  # the footer counted them: ids stay, skipped as bad
    with open_store(out) as store:
        assert sorted(store.read_ids("train")) == [f"train/{r:08d}" for r in range(4, 8)]
        assert sorted(store.meta.extra["skipped"]["train"]) == list(first)
        assert "skipped_files" not in store.meta.extra or not store.meta.extra["skipped_files"]


def _two_file_save_to_disk(folder: Path, out: Path) -> Path:
    """A save_to_disk split of two Arrow files (the second a copy of the first), as big datasets have."""
    write_save_to_disk(folder, "train", out)
    shutil.copy(out / "data-00000-of-00001.arrow", out / "data-00001-of-00001.arrow")
    state = json.loads((out / "state.json").read_text())
    state["_data_files"].append({"filename": "data-00001-of-00001.arrow"})
    (out / "state.json").write_text(json.dumps(state))
    return out / "data-00001-of-00001.arrow"


def test_corrupt_arrow_file_is_refused_or_skipped(folder: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    second = _two_file_save_to_disk(folder, ds / "train")
    second.write_bytes(b"this is not an arrow stream" * 40)
    out = tmp_path / "a.zarr"
    with pytest.raises(ConfigError, match=r"data-00001-of-00001\.arrow cannot be read as arrow .*--on-bad-image skip"):
        extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}), progress=False)
    assert not out.exists()
    _one_line_error(_cli(f"hf:{ds}", out), "data-00001-of-00001.arrow cannot be read")

    extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}, on_bad_image="skip"), progress=False)
    with open_store(out) as store:
        assert len(store.read_ids("train")) == 8
        assert list(store.meta.extra["skipped_files"]) == ["train"]
        assert "data-00001-of-00001.arrow" in store.meta.extra["skipped_files"]["train"][0]
    second.write_bytes(b"")  # every file unreadable: nothing to extract, said so
    (ds / "train" / "data-00000-of-00001.arrow").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="no rows that can be read"):
        extract_store(tiny_config(f"hf:{ds}", tmp_path / "c.zarr", splits={"train": "train"}, on_bad_image="skip"),
                      progress=False)


def _path_table(cells: list[str], labels: list[int]) -> object:
    return pa.table({"image": pa.array([{"bytes": None, "path": c} for c in cells], type=IMAGE),
                     "label": pa.array(labels, type=pa.int64())})


@pytest.fixture()
def path_dataset(folder: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """(dataset dir, a directory outside it holding the images, the image names); cells filled per test."""
    samples, _ = imagefolder_samples(folder, "train")
    outside = tmp_path / "elsewhere"
    inside = tmp_path / "ds" / "train" / "imgs"
    outside.mkdir()
    inside.mkdir(parents=True)
    names = []
    for j, (data, ext, _) in enumerate(samples[:4]):
        names.append(f"{j}.{ext}")
        (outside / names[-1]).write_bytes(data)
        (inside / names[-1]).write_bytes(data)
    return tmp_path / "ds", outside, names


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_path_cells_stay_inside_the_dataset_unless_allowed(
    path_dataset: tuple[Path, Path, list[str]], tmp_path: Path, fmt: str
) -> None:
    ds, outside, names = path_dataset

    def write(cells: list[str]) -> None:
        table = _path_table(cells, [0, 1, 2, 0])
        if fmt == "parquet":
            pq.write_table(table, ds / "train" / "x.parquet")
            return
        with pa.OSFile(str(ds / "train" / "data-00000-of-00001.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}
        (ds / "train" / "state.json").write_text(json.dumps(state))

    write([f"imgs/{n}" for n in names])  # relative to the data file, inside the dataset: read
    ok = extract_store(tiny_config(f"hf:{ds}", tmp_path / "in.zarr", splits={"train": "train"}), progress=False)
    assert ok.status == "complete"
    for cells, why in (
        ([str(outside / n) for n in names], "is absolute"),
        ([f"../../elsewhere/{n}" for n in names], "climbs out with '..'"),
    ):
        write(cells)
        out = tmp_path / f"{fmt}-{why[:3]}.zarr"
        with pytest.raises(ConfigError, match=rf"row 0: .*{why}.*--allow-outside-paths"):
            extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}), progress=False)
        with pytest.raises(ConfigError, match=why):  # refused while listing, skip or not: as CSV paths
            extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}, on_bad_image="skip"), progress=False)
        assert not out.exists()
        _one_line_error(_cli(f"hf:{ds}", out), why, "--allow-outside-paths")
        result = extract_store(tiny_config(f"hf:{ds}", out, splits={"train": "train"}, allow_outside_paths=True),
                               progress=False)
        assert result.status == "complete" and not result.skipped.get("train")
        with open_store(out) as store:
            assert len(store.read_ids("train")) == 4 and store.meta.extra["allow_outside_paths"] is True


def test_a_symlink_out_of_the_dataset_is_refused(path_dataset: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    ds, outside, names = path_dataset
    (ds / "train" / "link").symlink_to(outside, target_is_directory=True)
    pq.write_table(_path_table([f"link/{n}" for n in names], [0, 1, 2, 0]), ds / "train" / "x.parquet")
    with pytest.raises(ConfigError, match="symlink that leads outside"):
        extract_store(tiny_config(f"hf:{ds}", tmp_path / "s.zarr", splits={"train": "train"}), progress=False)


def test_the_reader_confines_paths_too(path_dataset: tuple[Path, Path, list[str]]) -> None:
    """The worker-side check: a reader never opens an outside path, even if listing was told otherwise."""
    ds, outside, names = path_dataset
    pq.write_table(_path_table([str(outside / names[0]), f"imgs/{names[1]}"], [0, 1]), ds / "train" / "x.parquet")
    listing = list_hf(ds.resolve(), "train", "train", image_column="image", label_column="label",
                      allow_outside_paths=True)
    assert listing.reader.read(0) == (outside / names[0]).read_bytes()
    listing.reader.allow_outside = False
    with pytest.raises(ConfigError, match="is absolute.*--allow-outside-paths"):
        listing.reader.read(0)
    assert listing.reader.read(1) == (ds / "train" / "imgs" / names[1]).read_bytes()


def test_state_json_naming_a_file_outside_is_refused(folder: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    write_save_to_disk(folder, "train", ds / "train")
    shutil.copy(ds / "train" / "data-00000-of-00001.arrow", tmp_path / "outside.arrow")
    for name in (str(tmp_path / "outside.arrow"), "../../outside.arrow"):
        (ds / "train" / "state.json").write_text(json.dumps({"_data_files": [{"filename": name}]}))
        with pytest.raises(ConfigError, match=r"state\.json: .*outside\.arrow.* data files"):
            extract_store(tiny_config(f"hf:{ds}", tmp_path / "o.zarr", splits={"train": "train"}), progress=False)
