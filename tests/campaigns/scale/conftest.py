"""The image folder that the torchrun campaigns share."""

from __future__ import annotations

from pathlib import Path

import pytest
from scale_helpers import make_imagefolder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 train / 8 val generated images (a test module with other needs defines its own ``data``)."""
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 40, "val": 8})
