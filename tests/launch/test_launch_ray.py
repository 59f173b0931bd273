"""The same units on a local Ray instance (``ray.init(num_cpus=2)``): CPU actors stand in for GPU actors.

The claims: a store extracted as 4 units on Ray actors, fed by Ray CPU decode tasks, is
byte-identical to one process's; a sweep run as 4 layer units on Ray gathers to the rows of one
process (float64, bit-identical); a unit that fails on an actor is named, the other units still
finish, and re-submitting it completes the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from launch_helpers import assert_same_store, probe_config, rows_by_id, write_probe_store
from scale_helpers import make_imagefolder, tiny_config

from epcache.extract import extract_store
from epcache.launch import IncompleteRunError, LaunchOptions, submit
from epcache.launch._rundir import done_units, unit_dir
from epcache.probe import probe_store

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'epcache[ray]')")
from epcache.launch.ray_backend import RayOptions  # noqa: E402

pytestmark = pytest.mark.slow
CPU_ACTORS = RayOptions(gpus_per_actor=0, cpus_per_actor=0.5)  # two actors and one CPU for the decode tasks


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One Ray instance for the module: two CPUs, no dashboard; shut down after."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_four_units_on_ray_write_the_bytes_of_one_process(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "imgs", splits={"train": 40, "val": 8})
    extract_store(tiny_config(data, tmp_path / "ref.zarr", shard_samples=8), progress=False)
    out = tmp_path / "ray.zarr"
    result = submit(tmp_path / "run", tiny_config(data, out, shard_samples=8, allow_duplicate=True),
                    LaunchOptions(launcher="ray", units=4, ray=CPU_ACTORS, progress=False))
    assert len(result.submitted) == 4 and set(result.outcomes.values()) == {"done"}
    assert result.gathered is not None
    assert_same_store(out, tmp_path / "ref.zarr")
    markers = done_units(tmp_path / "run").values()
    assert {m["decode"] for m in markers} == {"tasks"} and sum(m["written"] for m in markers) == 6  # Ray decoded


def test_sweep_on_ray_gathers_to_the_rows_of_one_process(tmp_path: Path) -> None:
    """Four layer units on two actors; one unit fails on its actor (its run directory is blocked by a
    file), the other three still finish, gather names the failed one, and re-submitting it completes
    the rows of one process."""
    store = write_probe_store(tmp_path / "s.zarr")
    single = rows_by_id(probe_store(probe_config(store, tmp_path / "single"), progress=False).rows)
    run_dir = tmp_path / "run"
    bad = unit_dir(run_dir, "layer002")
    bad.parent.mkdir(parents=True)
    bad.write_text("a file where the unit's run directory goes")
    with pytest.raises(IncompleteRunError, match=r"1 of 4 units did not finish: layer002\. .*--only layer002"):
        submit(run_dir, probe_config(store, None), LaunchOptions(launcher="ray", ray=CPU_ACTORS, progress=False))
    assert sorted(done_units(run_dir)) == ["layer000", "layer001", "layer003"]
    bad.unlink()
    result = submit(run_dir, None, LaunchOptions(launcher="ray", ray=CPU_ACTORS, progress=False))
    assert result.submitted == ("layer002",)
    assert result.gathered is not None and rows_by_id(result.gathered.rows) == single
