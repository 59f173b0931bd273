"""``--in-memory`` auto (held when small, said once, recorded) and the sweep bar's ETA and resume counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from probe_helpers import config, write_store

import epcache.probe.run as run_module
from epcache.probe import probe_store
from epcache.probe.data.memory import AUTO_FRACTION, decide_in_memory
from epcache.probe.train import trainer as trainer_module
from epcache.probe.train.progress import WARMUP_SECONDS, WARMUP_STEPS, SweepProgress, format_eta


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("mem") / "s.zarr", n_train=96, n_val=32)


def test_auto_holds_what_fits_in_a_quarter_of_available_ram() -> None:
    avail = 8 * 2**30
    small = decide_in_memory(None, 60 * 2**20, available=avail)
    assert small.hold and small.rule == "auto: held in RAM (60.0 MB <= 25% of 8.0 GB available)"
    big = decide_in_memory(None, int(AUTO_FRACTION * avail) + 1, available=avail)
    assert not big.hold and big.rule.startswith("auto: streamed (2.0 GB > 25%")
    assert decide_in_memory(True, 10 * avail, available=avail).hold  # forced either way
    assert not decide_in_memory(False, 1, available=avail).hold
    assert decide_in_memory(False, 1).rule == "--no-in-memory"


def test_default_sweep_holds_small_splits_says_so_once_and_records_it(store: Path, capsys: Any) -> None:
    result = probe_store(config(store, head="linear,ep", layers="0,1", epochs=2), progress=True)
    err = capsys.readouterr().err
    assert err.count("training tokens auto: held in RAM") == 1  # two groups, one note
    # each group records its own decision; the sizes in parentheses name the RAM free at that moment
    assert {r["timing"]["in_memory"].split(" (")[0] for r in result.rows} == {"auto: held in RAM"}
    streamed = probe_store(config(store, head="linear,ep", layers="0,1", epochs=2, in_memory=False), progress=False)
    assert {r["timing"]["in_memory"] for r in streamed.rows} == {"--no-in-memory"}
    for a, b in zip(result.rows, streamed.rows, strict=True):  # held and streamed train identically
        assert a["curves"] == b["curves"] and a["metrics"] == b["metrics"]


class FakeBar:
    def __init__(self) -> None:
        self.n = 0
        self.postfix = ""

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        pass


def test_eta_waits_for_warm_up_and_uses_the_measured_rate() -> None:
    now = [0.0]
    bar = SweepProgress(1000, desc="t", enabled=False, clock=lambda: now[0], bar=FakeBar())
    bar.update(1)  # the first step carries start-up costs
    now[0] = 30.0
    for _ in range(WARMUP_STEPS - 1):  # warm-up ends at the last of these
        bar.update(1)
    assert now[0] >= WARMUP_SECONDS and bar.rate() is None and "ETA after warm-up" in bar.bar.postfix
    for _ in range(10):  # after warm-up: 10 steps per second
        now[0] += 0.1
        bar.update(1)
    assert bar.rate() == pytest.approx(10.0)
    left = 1000 - bar.done
    assert f"ETA {format_eta(left / bar.rate())}" in bar.bar.postfix  # ~1:38, not inflated by the 30 s step
    assert format_eta(3725) == "1:02:05" and format_eta(65) == "01:05"


def test_skipped_steps_move_the_bar_but_are_not_throughput() -> None:
    now = [0.0]
    bar = SweepProgress(100, desc="t", enabled=False, clock=lambda: now[0], bar=FakeBar())
    bar.skip(60)
    assert (bar.done, bar.new, bar.bar.n) == (60, 0, 60) and bar.rate() is None
    for _ in range(20):
        now[0] += 1.0
        bar.update(1)
    assert bar.rate() == pytest.approx(1.0)  # 1 step/s, not (60 + 20) / 20 s
    assert "ETA 00:20" in bar.bar.postfix


def test_resumed_sweep_counts_only_new_steps_and_shows_the_restored_best(store: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    kw = {"head": "linear", "queries": None, "layers": "0", "epochs": 4, "out": str(out)}
    real = trainer_module.GroupTrainer.train_epoch

    def killed_at_epoch_2(self: Any, stream: Any, epoch: int, **k: Any) -> None:
        if epoch == 2:
            raise KeyboardInterrupt
        real(self, stream, epoch, **k)

    monkeypatch.setattr(trainer_module.GroupTrainer, "train_epoch", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        probe_store(config(store, **kw), progress=False)
    monkeypatch.setattr(trainer_module.GroupTrainer, "train_epoch", real)

    bars: list[SweepProgress] = []

    class Recording(SweepProgress):
        def __init__(self, total: int, **k: Any) -> None:
            super().__init__(total, **k, bar=FakeBar())
            bars.append(self)

    monkeypatch.setattr(run_module, "SweepProgress", Recording)
    statuses: list[str] = []
    monkeypatch.setattr(Recording, "set_postfix_str", lambda self, t: statuses.append(t), raising=True)
    probe_store(config(store, **kw), progress=True)
    (bar,) = bars
    assert bar.total == 4 * (bar.total // 4) and bar.done == bar.total
    assert bar.new == bar.total // 2  # epochs 3 and 4 only; epochs 1-2 were skipped, not counted
    assert statuses[0].startswith("layer0, epoch 3/4") and "best holdout 0.0%" not in statuses[0]
    assert "best holdout" in statuses[0]


def test_held_training_tokens_are_read_once_not_every_epoch(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    from epcache.store import FeatureStore

    reads: Counter[tuple[str, int]] = Counter()
    original = FeatureStore.read_chunk

    def counting(self: FeatureStore, split: str, layer: int, chunk: int, **kw: object) -> Any:
        reads[(split, chunk)] += 1
        return original(self, split, layer, chunk, **kw)

    monkeypatch.setattr(FeatureStore, "read_chunk", counting)
    probe_store(config(store, head="linear", queries=None, layers="0", epochs=3, holdout=0.0), progress=False)
    train = [n for (split, _), n in reads.items() if split == "train"]
    assert train and set(train) == {1}  # auto held them: one read per chunk for 3 epochs


def test_cross_validation_says_the_memory_note_once_not_per_fold(store: Path, capsys: Any) -> None:
    # five fold streams and the refit's stream hold different row counts: still one note per sweep
    result = probe_store(config(store, head="linear", queries=(), layers="0", epochs=2, holdout=None, select="cv5",
                                refit=True),
                         progress=True)
    assert result.rows[0]["protocol"]["selection_rule"] == "cv5"
    assert capsys.readouterr().err.count("training tokens auto: held in RAM") == 1
