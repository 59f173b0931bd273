"""Suite-wide settings: torch threads, the shared plugins, and which tests the default run leaves out.

torch's default intra-op pool (one thread per core) makes every small op cost milliseconds on
the 2-core CI machine when another process holds a core; the tests use tiny tensors, so one
thread is both faster and steadier. Nothing here changes a result: every numeric test compares
against references at fixed dtypes.

The default run (``addopts`` in pyproject.toml) deselects the ``campaign`` marker, which every test
under tests/campaigns/ and every ``slow`` test carries; ``-m campaign`` runs exactly those.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# tests/helpers: one moto S3 server per session for every S3 test; the reliability campaign's closing tally
pytest_plugins = ["moto_s3", "reliability_tally"]

torch.set_num_threads(1)

CAMPAIGNS = Path(__file__).resolve().parent / "campaigns"


@pytest.hookimpl(tryfirst=True)  # before the -m selection, which must see the added marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(CAMPAIGNS) or item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.campaign)
