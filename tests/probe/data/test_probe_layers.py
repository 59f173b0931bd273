"""Layer mixes and token sources: one store pass per group, derived inputs equal to by-hand ones."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import config, make_meta, write_store

from epcache.errors import ConfigError, HeadSpecError, MissingPooledError
from epcache.probe import probe_store
from epcache.probe.config.probe_config import parse_layers
from epcache.probe.data.layers import LayersRead, MultiLayerSource, PooledRead, PooledSource
from epcache.probe.data.sources import head_input
from epcache.probe.data.stream import InputRead
from epcache.probe.sweep.grid import expand_sweep
from epcache.store import FeatureStore, TokenLayout, open_store

LAYERS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layers") / "four.zarr"
    return write_store(path, n_train=96, n_val=48, layers=LAYERS, meta=make_meta(layers=LAYERS))


def _by_hand(x: np.ndarray, mix: str, tokens: str) -> np.ndarray:
    """``x`` ``[n, k, T, D]`` float64 -> the head input computed with numpy only (1 prefix token, CLS first)."""
    cls, patches = x[:, :, 0], x[:, :, 1:]
    gap = patches.mean(axis=2)
    per_layer = {"cls": cls, "gap": gap, "patch": patches, "all": x}[tokens] if tokens != "cls+gap" else None
    if mix == "mean":
        if tokens == "cls+gap":
            return np.concatenate([cls.mean(1), gap.mean(1)], axis=-1)
        return per_layer.mean(axis=1)
    if mix == "concat":
        if tokens == "cls+gap":  # DINOv2: CLS of each layer + GAP of the last
            return np.concatenate([*(cls[:, i] for i in range(x.shape[1])), gap[:, -1]], axis=-1)
        return np.concatenate([per_layer[:, i] for i in range(x.shape[1])], axis=-1)
    assert mix == "tokens"
    return np.concatenate([per_layer[:, i] for i in range(x.shape[1])], axis=1)


CASES = [
    ("mean", "patch"),
    ("mean", "cls"),
    ("mean", "cls+gap"),
    ("concat", "cls"),
    ("concat", "gap"),
    ("concat", "cls+gap"),
    ("concat", "all"),
    ("tokens", "patch"),
    ("tokens", "all"),
]


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "shared"])
@pytest.mark.parametrize(("mix", "tokens"), CASES)
def test_mixes_equal_doing_it_by_hand_from_read_tokens(store: Path, mix: str, tokens: str, shared: bool) -> None:
    with open_store(store) as st:
        layout = st.meta.layout
        rows = np.array([3, 4, 9, 15])  # all in chunk 0 (16 samples per chunk)
        x = np.stack([st.read_tokens("train", layer, 0, 16)[rows, 0] for layer in LAYERS], axis=1)
        want = _by_hand(x.astype(np.float64), mix, tokens)
        key = f"{mix}:{tokens}"
        keys = {key, "tokens:all"} if shared else {key}  # alone, a mean group is averaged by the reader
        plan = LayersRead(frozenset(keys), layout, len(LAYERS), torch.float64)
        assert plan.reduce_mean == (mix == "mean" and not shared)
        source = MultiLayerSource(st, "train", LAYERS, plan)
        packed = source.rows(0, rows, None)
        source.close()
        got = plan.derive(torch.from_numpy(np.asarray(packed)).double(), key)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
        kind = "linear" if tokens in ("cls", "gap", "cls+gap") else "ep"
        shapes = head_input(kind, tokens, mix, len(LAYERS), dim=st.meta.dim, num_prefix=1, cls_index=0,
                            num_registers=0, num_patches=layout.num_patches)
        assert got.shape[-1] == shapes.in_dim
        assert shapes.vector or got.shape[1] == shapes.num_tokens


def test_a_multi_layer_group_reads_each_chunk_of_each_layer_once_per_epoch(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: Counter[tuple[str, int, int]] = Counter()
    original = FeatureStore.read_chunk

    def counting(self: FeatureStore, split: str, layer: int, chunk: int, **kw: object) -> np.ndarray:
        reads[(split, layer, chunk)] += 1
        return original(self, split, layer, chunk, **kw)

    monkeypatch.setattr(FeatureStore, "read_chunk", counting)
    epochs = 2
    cfg = config(store, head="linear,ep", tokens="cls,patch", layers="all", layer_mix="mean,concat,tokens",
                 epochs=epochs, holdout=0.0, eval_cache_mb=0, in_memory=False)  # streamed: read every epoch
    res = probe_store(cfg, progress=False)
    # linear x (mean, concat) + ep x (mean, concat, tokens): five configs, ONE group of four layers
    assert sorted((r["config"]["kind"], r["input"]["layer_mix"]) for r in res.rows) == [
        ("ep", "concat"), ("ep", "mean"), ("ep", "tokens"), ("linear", "concat"), ("linear", "mean")]
    assert {tuple(r["input"]["layers"]) for r in res.rows} == {LAYERS}
    with open_store(store) as st:
        n_train, n_val = st.split("train").num_chunks, st.split("val").num_chunks
    for layer in LAYERS:
        for c in range(n_train):
            assert reads[("train", layer, c)] == epochs, (layer, c)  # one pass per epoch, not one per layer/mix
        for c in range(n_val):
            assert reads[("val", layer, c)] == epochs + 1  # every epoch's eval, plus the final one
    assert len(reads) == len(LAYERS) * (n_train + n_val)


def test_mix_configs_have_their_own_names_ids_and_widths(store: Path) -> None:
    with open_store(store) as st:
        runs = expand_sweep(config(store, head="linear", queries=(), tokens="cls+gap", layers="2,3,last",
                                   layer_mix="none,concat"), st.meta, num_classes=4, store_provenance="p",
                            eval_provenance="p")
    names = [r.name for r in runs]
    assert any(n.startswith("linear(tokens='cls+gap') layers=2,3 mix=concat lr=") for n in names)
    assert sum(" layer=3 " in n for n in names) == 1 and sum(" layer=2 " in n for n in names) == 1
    single = next(r for r in runs if r.layer_mix == "none" and r.layer == 3)
    assert "layer_mix" not in single.hyperparameters()  # single-layer ids are unchanged by this feature
    assert parse_layers("last:4,lastk:2") == ("last:4", "last:2")  # counted from the model's last block


def test_mix_errors_are_reported_before_training(store: Path) -> None:
    with pytest.raises(ConfigError, match="needs at least 2 layers"):
        probe_store(config(store, head="ep", layers="last", layer_mix="mean"), progress=False)
    with pytest.raises(ConfigError, match="unknown layer_mix"):
        probe_store(config(store, head="ep", layers="all", layer_mix="median"), progress=False)
    with pytest.raises(ConfigError, match="no register tokens"):
        probe_store(config(store, head="ep", tokens="registers"), progress=False)


def test_mean_of_layers_trains_end_to_end_and_its_head_reloads(store: Path, tmp_path: Path) -> None:
    from epcache.probe import load_head

    res = probe_store(config(store, head="linear,ep", tokens="cls+gap,patch", layers="all", layer_mix="concat,mean",
                             epochs=3, out=str(tmp_path / "run")), progress=False)
    linear = next(r for r in res.rows if r["config"]["kind"] == "linear" and r["input"]["layer_mix"] == "concat")
    assert linear["params"] == (5 * 16) * 4 + 4  # DINOv2 concat: 4 CLS + last GAP, C=4
    head, meta = load_head(tmp_path / "run" / linear["head_file"])
    assert meta["vector_input"] == 80 and head(torch.randn(3, 80)).shape == (3, 4)
    ep = next(r for r in res.rows if r["config"]["kind"] == "ep" and r["input"]["layer_mix"] == "mean")
    assert ep["metrics"]["eval"]["top1"] > 0.25  # the needle is in every layer: the mean still finds it


def test_report_draws_top1_per_input_and_token_source(store: Path, tmp_path: Path) -> None:
    from PIL import Image

    from epcache.report import write_report
    from epcache.report._mix_plot import input_label
    from epcache.report._tables import group_seeds, load_rows

    probe_store(config(store, head="linear,ep", tokens="cls,gap,patch", layers="2,3", layer_mix="none,mean,concat",
                       epochs=1, out=str(tmp_path / "run")), progress=False)
    labels = {(g.kind, input_label(g), g.tokens) for g in group_seeds(load_rows(tmp_path / "run"))}
    assert ("ep", "mean 2-3", "patch") in labels and ("linear", "concat 2-3", "gap") in labels
    assert ("linear", "single layer", "cls") in labels
    report = write_report(tmp_path / "run")
    fig = report.markdown.parent / "top1_by_input.png"
    assert fig in report.figures and "top1_by_input.png" in report.markdown.read_text()
    with Image.open(fig) as im:
        assert im.size[0] > 600


# ------------------------------------------------------------------------------------ pooled output


def _pooled_store(path: Path, *, with_pooled: bool) -> tuple[Path, dict[str, np.ndarray]]:
    write_store(path, n_train=64, n_val=32, layers=(0, 1))
    pooled: dict[str, np.ndarray] = {}
    if with_pooled:
        with open_store(path, "a") as st:
            for split in ("train", "val"):
                st.add_pooled(split, 12)
                s = st.split(split)
                y = st.read_labels(split)
                rng = np.random.default_rng(7)
                data = rng.standard_normal((s.num_samples, s.views, 12)).astype(np.float16)
                data[np.arange(s.num_samples), :, y] += 4.0  # the class is readable from the pooled vector
                for b in range(s.num_blocks):
                    lo, hi = st.block_range(split, b)
                    st.write_pooled_block(split, b, data[lo:hi])
                pooled[split] = data
    return path, pooled


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_pooled_array_round_trips_and_a_linear_probe_reads_it(tmp_path: Path, suffix: str) -> None:
    path, pooled = _pooled_store(tmp_path / f"p{suffix}", with_pooled=True)
    with open_store(path) as st:
        assert st.pooled_dim == 12 and st.has_pooled("val")
        np.testing.assert_array_equal(st.read_pooled("train"), pooled["train"])
        plan = PooledRead(torch.float32)
        src = PooledSource(st, "train", plan)
        rows = np.array([1, 5])
        got = plan.derive(torch.from_numpy(src.rows(0, rows, None)), "pooled")
        np.testing.assert_array_equal(got.numpy(), pooled["train"][rows, 0].astype(np.float32))
    from epcache.store import verify_store

    assert verify_store(path, deep=True).ok  # the extra array is part of a valid store
    if suffix == ".h5":
        return  # one training run is enough
    res = probe_store(config(path, head="linear,ep", tokens="pooled,patch", epochs=20, lr=0.05), progress=False)
    row = next(r for r in res.rows if r["config"]["tokens"] == "pooled")
    assert row["input"]["layers"] == [] and " pooled " in row["name"]
    assert row["params"] == 12 * 4 + 4
    assert row["metrics"]["eval"]["top1"] > 0.8


def test_store_without_pooled_opens_and_refuses_pooled_clearly(tmp_path: Path) -> None:
    path, _ = _pooled_store(tmp_path / "old.zarr", with_pooled=False)
    with open_store(path) as st:
        assert st.pooled_dim is None and not st.has_pooled("train")
        with pytest.raises(MissingPooledError, match="--pooled"):
            st.read_pooled("train")
    with pytest.raises(ConfigError, match="no 'pooled' array"):
        probe_store(config(path, head="linear", queries=(), tokens="pooled"), progress=False)


# ------------------------------------------------------------------------------------ registers


def test_register_sources_follow_the_layout() -> None:
    layout = TokenLayout(num_prefix=3, cls_index=0, num_registers=2, grid=(2, 2))  # CLS, r1, r2, 4 patches
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    plan = InputRead(frozenset({"registers", "patch+registers"}), layout)
    assert plan.mode == "all"
    torch.testing.assert_close(plan.derive(x, "registers"), x[:, 1:3])
    torch.testing.assert_close(plan.derive(x, "patch+registers"), x[:, 1:])
    torch.testing.assert_close(plan.derive(x, "patch"), x[:, 3:])
    shapes = head_input("ep", "patch+registers", "none", 1, dim=3, num_prefix=3, cls_index=0, num_registers=2,
                        num_patches=4)
    assert (shapes.num_tokens, shapes.num_prefix) == (6, 0)
    mp = head_input("mp", "all", "none", 1, dim=3, num_prefix=3, cls_index=0, num_registers=2, num_patches=4)
    assert (mp.num_tokens, mp.num_prefix) == (7, 3)  # MP takes CLS and skips the registers itself
    with pytest.raises(HeadSpecError, match="use tokens 'patch'"):  # registers without CLS: no first-order token
        head_input("mp", "all", "none", 1, dim=3, num_prefix=2, cls_index=None, num_registers=2, num_patches=4)
    with pytest.raises(HeadSpecError, match="'mp' reads tokens 'all'"):
        head_input("mp", "registers", "none", 1, dim=3, num_prefix=3, cls_index=0, num_registers=2, num_patches=4)


# ------------------------------------------------------------------------------------ streaming modes, CLI


def test_in_memory_equals_streaming_for_layer_groups(store: Path) -> None:
    kw = {"head": "linear,ep", "tokens": "cls+gap,patch", "layers": "1,2,3", "layer_mix": "concat,tokens,mean",
          "epochs": 2, "dtype": "float64", "lr": "0.02"}
    streamed = probe_store(config(store, in_memory=False, eval_cache_mb=0, **kw), progress=False)
    memory = probe_store(config(store, in_memory=True, **kw), progress=False)
    assert len(streamed.rows) == 5
    for a, b in zip(streamed.rows, memory.rows, strict=True):
        assert a["id"] == b["id"]
        assert a["curves"]["train_loss"] == pytest.approx(b["curves"]["train_loss"], rel=1e-12)
        assert a["metrics"]["eval"]["top1"] == b["metrics"]["eval"]["top1"]


def test_cli_layer_mix_heads_and_errors(store: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from epcache.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["heads", "--dim", "768", "--classes", "1000", "--patches", "196"])
    assert r.exit_code == 0 and any(line.startswith("mp ") and "4,047,146" in line for line in r.output.splitlines())
    assert "the MP paper counts without it (3.65 M here" in r.output
    fast = ["--epochs", "1", "--warmup", "0", "--batch-size", "32", "--optimizer", "adamw", "--lr", "0.01",
            "--no-progress", "--device", "cpu"]
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--tokens", "cls+gap",
                            "--layers", "0,1,2,3", "--layer-mix", "concat", "--out", str(tmp_path / "run"), *fast])
    assert r.exit_code == 0, r.output
    assert "layers=0,1,2,3 mix=concat" in (tmp_path / "run" / "results.jsonl").read_text()
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "ep", "--layer-mix", "median", *fast])
    assert r.exit_code == 2 and "unknown layer_mix" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["probe", "--store", str(store), "--head", "linear", "--tokens", "pooled", *fast])
    assert r.exit_code == 2 and "--pooled" in r.output
