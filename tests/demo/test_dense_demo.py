"""`epcache demo --dense`: shapes with masks -> extract --masks -> the four dense heads and linear -> report,
and the README's "Dense probes" section that points at it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from epcache.cli import app
from epcache.demo._run import DENSE_DEMO_HEADS
from epcache.probe.names import DENSE_KINDS
from epcache.report._dense import DENSE_FIGURE

README = Path(__file__).resolve().parents[2] / "README.md"
runner = CliRunner()


def test_dense_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--dense", "--quick", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (out / "run-dense" / "results.jsonl").read_text().splitlines()]
    dense = {r["kind"]: r for r in rows if r.get("task") == "dense"}
    assert set(dense) == set(DENSE_KINDS) and set(DENSE_KINDS) < set(DENSE_DEMO_HEADS)
    assert any(r.get("task") != "dense" and r["config"]["kind"] == "linear" for r in rows)
    for kind in ("seg-linear", "dense-logreg"):
        ev = dense[kind]["metrics"]["eval"]
        assert ev["miou"] > ev["majority_miou"] + 0.2, (kind, ev)
    for r in dense.values():
        assert (out / "run-dense" / r["dense_file"]).is_file()
    report = (out / "report-dense" / "report.md").read_text()
    assert "## Dense probes" in report and (out / "report-dense" / DENSE_FIGURE).is_file()
    assert "dense: 4 configs" in res.output and "demo finished" in res.output


def test_readme_has_a_dense_probes_section() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Dense probes", 1)[1].split("\n## ", 1)[0]
    assert "epcache demo --dense" in section and "docs/DENSE.md" in section and "mIoU" in section
    assert "--head dense-knn,dense-logreg,seg-linear,hummingbird" in section
    for kind in DENSE_KINDS:
        assert f"| `{kind}` |" in section, kind  # one line each: what it does
