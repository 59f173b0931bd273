"""The README's demo paragraph against a fresh ``epcache demo``: its protocol and its numbers.

The README quotes one demo summary (head seed 0) and, per head kind, the spread of the best
config's eval top-1 over head seeds 0-2. A fresh demo must land in that spread (plus 2 val images:
initial weights drawn on another CPU differ by a float32 ulp and training carries that along),
and the quoted numbers must lie inside their own spread.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from epcache.demo._run import DemoConfig, run_demo

README = Path(__file__).resolve().parents[2] / "README.md"
SLACK = 2  # val images


def _summary_evals(text: str) -> dict[str, float]:
    """Head kind -> eval top-1 of the summary table's rows (``linear[gap]`` counts as ``linear``).

    A single row's holdout cell carries its interval (``95.00 [86.3, 98.3]``); a row whose holdout
    cell does not parse is not a summary row, so the three kinds must all be found.
    """
    evals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]{10}\s+(\w+)\S*\s.*?\s(\d+\.\d\d)(?: \[\d+\.\d, \d+\.\d\])?\s+(\d+\.\d\d)\s+\d+\.\d\d$",
                     line)  # holdout [its 95% interval], eval, oracle
        if m:
            evals.setdefault(m.group(1), float(m.group(3)))
    return evals


def _readme() -> tuple[str, dict[str, float], dict[str, tuple[float, float]]]:
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- demo-summary", 1)[1].split("```", 2)[1]
    spread_table = text.split("<!-- demo-spread -->", 1)[1].split("\n\n", 1)[0]
    spread = {m.group(1): (float(m.group(2)), float(m.group(3)))
              for m in re.finditer(r"^\| (\w+) \| (\d+\.\d\d) - (\d+\.\d\d) \|$", spread_table, re.M)}
    return text, _summary_evals(block), spread


def test_readme_states_the_demo_protocol_and_consistent_numbers() -> None:
    text, quoted, spread = _readme()
    c = DemoConfig()
    sh = c.shapes
    n_train, n_val = sh.num_classes * sh.train_per_class, sh.num_classes * sh.val_per_class
    for phrase in (f"{n_train} train / {n_val} val images, {sh.num_classes} classes", f"all {c.depth}",
                   f"trains {c.epochs} epochs", f"batch {c.batch_size}", f"{round(100 * c.holdout)}% holdout",
                   f"({round(c.holdout * n_train)} images)", f"{c.epochs // 10} warm-up"):
        assert phrase in " ".join(text.split()), phrase
    assert set(quoted) == set(spread) == {"mhca", "ep", "linear"}
    for kind, value in quoted.items():
        lo, hi = spread[kind]
        assert lo <= value <= hi, (kind, value, spread[kind])


@pytest.mark.slow
def test_a_fresh_demo_prints_what_the_readme_quotes(tmp_path: Path) -> None:
    _, quoted, spread = _readme()
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", DemoConfig(figures=False), echo=lines.append, progress=False)
    fresh = _summary_evals(result.summary)
    assert set(fresh) == set(quoted)
    n_val = DemoConfig().shapes.num_classes * DemoConfig().shapes.val_per_class
    slack = 100 * SLACK / n_val
    for kind, value in fresh.items():
        lo, hi = spread[kind]
        assert lo - slack <= value <= hi + slack, f"{kind}: fresh demo {value:.2f}, README spread {lo}-{hi}"
    plan = next(line for line in lines if line.startswith("plan:"))
    assert f"x {DemoConfig().epochs} epochs" in plan
