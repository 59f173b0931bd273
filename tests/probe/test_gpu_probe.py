"""The probe's CUDA paths: run with ``pytest -m gpu tests/probe/test_gpu_probe.py`` on a GPU machine.

Skipped without CUDA. They check what the CPU tests cannot: batches copied on the copy stream one
batch ahead arrive intact and in order, ``amp=auto`` becomes bf16 on CUDA and stays within the
stated tolerance of the float32 CPU run (test_precision.py's module docstring), and compiled
stacks match eager ones on the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import config, write_store

from epcache.probe import probe_store
from epcache.probe.data.reads import InputRead
from epcache.probe.data.stream import BatchStream, MemorySource, StoreSource
from epcache.store import open_store

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("gpu") / "s.zarr", n_train=160, n_val=48)


@pytest.mark.parametrize("memory", [False, True])
def test_batches_on_cuda_equal_the_host_batches(store: Path, memory: bool) -> None:
    st = open_store(store)
    plan = InputRead(frozenset({"patch"}), st.meta.layout)
    rows = np.arange(160)
    src = MemorySource.load(st, "train", 1, plan, rows, all_views=True) if memory else StoreSource(st, "train", 1, plan)

    def batches(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        s = BatchStream(src, rows, st.read_labels("train"), batch_size=16, device=torch.device(device),
                        dtype=torch.float32, data_seed=0)
        return [(b.x.cpu(), b.y.cpu()) for epoch in range(2) for b in s.train_epoch(epoch)] + [
            (b.x.cpu(), b.y.cpu()) for b in s.eval_pass()]

    cpu, cuda = batches("cpu"), batches("cuda")
    assert len(cpu) == len(cuda) > 10
    for (xa, ya), (xb, yb) in zip(cpu, cuda, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_auto_amp_on_cuda_is_bf16_and_close_to_float32(store: Path) -> None:
    kw = {"head": "linear,ep,mhca,mp(hidden=64,num_heads=4)", "lr": "0.01,0.03", "epochs": 3}
    ref = probe_store(config(store, **kw), progress=False)  # CPU, float32
    low = probe_store(config(store, device="cuda", **kw), progress=False)
    for a, b in zip(ref.rows, low.rows, strict=True):
        assert b["protocol"]["amp"] == "bf16" and b["protocol"]["amp_rule"] == "auto: bf16 autocast on CUDA"
        for x, y in zip(a["curves"]["train_loss"], b["curves"]["train_loss"], strict=True):
            assert abs(x - y) <= 0.05 * abs(x)
        assert abs(a["metrics"]["eval"]["top1"] - b["metrics"]["eval"]["top1"]) <= 0.1


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_compiled_stacks_match_eager_on_cuda(store: Path, amp: str) -> None:
    kw = {"head": "linear,ep,mp(hidden=64,num_heads=4)", "lr": "0.01,0.03", "epochs": 2, "device": "cuda", "amp": amp}
    eager = probe_store(config(store, **kw), progress=False)
    compiled = probe_store(config(store, compile=True, **kw), progress=False)
    for a, b in zip(eager.rows, compiled.rows, strict=True):
        assert b["protocol"]["compile"] is True
        for x, y in zip(a["curves"]["train_loss"], b["curves"]["train_loss"], strict=True):
            assert abs(x - y) <= (1e-3 if amp == "none" else 0.02) * abs(x)
