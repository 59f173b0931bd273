"""submitit's task runner with a slow backbone: the "python" of a LocalExecutor in the preemption test.

The same sleep hook as ``slow_extract.py`` (one sleep per batch), so a preemption signal lands
mid-unit; each start writes its pid to ``PID_DIR/start<N>`` (a requeued task starts again); then
submitit's own entry point runs the array task as usual.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import timm

_create = timm.create_model
_SLEEP_S = float(os.environ.get("SLOW_S", "0.3"))


def _slow_create(*args: object, **kwargs: object) -> object:
    model = _create(*args, **kwargs)
    if str(next(model.parameters()).device) != "meta":
        model.patch_embed.register_forward_pre_hook(lambda *_: time.sleep(_SLEEP_S))
    return model


timm.create_model = _slow_create
_pids = Path(os.environ["PID_DIR"])
(_pids / f"start{len(list(_pids.iterdir()))}").write_text(str(os.getpid()))
args = [a for a in sys.argv[1:] if a not in ("-u", "-m", "submitit.core._submit")]  # what LocalExecutor passes
sys.argv = ["submitit.core._submit", *args]
runpy.run_module("submitit.core._submit", run_name="__main__")
