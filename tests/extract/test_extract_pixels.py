"""uint8 worker output, the default worker count, and ``--decode gpu`` (its logic on CPU tensors here).

Workers send uint8 pixels and the device normalises: the float32 input must be bit-identical to
timm's ToTensor + Normalize. GPU decoding must stay within ``TOLERANCE`` of the CPU path, and
where it cannot run it says so once and decodes on the CPU.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from extract_helpers import make_imagefolder, read_all, tiny_config
from PIL import Image

from epcache.extract import ExtractConfig, extract_store
from epcache.extract._gpudecode import TOLERANCE, GpuDecoder, cpu_reference
from epcache.extract._loader import ViewDataset, _collate, decode_image
from epcache.extract._pixels import Normalizer, default_workers, pil_steps, to_uint8_chw
from epcache.extract._transforms import create_eval_transform
from epcache.store import open_store

_CFG = {"input_size": [3, 56, 56], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _smooth_jpeg(rng: np.random.Generator, h: int, w: int) -> bytes:
    """A photo-like JPEG (smooth, not noise): what decoders are built for."""
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_uint8_pixels_normalise_to_exactly_the_float_transform() -> None:
    rng = np.random.default_rng(0)
    for interpolation in ("bicubic", "bilinear"):
        cfg = {**_CFG, "interpolation": interpolation}
        full = create_eval_transform(cfg)
        steps, norm = pil_steps(full), Normalizer(cfg["mean"], cfg["std"])
        for _ in range(8):
            img = Image.fromarray(rng.integers(0, 256, size=(int(rng.integers(40, 90)), 70, 3), dtype=np.uint8))
            x = to_uint8_chw(steps(img))
            assert x.dtype == torch.uint8 and x.element_size() * 4 == full(img).element_size()  # a quarter of the bytes
            assert torch.equal(norm(x.unsqueeze(0))[0], full(img))  # bit for bit, not within a tolerance


def test_default_workers_is_min_4_and_the_cpus_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert default_workers() == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)))
    assert default_workers() == 4 == ExtractConfig(model="m", data=tmp_path, out="o.zarr").workers
    monkeypatch.undo()
    data = make_imagefolder(tmp_path / "d", splits={"train": 4})
    cfg = tiny_config(data, tmp_path / "s.zarr", splits={"train": "train"}, workers=default_workers())
    extract_store(cfg, progress=False)  # warnings are errors: no "more workers than CPUs" from the DataLoader


def test_gpu_decode_without_cuda_says_so_once_and_decodes_on_the_cpu(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    data = make_imagefolder(tmp_path / "d", splits={"train": 6})
    ref = tiny_config(data, tmp_path / "cpu.zarr", splits={"train": "train"})
    extract_store(ref, progress=False)
    capsys.readouterr()
    got = tiny_config(data, tmp_path / "gpu.zarr", splits={"train": "train"}, decode="gpu")
    extract_store(got, progress=False)
    err = capsys.readouterr().err
    assert err.count("--decode gpu is unavailable") == 1 and "device is 'cpu'" in err and "on the CPU" in err
    a, b = read_all(got.out), read_all(ref.out)
    assert all(a[k].tobytes() == v.tobytes() for k, v in b.items())
    with open_store(got.out) as s, open_store(ref.out) as r:
        assert s.provenance == r.provenance and "decode" not in s.meta.preprocessing  # recorded as CPU decoding


def _gpu_batch(device: str) -> tuple[list[bytes], list[torch.Tensor], list[str]]:
    """Decode a batch of 5 samples (3 JPEGs, a PNG, a broken JPEG) the GPU way on ``device``."""
    rng = np.random.default_rng(1)
    items: list[bytes] = [_smooth_jpeg(rng, int(rng.integers(60, 200)), int(rng.integers(60, 200))) for _ in range(3)]
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(70, 50, 3), dtype=np.uint8)).save(png, format="PNG")
    items += [png.getvalue(), b"\xff\xd8\xff" + b"\x00" * 64]

    class Reader:
        def __len__(self) -> int:
            return len(items)

        def read(self, index: int) -> bytes:
            return items[index]

        def where(self, index: int) -> str:
            return f"item {index}"

    ds = ViewDataset(Reader(), split="train", eval_transform=create_eval_transform(_CFG), input_size=(3, 56, 56),
                     views=1, augment=None, seed=0, raw_jpeg=True)
    batch = _collate([ds[i] for i in range(len(items))])
    assert [j is not None for j in batch.jpegs] == [True, True, True, False, True]  # the PNG is decoded in workers
    x = batch.images.to(device)
    errors = GpuDecoder(ds.pixels, device).fill(x, batch)
    return items, list(x[:, 0].cpu()), errors


def _assert_within_tolerance(items: list[bytes], got: list[torch.Tensor], errors: list[str]) -> None:
    steps = pil_steps(create_eval_transform(_CFG))
    assert errors[:4] == ["", "", "", ""] and errors[4]  # the broken JPEG: neither nvjpeg nor PIL decodes it
    assert torch.equal(got[3], to_uint8_chw(steps(decode_image(items[3]))))  # CPU path, exact
    diff = torch.cat([(got[i].int() - cpu_reference(steps, items[i]).int()).abs().flatten() for i in range(3)])
    mean, p999 = diff.float().mean().item(), torch.quantile(diff.float(), 0.999).item()
    print(f"decode vs the CPU path: mean |diff| {mean:.3f}, p99.9 {p999:.0f}, max {diff.max().item()} (uint8 levels)")
    assert mean <= TOLERANCE["mean_abs"], (mean, p999)
    assert p999 <= TOLERANCE["p999_abs"], (mean, p999)


def test_gpu_decode_logic_on_cpu_tensors_matches_the_cpu_path_within_tolerance() -> None:
    _assert_within_tolerance(*_gpu_batch("cpu"))  # decode_jpeg and the tensor resize run on CPU tensors too


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decode_on_cuda_is_within_tolerance_of_the_cpu_path(tmp_path: Path) -> None:
    _assert_within_tolerance(*_gpu_batch("cuda"))
    data = make_imagefolder(tmp_path / "d", splits={"train": 8})
    cfg = tiny_config(data, tmp_path / "g.zarr", splits={"train": "train"}, decode="gpu", device="cuda")
    extract_store(cfg, progress=False)
    with open_store(cfg.out) as store:
        assert store.is_complete() and store.meta.preprocessing["decode"].startswith("gpu")
