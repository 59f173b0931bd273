"""Demo end to end, the report's markdown and figures, and the attention analysis."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from epcache.cli import app
from epcache.probe.heads import create_head
from epcache.report._attention import attention_maps

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "d"
    r = runner.invoke(app, ["demo", "--out", str(out), "--quick", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "RANDOM-INIT" in r.output and "--weights" in r.output  # says what the numbers mean
    return out


def test_demo_writes_results_report_and_figures(demo_dir: Path) -> None:
    rows = [json.loads(line) for line in (demo_dir / "run/results.jsonl").read_text().splitlines()]
    kinds = {r["config"]["kind"] for r in rows}
    assert kinds == {"linear", "ep", "mhca"}  # the demo trains the SGD linear heads only (linear_fit="sgd")
    assert {r["config"]["tokens"] for r in rows if r["config"]["kind"] == "linear"} == {"cls", "gap"}
    assert len({r["config"]["layer"] for r in rows}) >= 2
    assert len({r["config"]["lr"] for r in rows if not r["config"].get("solver")}) == 2
    md = (demo_dir / "report/report.md").read_text()
    assert "## Best per head kind" in md and "## Best per head kind and layer" in md
    for name in ("top1_vs_params.png", "top1_vs_layer.png", "curves.png"):
        assert f"]({name})" in md
        with Image.open(demo_dir / "report" / name) as im:
            im.verify()
        with Image.open(demo_dir / "report" / name) as im:
            assert im.format == "PNG" and im.size == (840, 540)


def test_demo_again_says_skipped_and_its_model_is_reproducible_from_the_cli(demo_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["demo", "--out", str(demo_dir), "--quick", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "already in" in r.output and "skipped" in r.output and "trained" not in r.output
    short = r.output.replace(str(demo_dir), "epcache-demo")  # as with the default --out
    assert max(len(line) for line in short.splitlines()) <= 100  # fits 100 columns
    line = r.output.split("the same backbone from the CLI:\n", 1)[1].split("\nWith real weights", 1)[0]
    argv = shlex.split(line.replace("\\\n", " "))[1:]  # drop `epcache`
    argv[argv.index("--out") + 1] = str(tmp_path / "again.zarr")
    made = runner.invoke(app, [*argv, "--workers", "0", "--no-progress"])
    assert made.exit_code == 0, made.output
    info = [json.loads(runner.invoke(app, ["info", str(p), "--json"]).stdout)["provenance"]
            for p in (demo_dir / "store.zarr", tmp_path / "again.zarr")]
    assert info[0] == info[1]  # the same model, preprocessing and data: the same tokens
    md = (demo_dir / "report/report.md").read_text()
    assert md.startswith("# Probe report: vit_tiny_patch16_224 (depth=2, patch_size=8, 32 px), random init")
    assert "| id | config |" in md


def test_report_cli_and_errors(demo_dir: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["report", str(demo_dir / "run"), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "rep/report.md").is_file()
    r = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no results.jsonl" in r.output and "Traceback" not in r.output


def test_attention_cli(demo_dir: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (demo_dir / "run/results.jsonl").read_text().splitlines()]
    ep = next(r for r in rows if r["config"]["kind"] == "ep")
    out = tmp_path / "att"
    r = runner.invoke(app, ["attention", str(demo_dir / "run"), "--config", ep["id"][:10], "--images", "3",
                            "--out", str(out)])  # images found from the data root the store recorded
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "attention.json").read_text())
    q = ep["config"]["head_options"]["queries"]
    assert len(doc["entropy"]) == q and len(doc["delta_top1"]) == q
    assert all(0 <= h <= doc["max_entropy"] + 1e-6 for h in doc["entropy"])
    with Image.open(out / "attention.png") as im:
        assert im.size[0] > im.size[1] > 0  # rows of images, one column per query (+ image, combined)
    assert "no image" not in (out / "attention.md").read_text()
    best = runner.invoke(app, ["attention", str(demo_dir / "run"), "--images", "2", "--out", str(tmp_path / "b")])
    assert best.exit_code == 0, best.output  # --config best is the default
    doc = json.loads((tmp_path / "b/attention.json").read_text())
    assert doc["config"] in {r["id"] for r in rows if r["config"]["kind"] in ("ep", "mhca")}
    lin = next(r for r in rows if r["config"]["kind"] == "linear")
    r = runner.invoke(app, ["attention", str(demo_dir / "run"), "--config", lin["id"]])
    assert r.exit_code == 2 and "no attention maps" in r.output
    r = runner.invoke(app, ["attention", str(demo_dir / "run"), "--config", "zzzz"])
    assert r.exit_code == 2 and "matches no config" in r.output


def test_attention_maps_equal_the_heads_own_attention() -> None:
    torch.manual_seed(0)
    head = create_head("ep", in_dim=16, num_classes=3, queries=4).double().eval()
    with torch.no_grad():
        head.pooling.cls_token.normal_()  # sharp attention
    x = torch.randn(5, 1 + 9, 16, dtype=torch.float64)
    patches = x[:, 1:]
    maps = attention_maps(head, patches, num_prefix=1, token_selector="patch")
    torch.testing.assert_close(maps, head.attention(patches), rtol=0, atol=0)
    full = head.attention(x)  # ep_all: CLS is one more key; plotting drops it and renormalises
    maps_all = attention_maps(head, x, num_prefix=1, token_selector="all")
    torch.testing.assert_close(maps_all, full[..., 1:] / full[..., 1:].sum(-1, keepdim=True))


def test_uniform_ablation_changes_only_that_querys_slice() -> None:
    torch.manual_seed(1)
    m, d = 4, 16
    head = create_head("ep", in_dim=d, num_classes=3, queries=m).double().eval()
    with torch.no_grad():
        head.pooling.cls_token.normal_()
    x = torch.randn(6, 9, d, dtype=torch.float64)
    base = head.pool(x)
    c = d // m
    w_v = head.pooling.v.weight  # (D, D)
    for j in range(m):
        ab = head.pool(x, uniform_queries=[j])
        other = np.ones(d, bool)
        other[j * c : (j + 1) * c] = False
        torch.testing.assert_close(ab[:, torch.from_numpy(other)], base[:, torch.from_numpy(other)], rtol=0, atol=0)
        expected = x.mean(1) @ w_v[j * c : (j + 1) * c].T  # GAP(X) · W_V[slice j]ᵀ
        torch.testing.assert_close(ab[:, j * c : (j + 1) * c], expected, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(ab[:, j * c : (j + 1) * c], base[:, j * c : (j + 1) * c])
