"""Stores shared across a lab carry no absolute host path unless asked (``--record-paths``).

The data root (and a converted store's source) is recorded relative to the store's directory when
reachable with at most ``MAX_CLIMB`` '..' steps, else left out; repair and attention resolve it
against the store, and ask for ``--data ROOT`` in one line when it was left out. Old stores with
absolute paths keep working; no path ever enters the provenance key.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder, read_all, tiny_config
from typer.testing import CliRunner

from epcache.cli import app
from epcache.convert import ConvertConfig, convert_store
from epcache.extract import extract_store, repair_store
from epcache.extract._recorded import MAX_CLIMB, portable_location, recorded_data_root
from epcache.store import open_store
from epcache.store.verify.blocks import mark_blocks_missing

runner = CliRunner()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One data tree and three stores of it: beside it, too deep to reach, and with --record-paths."""
    root = tmp_path_factory.mktemp("lab")
    data = make_imagefolder(root / "data", splits={"train": 8, "val": 4})
    out = {"root": root, "data": data, "near": root / "stores" / "near.zarr",
           "far": root / "a" / "b" / "c" / "far.zarr", "abs": root / "stores" / "abs.zarr"}
    for name in ("near", "far"):
        extract_store(tiny_config(data, out[name], workers=0), progress=False)
    r = runner.invoke(app, ["extract", "--model", TINY_VIT, "--random-init", "--model-kwargs",
                            json.dumps(TINY_VIT_KWARGS), "--data", str(data), "--out", str(out["abs"]),
                            "--workers", "0", "--batch-size", "4", "--chunk-samples", "4", "--no-progress",
                            "--allow-duplicate", "--record-paths"])
    assert r.exit_code == 0, r.output
    return out


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)
    elif isinstance(doc, str):
        yield doc


def _host_paths(store: Path, root: Path) -> list[str]:
    """Absolute strings of the store's metadata document, and any zarr.json of the store naming the test's tree."""
    with open_store(store) as st:
        found = [s for s in _strings(st.meta_document()) if s.startswith("/") or str(root.resolve()) in s]
    for doc in store.rglob("zarr.json"):  # zarr's own documents too ("/" alone is its chunk key separator)
        text = doc.read_text()
        found += [f"{doc.relative_to(store)}: names {r}" for r in {str(root), str(root.resolve())} if r in text]
    return found


def _one_line_error(result: Any, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    text = result.stderr
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text
    return text


def _suggested(text: str) -> list[str]:
    """The command quoted in backticks in an error message, as argv (without the leading `epcache`)."""
    argv = shlex.split(text.split("`")[1])
    assert argv[0] == "epcache"
    return argv[1:]


def test_default_extract_records_no_host_path_and_the_same_provenance(lab: dict[str, Path]) -> None:
    root = lab["root"]
    assert _host_paths(lab["near"], root) == [] and _host_paths(lab["far"], root) == []
    with open_store(lab["near"]) as near, open_store(lab["far"]) as far, open_store(lab["abs"]) as ab:
        assert near.meta.extra["data_root"] == "../data"  # relative to the store's directory
        assert recorded_data_root(near.meta.extra, near.location) == lab["data"].resolve()
        assert "data_root" not in far.meta.extra  # three '..' steps: left out, the dataset name stays
        assert far.meta.dataset["name"] == "data" and far.meta.extra["split_sources"] == {"train": "train",
                                                                                          "val": "val"}
        assert ab.meta.extra["data_root"] == str(lab["data"].resolve())  # --record-paths: absolute as before
        assert _host_paths(lab["abs"], root) != []
        # paths are never part of the key: the three stores hold the same tokens under one provenance
        assert near.provenance == far.provenance == ab.provenance == ab.computed_provenance()
    info = runner.invoke(app, ["info", str(lab["near"])])
    assert f"at {lab['data'].resolve()}" in info.output  # shown resolved against the store


def test_the_relative_root_rule_and_urls() -> None:
    base = Path("/lab/stores/vit")
    assert portable_location("/lab/stores/vit/data", str(base / "s.zarr"), record_paths=False) == "data"
    assert portable_location("/lab/data/in1k", str(base / "s.zarr"), record_paths=False) == "../../data/in1k"
    assert MAX_CLIMB == 2 and portable_location("/home/alice/in1k", str(base / "s.zarr"), record_paths=False) is None
    assert portable_location("/home/alice/in1k", str(base / "s.zarr"), record_paths=True) == "/home/alice/in1k"
    assert portable_location("/lab/data", "s3://bucket/s.zarr", record_paths=False) is None  # no base to start from
    assert portable_location("s3://key:secret@bucket/wds", str(base / "s.zarr"), record_paths=False) == "s3://bucket/wds"


def test_absolute_csv_split_sources_are_recorded_under_the_data_root(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 4, "val": 4})
    files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.*"))
    (data / "lists").mkdir()
    inside, outside = data / "lists" / "train.csv", tmp_path / "val.csv"
    inside.write_text("".join(f"{f},{i % 2}\n" for i, f in enumerate(files[:4])))
    outside.write_text("".join(f"{f},{i % 2}\n" for i, f in enumerate(files[4:])))
    out = tmp_path / "csv.zarr"
    extract_store(tiny_config(data, out, workers=0, splits={"train": str(inside), "val": str(outside)}), progress=False)
    assert _host_paths(out, tmp_path) == []
    with open_store(out) as store:  # the one outside the root is left out: repair would ask for --split val=...
        assert store.meta.extra["split_sources"] == {"train": "lists/train.csv"}


def test_repair_resolves_a_relative_root_against_the_moved_store(lab: dict[str, Path], tmp_path: Path) -> None:
    moved = tmp_path / "share"  # the whole tree moved (another mount, another user): stores and data together
    shutil.copytree(lab["near"], moved / "stores" / "near.zarr")
    shutil.copytree(lab["data"], moved / "data")
    store = moved / "stores" / "near.zarr"
    with open_store(store, "a") as st:
        mark_blocks_missing(st, [("train", 1, 0), ("val", 0, 0)])
    result = repair_store(store, workers=0, progress=False)  # no --data: "../data" beside the moved store
    assert result.after.ok and result.blocks == (("train", 0), ("val", 0))
    clean, repaired = read_all(lab["near"]), read_all(store)
    assert all(repaired[k].tobytes() == v.tobytes() for k, v in clean.items())


@pytest.mark.reliability_bad_input
def test_repair_of_a_store_without_a_root_asks_for_data_in_one_line(lab: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "far.zarr"
    shutil.copytree(lab["far"], copy)
    with open_store(copy, "a") as st:
        mark_blocks_missing(st, [("val", 1, 0)])
    r = runner.invoke(app, ["verify", str(copy), "--repair", "--workers", "0", "--no-progress"])
    text = _one_line_error(r, "does not record where its images are", "--record-paths")
    assert _suggested(text) == ["verify", str(copy), "--repair", "--data", "ROOT"]
    r = runner.invoke(app, ["verify", str(copy), "--repair", "--data", str(lab["data"]), "--workers", "0",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert read_all(copy)[("val", 1)].tobytes() == read_all(lab["far"])[("val", 1)].tobytes()


def test_old_stores_with_absolute_roots_keep_working(lab: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "abs.zarr"  # an absolute record does not care where the store went
    shutil.copytree(lab["abs"], copy)
    with open_store(copy, "a") as st:
        mark_blocks_missing(st, [("train", 0, 1)])
    result = repair_store(copy, workers=0, progress=False)
    assert result.after.ok and result.blocks == (("train", 1),)
    info = runner.invoke(app, ["info", str(copy)])
    assert f"at {lab['data'].resolve()}" in info.output


def test_attention_finds_images_by_the_relative_root_and_asks_for_data_without_one(
    lab: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from epcache.probe import ProbeConfig, probe_store
    from epcache.report import _attention

    assert _attention._default_data_root(str(lab["near"]), "run", "x") == lab["data"].resolve()
    run = tmp_path / "run"
    res = probe_store(ProbeConfig(store=str(lab["far"]), head="ep", tokens="patch", queries=(2,), epochs=1, warmup=0,
                                  batch_size=4, lr=(0.01,), optimizer=("adamw",), holdout=0.0, device="cpu",
                                  out=str(run)),
                      progress=False)
    ep = res.rows[0]["id"]
    r = runner.invoke(app, ["attention", str(run), "--config", ep[:10], "--images", "2", "--out", str(tmp_path / "a")])
    text = _one_line_error(r, "does not record where its images are")
    assert _suggested(text) == ["attention", str(run), "--config", ep[:10], "--data", "ROOT"]
    assert not (tmp_path / "a").exists()  # refused before anything was computed or written
    drawn: dict[str, Any] = {}
    real = _attention.attention_figure

    def spy(maps: list[np.ndarray], pictures: list[np.ndarray | None], *args: Any, **kw: Any) -> Any:
        drawn["pictures"] = pictures
        return real(maps, pictures, *args, **kw)

    monkeypatch.setattr(_attention, "attention_figure", spy)
    r = runner.invoke(app, ["attention", str(run), "--config", ep[:10], "--images", "2", "--data", str(lab["data"]),
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert len(drawn["pictures"]) == 2 and all(p is not None for p in drawn["pictures"])


def test_convert_records_its_source_and_root_relative_to_the_copy(lab: dict[str, Path], tmp_path: Path) -> None:
    near, far, absolute = tmp_path / "near_last.zarr", tmp_path / "a" / "b" / "c" / "last.zarr", tmp_path / "abs.zarr"
    convert_store(ConvertConfig(src=lab["near"], dst=near, layers="last"), progress=False)
    convert_store(ConvertConfig(src=lab["near"], dst=far, layers="last"), progress=False)
    r = runner.invoke(app, ["convert", str(lab["near"]), str(absolute), "--layers", "last", "--record-paths",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert _host_paths(near, tmp_path) == [] and _host_paths(far, tmp_path) == []
    with open_store(near) as c, open_store(far) as f, open_store(absolute) as a:
        where = c.meta.extra["derived_from"]
        assert where["name"] == "near.zarr" and (near.parent / where["location"]).resolve() == lab["near"].resolve()
        assert recorded_data_root(c.meta.extra, c.location) == lab["data"].resolve()  # rebased onto the copy
        assert "location" not in f.meta.extra["derived_from"] and "data_root" not in f.meta.extra
        assert f.meta.extra["derived_from"]["name"] == "near.zarr"
        assert a.meta.extra["derived_from"]["location"] == str(lab["near"].resolve())
        assert a.meta.extra["data_root"] == str(lab["data"].resolve())
        assert c.provenance == f.provenance == a.provenance == a.computed_provenance()
    assert f"derived     from {lab['near'].resolve()}" in runner.invoke(app, ["info", str(near)]).output
    assert "derived     from near.zarr" in runner.invoke(app, ["info", str(far)]).output
