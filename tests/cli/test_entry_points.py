"""The library's entry points are named verb_noun; the old names warn for one release and still run.

``epcache.extract_store`` / ``probe_store`` / ``convert_store`` are the functions. The old calls
``epcache.extract(cfg)`` ... are functions in ``epcache._deprecated`` that warn, naming the new
one, and delegate; ``epcache.<pkg>.<pkg>`` reaches them always, ``epcache.<pkg>`` only until
the subpackage of that name is imported (Python then binds the subpackage on ``epcache``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import epcache
import epcache._deprecated
import epcache.convert
import epcache.extract
import epcache.probe

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


NAMES = [("extract", epcache.extract), ("probe", epcache.probe), ("convert", epcache.convert)]


@pytest.mark.parametrize(("old", "package"), NAMES, ids=[n for n, _ in NAMES])
def test_new_names_are_the_package_functions(old: str, package: Any) -> None:
    new = f"{old}_store"
    assert new in epcache.__all__ and old not in epcache.__all__
    assert getattr(epcache, new) is getattr(package, new)
    assert getattr(package, new).__name__ == new and new in package.__all__


@pytest.mark.parametrize(("old", "package"), NAMES, ids=[n for n, _ in NAMES])
def test_old_names_warn_naming_the_new_one_and_delegate(old: str, package: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, bool]] = []

    def fake(config: object, *, progress: bool = True) -> str:
        calls.append((config, progress))
        return "result"

    monkeypatch.setattr(package, f"{old}_store", fake)
    deprecated = getattr(package, old)
    assert deprecated is getattr(epcache._deprecated, old)
    with pytest.warns(DeprecationWarning, match=rf"epcache\.{old}\(config\) is deprecated.*epcache\.{old}_store") as w:
        assert deprecated("cfg", progress=False) == "result"
    assert calls == [("cfg", False)]
    assert w[0].filename == __file__  # the warning points at the caller's line


def test_old_calls_in_a_fresh_interpreter() -> None:
    """What still works, exactly as epcache._deprecated documents it (convert: the lightest subpackage)."""
    code = (
        "import sys, warnings, epcache\n"
        "assert epcache.convert is epcache._deprecated.convert\n"  # bound by `import epcache`
        "from epcache import convert\n"
        "cfg = epcache.ConvertConfig(src='missing.zarr', dst='out.zarr')\n"  # imports the subpackage ...
        "assert epcache.convert is sys.modules['epcache.convert']\n"  # ... which Python binds on epcache
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    try:\n"
        "        convert(cfg, progress=False)\n"  # the name imported before keeps the function
        "    except epcache.EpcacheError as e:\n"
        "        print('refused:', type(e).__name__)\n"
        "assert [x.category for x in w] == [DeprecationWarning], w\n"
        "assert 'epcache.convert_store(config)' in str(w[0].message)\n"
        "try:\n"
        "    epcache.convert(cfg)\n"
        "except TypeError as e:\n"  # the documented limit: the subpackage itself is not callable
        "    print('module:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert r.returncode == 0, r.stderr
    assert "refused: StoreNotFoundError" in r.stdout and "module: 'module' object is not callable" in r.stdout


def test_an_old_call_runs_while_the_name_is_still_the_function() -> None:
    """`epcache.convert(epcache.ConvertConfig(...))`: the callee is looked up before the argument imports the package,
    so the first such call runs; once the subpackage is imported, the name is the subpackage (documented limit)."""
    code = (
        "import warnings, epcache\n"
        "for attempt in (1, 2):\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        try:\n"
        "            epcache.convert(epcache.ConvertConfig(src='missing.zarr', dst='out.zarr'))\n"
        "        except epcache.EpcacheError as e:\n"
        "            print(attempt, 'refused:', type(e).__name__, w[0].category.__name__)\n"
        "        except TypeError as e:\n"
        "            print(attempt, 'module:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1 refused: StoreNotFoundError DeprecationWarning",
                                     "2 module: 'module' object is not callable"]


def test_no_module_rewrites_its_class() -> None:
    import types

    for module in (epcache, epcache.extract, epcache.probe, epcache.convert):
        assert type(module) is types.ModuleType
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not callable(epcache.probe)  # the subpackage, once imported; epcache.probe_store is the function
