"""README's "Library" section runs as written, and `import epcache` offers the entry points lazily."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _library_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README's Library section has no python block"
    return "\n".join(blocks)


def test_readme_library_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_library_code(), str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "(0, 1) 48" in out  # the comment's claim
    assert "best overall" in out and (tmp_path / "run/report/report.md").is_file()
    assert (tmp_path / "run/results.jsonl").read_text().count("\n") == 3  # linear + ep + the linear family's ridge


def test_import_epcache_is_light_and_offers_entry_points() -> None:
    code = (
        "import sys, epcache\n"
        "assert 'torch' not in sys.modules, 'import epcache loaded torch'\n"
        "names = ['extract_store', 'probe_store', 'convert_store', 'open_store', 'write_report', 'ExtractConfig',\n"
        "         'ProbeConfig']\n"
        "assert set(names) <= set(dir(epcache)) and set(names) <= set(epcache.__all__)\n"
        "assert not {'extract', 'probe', 'convert'} & set(epcache.__all__)\n"  # deprecated names: not offered
        "import epcache.extract, epcache.probe, epcache.convert\n"  # the subpackages, reached as such
        "assert epcache.probe.probe_store is epcache.probe_store and epcache.extract.extract_store is "
        "epcache.extract_store\n"
        "assert epcache.open_store.__module__.startswith('epcache.store')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=README.parent)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("name", "phrase"), [("ExtractConfig", "extra timm.create_model kwargs"),
                                             ("ProbeConfig", "training protocol (`epcache recipes`)"),
                                             ("ConvertConfig", "read chunk by chunk")])
def test_config_fields_are_documented_for_help(name: str, phrase: str) -> None:
    import epcache

    cls = getattr(epcache, name)
    doc = cls.__doc__ or ""
    assert "Attributes:" in doc and phrase in doc
    for f in dataclasses.fields(cls):
        assert f.metadata.get("doc"), f"{name}.{f.name} has no doc"
        assert f"    {f.name} (" in doc


def test_readme_grid_example_expands_as_described(tmp_path: Path) -> None:
    from probe_helpers import make_meta

    from epcache.probe import ProbeConfig, expand_sweep

    text = README.read_text(encoding="utf-8")
    (toml,) = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    grid = tmp_path / "sweep.toml"
    grid.write_text(toml, encoding="utf-8")
    meta = make_meta(dim=64, layers=(0, 1))  # a 2-block backbone: layers = [-1] is block 1
    runs = expand_sweep(ProbeConfig(store="s.zarr", grid=str(grid)), meta, num_classes=4, store_provenance="p",
                        eval_provenance="p")
    assert len(runs) == 2 * 2 + 2 * 2  # linear: 2 token kinds x 2 lrs; ep: 2 query counts x 2 blrs
    assert {r.layer for r in runs} == {1} and all(r.settings.epochs == 20 for r in runs)
    sliced = expand_sweep(ProbeConfig(store="s.zarr", head=("linear",), layers=("-2:",), lr=(0.1,)), meta,
                          num_classes=4, store_provenance="p", eval_provenance="p")
    assert sorted(r.layer for r in sliced) == [0, 1]

