"""The bench's pretrained backbone: drawn data, a loadable checkpoint, and extraction through the real-weights path.

Tiny budgets only (a few steps): these check the plumbing and the data's class structure, not how
well a full run transfers; the bench run itself reports that.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _digits
import _pretrain

TINY = _pretrain.PretrainConfig(steps=2, batch=8, warmup=1)


def test_drawings_are_seeded_light_on_dark_and_differ_by_class() -> None:
    a = [np.asarray(_pretrain.draw(np.random.default_rng(3), c)) for c in range(len(_pretrain.CLASSES))]
    b = [np.asarray(_pretrain.draw(np.random.default_rng(3), c)) for c in range(len(_pretrain.CLASSES))]
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))  # same seed, same image: reproducible
    for im in a:
        assert im.shape == (_pretrain.IMG, _pretrain.IMG, 3)
        assert np.array_equal(im[..., 0], im[..., 2])  # gray as RGB, like the upsampled digits
        assert im.max() > np.median(im) + 40  # the ink stands out from the background
    rng = np.random.default_rng(0)
    means = [np.mean([np.asarray(_pretrain.draw(rng, c), np.float64) for _ in range(20)], 0)
             for c in (_pretrain.CLASSES.index("stroke0"), _pretrain.CLASSES.index("stroke90"))]
    assert np.abs(means[0] - means[1]).mean() > 5  # horizontal vs vertical strokes: the label is in the pixels


def test_batch_is_normalised_like_the_extractor_and_labels_are_in_range() -> None:
    x, y = _pretrain.batch(np.random.default_rng(0), 16, 0.5, 0.5)
    assert tuple(x.shape) == (16, 3, _pretrain.IMG, _pretrain.IMG)
    assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6
    assert int(y.min()) >= 0 and int(y.max()) < len(_pretrain.CLASSES)


def test_cache_tag_changes_with_every_field() -> None:
    base = _pretrain.PretrainConfig()
    tags = {replace(base, **{k: v}).tag() for k, v in (("steps", 7), ("batch", 7), ("lr", 0.5), ("seed", 7))}
    assert base.tag() not in tags and len(tags) == 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, reused = _pretrain.checkpoint(tmp_path_factory.mktemp("cache"), TINY)
    assert not reused
    return path


def test_checkpoint_is_safetensors_reused_and_deterministic(ckpt: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(ckpt))
    assert sd["head.weight"].shape[0] == len(_pretrain.CLASSES)
    assert any(k.startswith("blocks.") for k in sd)
    again, reused = _pretrain.checkpoint(ckpt.parent, TINY)
    assert reused and again == ckpt
    other = load_file(str(_pretrain.pretrain(tmp_path / "b.safetensors", TINY)))
    assert all(np.array_equal(sd[k].numpy(), other[k].numpy()) for k in sd)  # fixed seed: the same weights


def test_extract_takes_the_checkpoint_through_the_real_weights_path(ckpt: Path, tmp_path: Path) -> None:
    from epcache.store import open_store

    pool = _digits.digits_pool(tmp_path, 3, 1, weights=ckpt, model_kwargs=_pretrain.MODEL_KWARGS)
    st = open_store(pool)
    assert st.meta.backbone.source == "checkpoint"
    assert st.meta.backbone.weights_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    x = st.read_tokens("train", st.meta.layers[-1])
    assert x.shape[0] == 3 * _digits.CLASSES and np.isfinite(x).all()
    random = open_store(_digits.digits_pool(tmp_path / "r", 3, 1, model_kwargs=_pretrain.MODEL_KWARGS))
    assert not np.allclose(x, random.read_tokens("train", random.meta.layers[-1]))  # the weights were loaded
