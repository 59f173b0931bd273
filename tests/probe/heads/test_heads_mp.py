"""Moment Probing against the official ``Moment_Probing_ViT`` (tests/data/mp, vectors README ``mp/``).

Every vector file: ``param.*`` (the weights before training, under the reference's keys) gives the
float64 logits ``y`` at rtol 1e-10 and ``y_f32`` at 1e-5; the 5-step AdamW run (wd 0.05 on every
parameter) from ``param.*`` reaches ``losses`` and ``params_after.*`` to 1e-10. ``create_head("mp")``
with the recipe in each file's ``meta`` (``torch.manual_seed(seed)``, construction in the
reference's order, trunc-normal Linears, then ``+= 0.05·randn`` per parameter for ``_rand``) draws
``param.*`` (to a few float32 ulps across CPUs, tests/helpers/init_draws.py), which checks seeded
construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from init_draws import assert_same_draw

from epcache.errors import HeadSpecError
from epcache.probe.heads import HeadSpec, MomentProbing, create_head, from_reference, head_cost, heads_table
from epcache.probe.heads import mp_feature_size as feature_size

DATA = Path(__file__).resolve().parents[2] / "data" / "mp"
FILES = sorted(DATA.glob("*.npz"))
RTOL = 1e-10


def _close(actual: torch.Tensor, desired: np.ndarray, rtol: float) -> None:
    d = np.asarray(desired)
    np.testing.assert_allclose(actual.detach().numpy(), d, rtol=rtol, atol=rtol * float(np.abs(d).max()))


def _params(z: np.lib.npyio.NpzFile, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: z[k] for k in z.files if k.startswith(prefix)}


def _initial_head(z: np.lib.npyio.NpzFile) -> MomentProbing:
    """The weights before training, drawn by ``create_head`` with the file's recipe (float64)."""
    meta = json.loads(str(z["meta"]))
    ctor = meta["ctor"]
    assert (ctor["cross_type"], ctor["hidden_dim"], ctor["num_heads"]) == ("near", 512, 4)
    torch.manual_seed(meta["seed"])
    head = create_head("mp", in_dim=ctor["in_dim"], num_classes=ctor["num_classes"], num_prefix=1)
    if "0.05*randn" in meta["init"]:
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert isinstance(head, MomentProbing)
    return head


def test_all_vector_files_are_there() -> None:
    assert [p.name for p in FILES] == [
        "mp_D48_P49_C7_rand.npz",
        "mp_D64_P16_C10_init.npz",
        "mp_D64_P16_C10_rand.npz",
    ]


def _reference_head(z: np.lib.npyio.NpzFile, dtype: torch.dtype = torch.float64) -> MomentProbing:
    """The file's ``param.*`` loaded through the reference key names."""
    head = from_reference("mp", {k: torch.from_numpy(v).to(dtype) for k, v in _params(z, "param.").items()})
    assert isinstance(head, MomentProbing) and next(head.parameters()).dtype == dtype
    return head


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_vector_params_are_the_weights_before_training(path: Path) -> None:
    z = np.load(path)
    before, after = _params(z, "param."), _params(z, "params_after.")
    assert before.keys() == after.keys()
    assert all(v.dtype == np.float64 for v in before.values())
    assert not any(np.array_equal(before[k], after[k]) for k in before)  # AdamW moves every parameter


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_seeded_create_head_draws_the_vector_params(path: Path) -> None:
    z = np.load(path)
    drawn = _initial_head(z).state_dict()
    ref = _params(z, "param.")
    assert drawn.keys() == ref.keys()
    for key, t in drawn.items():
        assert_same_draw(t, ref[key], key)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_logits_match_reference_float64_and_float32(path: Path) -> None:
    z = np.load(path)
    x = torch.from_numpy(z["x"])
    _close(_reference_head(z)(x), z["y"], RTOL)
    y32 = _reference_head(z, torch.float32)(x.float())
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.detach().numpy(), z["y_f32"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_five_adamw_steps_match_reference(path: Path) -> None:
    z = np.load(path)
    head = _reference_head(z)
    x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y_train"])
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(losses, z["losses"], rtol=RTOL)
    after = _params(z, "params_after.")
    assert after.keys() == head.state_dict().keys()
    for key, t in head.state_dict().items():
        _close(t, after[key], RTOL)


def test_reference_checkpoint_layout_with_head_prefix() -> None:
    z = np.load(FILES[0])
    state = {k: torch.from_numpy(v) for k, v in _params(z, "param.").items()}
    ckpt = {"model": {**{f"head.{k}": v for k, v in state.items()}, "blocks.0.norm1.weight": np.ones(3)}}
    head = from_reference("mp", ckpt)
    _close(head(torch.from_numpy(z["x"])), z["y"], RTOL)


def test_created_head_has_the_reference_keys_and_shapes() -> None:
    z = np.load(FILES[1])
    head = _initial_head(z)
    ref = _params(z, "param.")
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    assert float(head.proj.bias.detach().abs().max()) == 0.0 and 0.015 < float(head.proj.weight.detach().std()) < 0.025


def test_parameter_count_and_flops_at_vit_b() -> None:
    cost = head_cost("mp", dim=768, num_classes=1000, num_tokens=196)
    assert cost.params == 4_047_146
    assert cost.params - (768 * 512 + 512) == 3_653_418  # the paper's 3.65 M leaves out the projection
    assert abs(cost.flops / 1e6 - 181.5) < 0.1  # docs/PROBE_FAMILIES.md §1.4
    rows = {r.kind: r for r in heads_table()}
    assert rows["mp"].params == 4_047_146 and rows["mp"].variant == "hidden=512,num_heads=4"


def test_feature_size_follows_the_head_count() -> None:
    assert (feature_size(512, 4), feature_size(512, 2), feature_size(512, 8)) == (2883, 3969, 1575)
    head = create_head("mp", in_dim=32, num_classes=3, num_heads=8, num_prefix=1)
    assert head(torch.randn(2, 17, 32)).shape == (2, 3)
    assert HeadSpec.parse("mp(hidden=512,num_heads=8)").name == "mp(hidden=512,num_heads=8)"
    with pytest.raises(HeadSpecError, match="too small"):
        create_head("mp", in_dim=32, num_classes=3, hidden=24, num_heads=4)
    with pytest.raises(HeadSpecError, match="dividing hidden"):
        create_head("mp", in_dim=32, num_classes=3, num_heads=3)


def test_first_order_is_cls_or_gap_and_registers_stay_out_of_the_covariance() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 1 + 2 + 16, 32, dtype=torch.float64)  # CLS, 2 registers, 16 patches
    with_regs = create_head("mp", in_dim=32, num_classes=4, num_prefix=3).double()
    patches_only = create_head("mp", in_dim=32, num_classes=4, num_prefix=0).double()
    patches_only.load_state_dict(with_regs.state_dict())
    torch.testing.assert_close(with_regs.covariances(x), patches_only.covariances(x[:, 3:]))
    torch.testing.assert_close(with_regs.first_order(x), x[:, 0])
    torch.testing.assert_close(patches_only.first_order(x[:, 3:]), x[:, 3:].mean(1))
    y = x.clone()
    y[:, 1:3] += 100.0  # registers change: logits do not
    torch.testing.assert_close(with_regs(y), with_regs(x))


def test_covariances_stay_float32_in_bfloat16() -> None:
    torch.manual_seed(0)
    head = create_head("mp", in_dim=32, num_classes=4, num_prefix=1)
    x = torch.randn(2, 17, 32)
    ref = head(x)
    bf = create_head("mp", in_dim=32, num_classes=4, num_prefix=1)
    bf.load_state_dict(head.state_dict())
    bf = bf.to(torch.bfloat16)
    assert bf.covariances(x.bfloat16()).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.covariances(x).dtype == torch.float32
    torch.testing.assert_close(bf(x.bfloat16()).float(), ref, atol=0.05, rtol=0.05)


def test_mp_has_no_attention_and_rejects_wrong_inputs() -> None:
    head = create_head("mp", in_dim=16, num_classes=3, num_prefix=1)
    with pytest.raises(HeadSpecError, match="no attention map"):
        head.attention(torch.randn(2, 10, 16))
    with pytest.raises(HeadSpecError, match=r"tokens \(B, N, 16\)"):
        head(torch.randn(2, 10, 8))
    with pytest.raises(HeadSpecError, match="no patch tokens"):
        head(torch.randn(2, 1, 16))
    with pytest.raises(HeadSpecError, match="accepted: num_prefix"):
        from_reference("mp", _params(np.load(FILES[0]), "param."), num_heads=4)
