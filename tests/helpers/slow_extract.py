"""`epcache ...` made slow, recording each rank's pid: the child process of the kill-a-rank tests.

A sleep hook on the patch embedding (one call per batch) makes extraction slow enough that a
kill lands mid-run; ``PID_DIR/rank<RANK>`` tells the test which process to kill.
"""

from __future__ import annotations

import os
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
Path(os.environ["PID_DIR"], f"rank{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))

from epcache.cli import main  # noqa: E402  (after the patch, which it must see)

sys.argv = ["epcache", *sys.argv[1:]]
main()
