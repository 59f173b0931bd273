"""Store wording other packages print: how two stores' documents differ, a layout's prefix tokens."""

from __future__ import annotations

from epcache.store._diff import describe_differences
from epcache.store._info import prefix_text

__all__ = ["describe_differences", "prefix_text"]
