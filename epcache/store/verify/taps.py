"""``epcache verify`` of a store's taps (cache_layout.md §2.7): each nested store verified as the store it is.

What a tap lacks or holds wrongly is reported as a problem of the parent, not as bad blocks: repair
re-extracts block outputs, and a tap is rebuilt by deleting its directory and re-running the
extraction of this store.
"""

from __future__ import annotations

from collections.abc import Callable

from epcache.errors import EpcacheError
from epcache.store.core import FeatureStore
from epcache.store.layout.taps import tap_location
from epcache.store.verify.report import VerifyReport

__all__ = ["tap_problems"]


def tap_problems(store: FeatureStore, verify: Callable[[str], VerifyReport]) -> list[str]:
    """Every tap's problems, each prefixed with the tap and the fix; ``verify`` is the verifier of one store."""
    out: list[str] = []
    for name in store.meta.taps or {}:
        where = tap_location(store.location, name)
        fix = f"re-run the same `epcache extract` (it resumes the tap; where blocks are corrupt, delete {where} first)"
        try:
            report = verify(where)
        except EpcacheError as e:
            why = (str(e) or type(e).__name__).split("; run `epcache verify`")[0]  # we are that command
            out.append(f"tap {name}: {why}; {fix}")
            continue
        out += [f"tap {name}: {p}; {fix}" for p in report.problems]
        out += [f"tap {name}: {b.format_text()}; {fix}" for b in report.bad_blocks]
    return out
