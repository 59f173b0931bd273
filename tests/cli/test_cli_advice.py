"""Every error that suggests a command suggests one that works as written."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner
from verify_helpers import chunk_file, flip_byte, make_imagefolder

from epcache.cli import app

runner = CliRunner()
TINY = ["--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32", "--workers", "0", "--no-progress",
        "--model-kwargs", '{"depth": 2, "patch_size": 8}', "--layers", "all"]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("advice")
    data = make_imagefolder(root / "data", splits={"train": 8, "val": 4}, seed=3)
    store = root / "stores" / "a.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(store), "--chunk-samples", "4"])
    assert r.exit_code == 0, r.output
    return data, store


def _suggested(output: str) -> list[str]:
    """The command quoted in backticks in an error message, as argv (without the leading `epcache`)."""
    quoted = output.split("`")[1]
    argv = shlex.split(quoted)
    assert argv[0] == "epcache", output
    return argv[1:]


def test_checksum_error_suggests_a_repair_that_works(extracted: tuple[Path, Path], tmp_path: Path) -> None:
    data, store = extracted
    copy = tmp_path / "stores" / "b.zarr"
    shutil.copytree(store, copy)
    (tmp_path / "data").symlink_to(data)  # the store records its root as ../data, relative to itself
    flip_byte(chunk_file(copy, "train", 0, 1), 3)
    r = runner.invoke(app, ["probe", "--store", str(copy), "--head", "linear", "--layers", "0", "--epochs", "1",
                            "--warmup", "0", "--batch-size", "4", "--lr", "1e-3", "--holdout", "0", "--no-progress"])
    assert r.exit_code == 2 and "crc32c" in r.output, r.output
    argv = _suggested(r.output)
    assert argv[:3] == ["verify", str(copy), "--repair"]
    fixed = runner.invoke(app, [*argv, "--workers", "0", "--no-progress"])  # as written: the store knows its data
    assert fixed.exit_code == 0, fixed.output
    assert runner.invoke(app, ["verify", str(copy), "--no-progress"]).exit_code == 0


def test_verify_fix_line_names_the_store_and_repair_without_data(
    extracted: tuple[Path, Path], tmp_path: Path
) -> None:
    data, store = extracted
    copy = tmp_path / "c.zarr"
    shutil.copytree(store, copy)
    flip_byte(chunk_file(copy, "val", 1, 0), 5)
    r = runner.invoke(app, ["verify", str(copy), "--no-progress"])
    assert r.exit_code == 1
    fix = next(line for line in r.output.splitlines() if line.startswith("fix:"))
    assert _suggested(fix) == ["verify", str(copy), "--repair"]
    # the store records its data root; once the images move, the error asks for --data with a usable command
    meta = json.loads((copy / "zarr.json").read_text())
    meta["attributes"]["epcache"]["extra"]["data_root"] = str(tmp_path / "moved")
    (copy / "zarr.json").write_text(json.dumps(meta))
    r = runner.invoke(app, ["verify", str(copy), "--repair", "--workers", "0", "--no-progress"])
    assert r.exit_code == 2 and "records no data root" in r.output
    assert _suggested(r.output) == ["verify", str(copy), "--repair", "--data", "ROOT"]
    r = runner.invoke(app, ["verify", str(copy), "--repair", "--data", str(data), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output


def test_duplicate_refusal_quotes_the_provenance_info_shows(extracted: tuple[Path, Path]) -> None:
    data, store = extracted
    twin = store.parent / "twin.zarr"
    r = runner.invoke(app, ["extract", *TINY, "--data", str(data), "--out", str(twin), "--chunk-samples", "4"])
    assert r.exit_code == 2 and not twin.exists()
    info = runner.invoke(app, ["info", str(store), "--json"])
    provenance = json.loads(info.stdout)["provenance"]
    assert f"provenance {provenance[:16]}" in r.output
    assert _suggested(r.output) == ["info", str(store)]
    assert "--allow-duplicate" in r.output


def test_report_of_a_store_says_how_to_make_a_rundir(extracted: tuple[Path, Path], tmp_path: Path) -> None:
    _, store = extracted
    r = runner.invoke(app, ["report", str(store)])
    assert r.exit_code == 2 and "is a feature store, not a run directory" in r.output
    assert _suggested(r.output) == ["probe", "--store", str(store), "--out", "RUNDIR"]
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "--out RUNDIR" in r.output and "probe --out " + str(tmp_path) not in r.output


def test_ls_and_info_json_name_the_same_facts_the_same_way(extracted: tuple[Path, Path]) -> None:
    data, store = extracted
    text = runner.invoke(app, ["info", str(store)]).output
    assert "model       depth=2, patch_size=8; input 32 px" in text  # the model as recorded, not just its name
    assert f"at {data.resolve()}" in text  # where repair and attention look for the images
    info = json.loads(runner.invoke(app, ["info", str(store), "--json"]).stdout)
    (entry,) = [e for e in json.loads(runner.invoke(app, ["ls", str(store.parent), "--json"]).stdout)
                if e["location"] == str(store)]
    shared = set(entry) - {"error"}
    assert shared <= set(info), sorted(shared - set(info))  # every fact ls gives, info gives under that name
    for key in shared - {"splits", "writer"}:
        assert info[key] == entry[key], key
    for a, b in zip(info["splits"], entry["splits"], strict=True):
        assert {k: a[k] for k in b} == b
    assert info["weights_source"] == "random-init" and len(info["weights_sha256"]) == 64
