"""Security basics: nothing is unpickled, metadata size is bounded before parsing, paths stay in their root."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from verify_helpers import copy_store, make_imagefolder, tiny_config

import epcache
from epcache.cli import app
from epcache.errors import ConfigError, CorruptStoreError
from epcache.extract import extract_store
from epcache.store import open_store, verify_store
from epcache.store.layout.metadoc import MAX_META_BYTES, parse_meta_json

runner = CliRunner()
PACKAGE = Path(epcache.__file__).parent
_UNSAFE_MODULES = {"dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # x.to(d).eval() is a method, not eval
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """Deserialisation that can run code, found by reading the source (not by grepping comments)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {n}") for n in names if n.split(".")[0] in _UNSAFE_MODULES]
            if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                found.append((node.lineno, "from pickle import ..."))
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name in ("pickle.load", "pickle.Unpickler", "_pickle.load", "cPickle.load", "cPickle.loads"):
            found.append((node.lineno, name))
        elif name == "pickle.loads":  # only a self round-trip of in-process bytes: pickle.loads(pickle.dumps(x))
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, ast.Call) and _call_name(arg) == "pickle.dumps"):
                found.append((node.lineno, name))
        elif name == "torch.load":
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("np.load", "numpy.load"):
            ap = _kw(node, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append((node.lineno, f"{name}(allow_pickle=...)"))
        elif name == "yaml.load" and _kw(node, "Loader") is None:
            found.append((node.lineno, "yaml.load without a safe Loader"))
        elif name in ("eval", "exec", "builtins.eval", "builtins.exec") or name.startswith("numcodecs.Pickle"):
            found.append((node.lineno, name))
    return found


def test_no_pickle_or_code_execution_when_loading_anything() -> None:
    offenders = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        for line, what in _unsafe_calls(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not offenders, "unsafe deserialisation:\n" + "\n".join(offenders)


def test_the_scanner_sees_what_it_must_refuse() -> None:
    bad = """
import pickle, dill
from pickle import loads
pickle.load(f); pickle.loads(data); torch.load(p); torch.load(p, weights_only=False)
np.load(p, allow_pickle=True); yaml.load(s); eval(s); exec(s)
"""
    good = (
        "pickle.loads(pickle.dumps(e)); torch.load(p, weights_only=True); np.load(p); x.eval(); m.to(d).eval(); "
        "ast.literal_eval(s); np.load(p, allow_pickle=False)"
    )
    assert len(_unsafe_calls(ast.parse(bad))) == 10
    assert _unsafe_calls(ast.parse(good)) == []


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("security")
    data = make_imagefolder(root / "data", splits={"val": 4})
    out = {"data": data}
    for suffix in ("zarr", "h5"):
        path = root / suffix / f"s.{suffix}"
        extract_store(tiny_config(data, path, splits={"val": "val"}), progress=False)
        out[suffix] = path
    return out


def _huge_doc(path: Path) -> dict:
    with open_store(path) as st:
        doc = st.meta_document()
    doc["extra"]["pad"] = "x" * (MAX_META_BYTES + 1024)
    return doc


def test_metadata_over_the_limit_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(1))
    with pytest.raises(CorruptStoreError, match="refusing to parse"):
        parse_meta_json("{" + " " * MAX_META_BYTES + "}", "s.h5")
    assert not calls


def test_huge_hdf5_metadata_attribute_is_refused(stores: dict[str, Path], tmp_path: Path) -> None:
    import h5py

    b = copy_store(stores["h5"], tmp_path / "b" / "s.h5")
    doc = _huge_doc(b)
    with h5py.File(b, "r+") as f:
        f.attrs["epcache"] = json.dumps(doc)
    with pytest.raises(CorruptStoreError, match=rf"limit {MAX_META_BYTES}"):
        open_store(b)
    r = runner.invoke(app, ["verify", str(b), "--no-progress"])
    assert r.exit_code == 1 and "refusing to parse" in r.output


def test_verify_refuses_a_huge_zarr_root_document_without_parsing_it(stores: dict[str, Path], tmp_path: Path) -> None:
    b = copy_store(stores["zarr"], tmp_path / "b" / "s.zarr")
    (b / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                             "attributes": {"epcache": _huge_doc(b)}}))
    report = verify_store(b)
    assert not report.readable and "over the" in report.problems[0] and "metadata limit" in report.problems[0]


def test_open_store_refuses_a_huge_zarr_root_document(stores: dict[str, Path], tmp_path: Path) -> None:
    b = copy_store(stores["zarr"], tmp_path / "b" / "s.zarr")
    (b / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                             "attributes": {"epcache": _huge_doc(b)}}))
    with pytest.raises(CorruptStoreError):
        open_store(b)


@pytest.mark.parametrize("source", ["../elsewhere", "/etc", "train/../../x"])
def test_split_subdirectory_never_leaves_the_data_root(stores: dict[str, Path], tmp_path: Path, source: str) -> None:
    r = runner.invoke(app, ["extract", "--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32",
                            "--workers", "0", "--no-progress", "--data", str(stores["data"]),
                            "--out", str(tmp_path / "o.zarr"), "--split", f"val={source}"])
    assert r.exit_code == 2 and "must be a subdirectory of the data root" in r.output
    assert not (tmp_path / "o.zarr").exists()


def test_sample_ids_from_a_store_never_open_files_outside_the_data_root(stores: dict[str, Path]) -> None:
    attention = pytest.importorskip("epcache.report._attention")
    outside = ["../../etc/passwd", "/etc/passwd"]
    for sid in outside:
        with pytest.raises(ConfigError, match="outside the data root"):
            attention._load_images(stores["data"], [sid], {"data_config": {"input_size": [3, 32, 32]}})


def test_metadata_never_holds_a_path_or_credentials(stores: dict[str, Path], tmp_path: Path) -> None:
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, img_size=32)
    ckpt = tmp_path / "secret-dir" / "weights.pth"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "w" / "s.zarr"
    extract_store(tiny_config(stores["data"], out, splits={"val": "val"}, random_init=False, weights=ckpt),
                  progress=False)
    text = (out / "zarr.json").read_text()
    assert "secret-dir" not in text and str(tmp_path) not in text
    with open_store(out) as st:
        assert st.meta.backbone.weights_file == "weights.pth"
    assert np.all(open_store(out).block_records("val", 0) >= 0)
