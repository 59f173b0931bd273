"""Every head against the official implementation's numbers (tests/data, vectors README §1-§3).

Each vector file is its own test: the weights are loaded with ``from_reference`` and pooled
features, attention maps, logits in both BatchNorm modes and the running-stat updates are
compared in float64. Seeded constructions must also draw the reference's initial weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from init_draws import assert_same_draw
from torch import nn

from epcache.probe.heads import POOLING_CLASSES, Pooling, ProbeHead, create_head, from_reference

DATA = Path(__file__).resolve().parents[2] / "data"
POOL_FILES = sorted((DATA / "ep").glob("*.npz")) + sorted((DATA / "pool").glob("*.npz"))
HEAD_FILES = sorted((DATA / "heads").glob("*.npz"))
INIT_POOL_FILES = [
    p for p in POOL_FILES if p.stem.endswith("_init") or (p.parent.name == "ep" and "_rand" not in p.stem)
]
RTOL = 1e-10
# Outputs that are not state-dict entries of a pooling file.
_POOL_OUTPUTS = {"x", "y", "y_f32", "y_train", "meta", "attn_recomputed"}


def assert_close(actual: Any, desired: Any, rtol: float = RTOL) -> None:
    """Relative to the largest magnitude of ``desired`` (entries near 0 must not dominate)."""
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    d = np.asarray(desired)
    assert a.shape == d.shape, (a.shape, d.shape)
    np.testing.assert_allclose(a, d, rtol=rtol, atol=rtol * float(np.abs(d).max()))


def _kind(path: Path) -> str:
    return path.stem.removeprefix("head_").split("_")[0]


def _meta(z: np.lib.npyio.NpzFile) -> dict[str, Any]:
    return json.loads(str(z["meta"]))


def _config(meta: dict[str, Any]) -> dict[str, Any]:
    """Config the tensors cannot show: only ``--num_heads`` overrides occur in the vectors."""
    overrides = meta.get("args_overrides", {})
    return {"num_heads": overrides["num_heads"]} if "num_heads" in overrides else {}


def _pool_state(z: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    return {k: z[k] for k in z.files if k not in _POOL_OUTPUTS and not k.startswith(("attn", "after_train."))}


def _head_state(z: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    return {k: z[k] for k in z.files if k[:2] in ("0.", "1.", "2.")}


def _maps(pool: Pooling, x: torch.Tensor, key: str) -> torch.Tensor:
    if key == "attn_0":  # AbMILP: the token self-attention before the pooling weights
        return pool.self_attention_map(x)  # type: ignore[operator]
    return pool.attention(x)


def test_vector_files_are_all_there() -> None:
    assert len(list((DATA / "ep").glob("*.npz"))) == 16
    assert len(list((DATA / "pool").glob("*.npz"))) == 30
    assert len(HEAD_FILES) == 14
    assert len(INIT_POOL_FILES) == 9 + 15


@pytest.mark.parametrize("path", POOL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_pooling_matches_reference(path: Path) -> None:
    z = np.load(path)
    kind, config = _kind(path), _config(_meta(z))
    pool = from_reference(kind, _pool_state(z), **config)
    assert isinstance(pool, POOLING_CLASSES[kind])
    x = torch.from_numpy(z["x"])
    pool.eval()
    with torch.no_grad():
        assert_close(pool(x), z["y"])
        assert_close(pool.pool(x), z["y"])
        for key in (k for k in z.files if k.startswith("attn") and k != "attn_recomputed"):
            got = _maps(pool, x, key)
            assert got.ndim == 3 or key == "attn_0"
            assert_close(got.reshape(z[key].shape), z[key])
        # float32: the same module built from float32 weights, run on float32 tokens.
        pool32 = from_reference(
            kind, {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in _pool_state(z).items()}, **config
        )
        assert next(pool32.parameters()).dtype == torch.float32
        np.testing.assert_allclose(pool32.eval()(x.float()).numpy(), z["y_f32"], rtol=0, atol=1e-5)
        if "y_train" in z.files:  # poolings with their own BatchNorm: batch statistics + updates
            pool.train()
            assert_close(pool(x), z["y_train"])
            state = pool.state_dict()
            updated = [k for k in z.files if k.startswith("after_train.")]
            assert updated
            for k in updated:
                assert_close(state[k.removeprefix("after_train.")], z[k])


@pytest.mark.parametrize("path", HEAD_FILES, ids=lambda p: p.stem)
def test_head_matches_reference(path: Path) -> None:
    z = np.load(path)
    kind, config = _meta(z)["head_name"], _config(_meta(z))
    head = from_reference(kind, _head_state(z), **config)
    assert isinstance(head, ProbeHead)
    assert head.training  # a fresh module, as torch builds them
    x = torch.from_numpy(z["x"])
    with torch.no_grad():
        head.eval()
        pooled = head.pool(x)
        assert_close(pooled, z["pooled_eval"])
        assert_close(head.bn(pooled), z["bn_eval"])
        assert_close(head(x), z["logits_eval"])

        # Training mode, one forward: batch statistics everywhere, running stats move once.
        head.train()
        logits_train = head(x)
        rtol_train = 1e-9 if path.name == "head_cait_D64_C10.npz" else RTOL  # BN magnifies rounding
        assert_close(logits_train, z["logits_train"], rtol=rtol_train)
        state = head.state_dict()
        updated = [k for k in z.files if k.startswith("after_train.")]
        assert {"after_train.1.running_mean", "after_train.1.running_var"} <= set(updated)
        for k in updated:
            assert_close(state[k.removeprefix("after_train.")], z[k])
        head.eval()
        assert_close(head(x), z["logits_eval_after_train"])

        # The intermediate train-mode tensors, from a second copy stepped through by hand.
        twin = from_reference(kind, _head_state(z), **config).train()
        pooled = twin.pool(x)
        assert_close(pooled, z["pooled_train"])
        assert_close(twin.bn(pooled), z["bn_train"], rtol=rtol_train)


@pytest.mark.parametrize("path", HEAD_FILES[:3] + HEAD_FILES[-3:], ids=lambda p: p.stem)
def test_reference_checkpoint_layout_loads(path: Path) -> None:
    """``{"model": {"head.0.*": ..., backbone keys}}`` with torch tensors gives the same head."""
    z = np.load(path)
    kind = _meta(z)["head_name"]
    ckpt = {"model": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}
    ckpt["model"].update({f"head.{k}": torch.from_numpy(v) for k, v in _head_state(z).items()})
    head = from_reference(kind, ckpt, **_config(_meta(z))).eval()
    with torch.no_grad():
        assert_close(head(torch.from_numpy(z["x"])), z["logits_eval"])


@pytest.mark.parametrize("path", INIT_POOL_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_seeded_pooling_init_reproduces_reference(path: Path) -> None:
    """manual_seed(0) -> our constructor -> x = randn: same parameters, same RNG consumption."""
    z = np.load(path)
    kind = _kind(path)
    state = {k: torch.from_numpy(v) for k, v in _pool_state(z).items()}
    cls = POOLING_CLASSES[kind]
    args = cls.config_from_state(state, **_config(_meta(z)))
    torch.manual_seed(0)
    pool = cls(**args)
    x = torch.randn(z["x"].shape)
    ours = pool.state_dict()
    assert set(ours) == set(state)
    for k, v in state.items():
        assert_same_draw(ours[k], v.numpy(), k)
    assert torch.equal(x.double(), torch.from_numpy(z["x"]))


@pytest.mark.parametrize("path", HEAD_FILES, ids=lambda p: p.stem)
def test_seeded_head_init_reproduces_reference(path: Path) -> None:
    """Reference order: seed -> encoder head Linear(D, C) -> pooling (-> EP's fresh classifier) -> x."""
    z = np.load(path)
    meta = _meta(z)
    kind, D, C, N = meta["head_name"], meta["D"], meta["C"], meta["N"]
    torch.manual_seed(0)
    if kind == "ep":
        nn.Linear(D, C)  # the stub encoder's own head: drawn, then replaced by EP's classifier
        overrides = meta["args_overrides"]
        head = create_head("ep", in_dim=D, num_classes=C, queries=overrides["ep_queries"], d_out=overrides["d_out"])
    else:  # create_head builds the classifier first, standing in for the encoder's head
        head = create_head(kind, in_dim=D, num_classes=C, num_tokens=N)
    x = torch.randn(z["x"].shape)
    ours, ref = head.state_dict(), _head_state(z)
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert_same_draw(ours[k], v, k)
    assert torch.equal(x.double(), torch.from_numpy(z["x"]))
