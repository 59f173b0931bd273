"""Head library behaviour beyond the reference vectors: EP orders and ablation, registry, specs, costs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from epcache.errors import HeadSpecError
from epcache.probe.heads import (
    BASELINE_KINDS,
    EfficientProbing,
    HeadSpec,
    ProbeHead,
    create_head,
    format_heads_table,
    from_reference,
    head_cost,
    head_options,
    heads_table,
    list_heads,
    list_solvers,
    register_head,
)
from epcache.probe.names import BUILTIN_HEAD_KINDS, SOLVER_KINDS, TRAINED_HEAD_KINDS

DATA = Path(__file__).resolve().parents[2] / "data"
ALL_KINDS = ["linear", "ep", "mhca", "alf", "mp", *BASELINE_KINDS]


def _ep(dim: int, queries: int, d_out: int, *, seed: int = 0) -> EfficientProbing:
    torch.manual_seed(seed)
    ep = EfficientProbing(dim, queries=queries, d_out=d_out).double()
    with torch.no_grad():  # sharp attention, so the orders are compared away from the uniform case
        ep.cls_token.normal_()
    return ep


def _ep_loop(ep: EfficientProbing, x: torch.Tensor) -> torch.Tensor:
    """docs/EP_SPEC.md §1.3 written as loops over images and queries."""
    B, _, D = x.shape
    c = ep.slice_width
    out = torch.empty(B, ep.out_dim, dtype=x.dtype)
    for b in range(B):
        v = x[b] @ ep.v.weight.T  # (N, D')
        for j in range(ep.queries):
            a = torch.softmax(x[b] @ ep.cls_token[0, j] / D**0.5, dim=0)
            out[b, j * c : (j + 1) * c] = (a[:, None] * v[:, j * c : (j + 1) * c]).sum(0)
    return out


# ------------------------------------------------------------------------------------------ EP


@pytest.mark.parametrize(("queries", "d_out"), [(1, 1), (4, 1), (8, 2), (16, 4), (64, 1)])
def test_ep_pool_first_equals_reference_order_and_loop(queries: int, d_out: int) -> None:
    ep = _ep(64, queries, d_out)
    x = torch.randn(3, 20, 64, dtype=torch.float64)
    ep.order = "pool_first"
    fast = ep(x)
    ep.order = "reference"
    ref = ep(x)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast, _ep_loop(ep, x), rtol=1e-12, atol=1e-12)


def test_ep_orders_give_the_same_gradients() -> None:
    ep = _ep(48, 6, 2)
    x = torch.randn(4, 10, 48, dtype=torch.float64)
    target = torch.randn(4, 24, dtype=torch.float64)
    grads = {}
    for order in ("pool_first", "reference"):
        ep.zero_grad()
        ep.order = order
        ((ep(x) - target) ** 2).sum().backward()
        grads[order] = [p.grad.clone() for p in ep.parameters()]
    for a, b in zip(grads["pool_first"], grads["reference"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_ep_pool_first_cuts_flops_as_in_spec() -> None:
    """docs/EP_SPEC.md §1.5 / §2.5: ViT-B, M=32 -> 0.243 GFLOP in reference order, 0.022 pooling first."""
    flops = {}
    for order in ("reference", "pool_first"):
        with torch.device("meta"):
            head = create_head("ep", in_dim=768, num_classes=1000, queries=32)
            head.pooling.order = order
            x = torch.empty(1, 196, 768)
        with FlopCounterMode(display=False) as counter:
            head.eval()(x)
        flops[order] = counter.get_total_flops()
    assert round(flops["reference"] / 1e9, 3) == 0.243
    assert round(flops["pool_first"] / 1e9, 3) == 0.022
    assert flops["reference"] / flops["pool_first"] > 10


@pytest.mark.parametrize(
    ("dim", "queries", "d_out", "valid"),
    [
        (768, 7, 1, "[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64"),
        (768, 64, 8, "[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96]"),
    ],
)
def test_ep_rejects_widths_the_queries_do_not_split(dim: int, queries: int, d_out: int, valid: str) -> None:
    with pytest.raises(HeadSpecError, match=rf"D={dim}, M={queries}, d_out={d_out}.*valid M") as err:
        create_head("ep", in_dim=dim, num_classes=10, queries=queries, d_out=d_out)
    assert valid in str(err.value)


def test_ep_rejects_bad_d_out_heads_and_order() -> None:
    with pytest.raises(HeadSpecError, match="d_out=5; valid d_out"):
        EfficientProbing(64, queries=1, d_out=5)
    with pytest.raises(HeadSpecError, match="num_heads=1"):
        EfficientProbing(64, queries=4, num_heads=2)
    with pytest.raises(HeadSpecError, match="order"):
        EfficientProbing(64, queries=4, order="fast")  # type: ignore[arg-type]


def test_uniform_ablation_of_all_queries_is_a_linear_probe_on_gap() -> None:
    """docs/EP_SPEC.md §6.2: all queries uniform -> classifier(BN(GAP(X) · W_Vᵀ)), running stats kept."""
    torch.manual_seed(1)
    head = create_head("ep", in_dim=64, num_classes=7, queries=8).double()
    with torch.no_grad():
        head.pooling.cls_token.normal_()
    x = torch.randn(5, 12, 64, dtype=torch.float64)
    head.train()
    head(x)  # move the BN running stats away from (0, 1)
    head.eval()
    with torch.no_grad():
        ablated = head(x, uniform_queries=range(8))
        gap_v = x.mean(dim=1) @ head.pooling.v.weight.T
        expected = head.classifier(head.bn(gap_v))
        assert head.bn.running_mean.abs().sum() > 0
        torch.testing.assert_close(ablated, expected, rtol=1e-12, atol=1e-12)
        for order in ("pool_first", "reference"):
            head.pooling.order = order
            torch.testing.assert_close(head.pool(x, uniform_queries=list(range(8))), gap_v, rtol=1e-12, atol=1e-12)


def test_uniform_ablation_of_one_query_changes_only_its_slice() -> None:
    ep = _ep(64, 4, 1)
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    with torch.no_grad():
        full, one = ep(x), ep.pool(x, uniform_queries=[2])
    c = ep.slice_width
    torch.testing.assert_close(one[:, : 2 * c], full[:, : 2 * c])
    torch.testing.assert_close(one[:, 3 * c :], full[:, 3 * c :])
    torch.testing.assert_close(one[:, 2 * c : 3 * c], x.mean(1) @ ep.v.weight[2 * c : 3 * c].T)
    torch.testing.assert_close(ep.pool(x, uniform_queries=[]), full)
    with pytest.raises(HeadSpecError, match=r"uniform_queries \[4\] out of range for M=4"):
        ep(x, uniform_queries=[4])


def test_ep_attention_is_independent_of_values_and_sums_to_one() -> None:
    ep = _ep(32, 4, 1)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    attn = ep.attention(x)
    assert attn.shape == (2, 4, 9)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    with torch.no_grad():
        ep.v.weight.zero_()
    torch.testing.assert_close(ep.attention(x), attn)


# ------------------------------------------------------------------------- attention maps, modes

SMALL = {"ep": {"queries": 8}}  # D=48 cannot be split by EP's default 32 queries
# kind -> number of attention predictors P at D=48 (default options otherwise), extra keys beyond N.
ATTENTION = {
    "ep": (8, 0),
    "mhca": (8, 0),
    "jepa": (16, 0),
    "siglip": (8, 0),
    "aim": (16, 0),
    "cae": (8, 0),
    "cait": (4, 1),
    "coca": (8, 0),
    "simpool": (1, 0),
    "esimpool": (12, 0),
    "abmilp": (1, 0),
    "clip": (4, 1),
    "cbam": (1, 0),
    "dolg": (1, 0),
}


@pytest.mark.parametrize("kind", sorted(ATTENTION))
def test_attention_maps_have_one_row_per_predictor(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, in_dim=48, num_classes=3, num_tokens=16, **SMALL.get(kind, {}))
    x = torch.randn(2, 16, 48)
    head.train()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    attn = head.attention(x)
    predictors, extra = ATTENTION[kind]
    assert attn.shape == (2, predictors, 16 + extra)
    if kind not in ("cbam", "dolg"):  # those two are unnormalised spatial scores
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, predictors))
    after = head.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "attention() must not update BN stats"


@pytest.mark.parametrize(("kind", "options"), [("dinovit", {}), ("linear", {"tokens": "gap"})])
def test_heads_without_attention_say_so(kind: str, options: dict[str, str]) -> None:
    head = create_head(kind, in_dim=16, num_classes=2, **options)
    with pytest.raises(HeadSpecError, match=f"{kind!r} has no attention map"):
        head.attention(torch.randn(1, 4, 16))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_trains_one_step(kind: str) -> None:
    torch.manual_seed(0)
    head = create_head(kind, in_dim=48, num_classes=5, num_tokens=16, num_prefix=1, **SMALL.get(kind, {}))
    x = torch.randn(4, 17 if kind == "linear" else 16, 48)
    loss = F.cross_entropy(head.train()(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    unused = {"0.norm2_cross.weight", "0.norm2_cross.bias"}  # CAE builds it but never uses it (as the reference)
    for name, p in head.named_parameters():
        assert (p.grad is None) == (name in unused), name
    assert torch.isfinite(loss)
    assert head.eval()(x).shape == (4, 5)


def test_wrong_token_width_is_reported() -> None:
    head = create_head("ep", in_dim=64, num_classes=3, queries=4)
    with pytest.raises(HeadSpecError, match=r"tokens \(B, N, 64\) got shape \(2, 5, 32\)"):
        head(torch.randn(2, 5, 32))


def test_clip_needs_its_token_count() -> None:
    with pytest.raises(HeadSpecError, match="pass num_tokens"):
        create_head("clip", in_dim=32, num_classes=2)
    head = create_head("clip", in_dim=32, num_classes=2, num_tokens=9)
    with pytest.raises(HeadSpecError, match="N=9 tokens, got N=10"):
        head(torch.randn(1, 10, 32))


def test_grid_poolers_need_a_square_token_count() -> None:
    with pytest.raises(HeadSpecError, match="N=10 is not square"):
        create_head("cbam", in_dim=32, num_classes=2)(torch.randn(2, 10, 32))


# ------------------------------------------------------------------------------ linear probe


def test_linear_head_selects_cls_gap_or_both() -> None:
    x = torch.randn(3, 1 + 4 + 9, 8, dtype=torch.float64)  # CLS, 4 registers, 3x3 patches
    for tokens, expected in [
        ("cls", x[:, 0]),
        ("gap", x[:, 5:].mean(1)),
        ("cls+gap", torch.cat([x[:, 0], x[:, 5:].mean(1)], -1)),
    ]:
        head = create_head("linear", in_dim=8, num_classes=4, num_prefix=5, tokens=tokens).double()
        torch.testing.assert_close(head.pool(x), expected)
        assert head.width == expected.shape[1]
        assert set(head.state_dict()) == {
            "0.running_mean",
            "0.running_var",
            "0.num_batches_tracked",
            "1.weight",
            "1.bias",
        }
    gap_all = create_head("linear", in_dim=8, num_classes=4, tokens="gap").double()  # no prefix tokens
    torch.testing.assert_close(gap_all.pool(x), x.mean(1))


def test_linear_head_errors() -> None:
    with pytest.raises(HeadSpecError, match="needs a CLS token, but num_prefix=0"):
        create_head("linear", in_dim=8, num_classes=4)
    with pytest.raises(HeadSpecError, match="tokens must be one of"):
        create_head("linear", in_dim=8, num_classes=4, tokens="mean")
    head = create_head("linear", in_dim=8, num_classes=4, num_prefix=2, tokens="gap")
    with pytest.raises(HeadSpecError, match="no patch tokens"):
        head(torch.randn(1, 2, 8))


def test_linear_head_from_reference_layout() -> None:
    """The reference LP is Sequential(BN, Linear): keys 0.* and 1.*."""
    torch.manual_seed(0)
    ref = create_head("linear", in_dim=8, num_classes=3, num_prefix=1, tokens="cls+gap")
    head = from_reference("linear", {f"head.{k}": v.numpy() for k, v in ref.state_dict().items()}, tokens="cls+gap")
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(head.eval()(x), ref.eval()(x))


# ----------------------------------------------------------------------------------- registry


def test_registry_lists_every_kind() -> None:
    assert list_heads() == sorted(ALL_KINDS)
    assert head_options("ep") == {"queries": 32, "d_out": 1}
    assert head_options("jepa") == {"num_heads": 16}
    assert head_options("linear") == {"tokens": "cls"}
    assert head_options("cbam") == {}


def test_unknown_kind_lists_the_known_ones() -> None:
    for call in (
        lambda: create_head("epp", in_dim=8, num_classes=2),
        lambda: HeadSpec.parse("epp(queries=8)"),
        lambda: head_options("epp"),
    ):
        with pytest.raises(HeadSpecError, match=r"unknown head kind 'epp'; registered kinds: abmilp, aim, .*linear"):
            call()
    with pytest.raises(HeadSpecError, match="unknown head kind 'epp'"):
        from_reference("epp", {})


def test_unknown_option_and_wrong_type_are_rejected() -> None:
    with pytest.raises(HeadSpecError, match=r"'ep' has no option\(s\) \['num_queries'\]; accepted: queries, d_out"):
        create_head("ep", in_dim=64, num_classes=2, num_queries=4)
    with pytest.raises(HeadSpecError, match="expected int"):
        HeadSpec.of("ep", queries="8")
    with pytest.raises(HeadSpecError, match="not a plain Python literal"):
        HeadSpec.of("ep", queries=object())


def test_register_head_refuses_duplicates_and_bad_factories() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_head("ep")(lambda **kw: None)
    with pytest.raises(ValueError, match="must accept keyword arguments"):
        register_head("new_kind_without_data_args")(lambda *, queries=1: None)
    assert "new_kind_without_data_args" not in list_heads()


def test_create_head_from_spec_with_override() -> None:
    spec = HeadSpec.of("ep", queries=8)
    head = create_head(spec, in_dim=64, num_classes=3, d_out=2)
    assert isinstance(head, ProbeHead)
    assert (head.pooling.queries, head.pooling.d_out, head.width, head.num_classes) == (8, 2, 32, 3)


# ----------------------------------------------------------------------------------- HeadSpec


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        (HeadSpec.of("ep", queries=8), "ep(queries=8,d_out=1)"),
        (HeadSpec.of("ep", d_out=2, queries=32), "ep(queries=32,d_out=2)"),
        (HeadSpec.of("linear", tokens="cls+gap"), "linear(tokens='cls+gap')"),
        (HeadSpec.of("jepa"), "jepa(num_heads=16)"),
        (HeadSpec.of("cbam"), "cbam"),
        (HeadSpec("aim", (("num_heads", 12),)), "aim(num_heads=12)"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_head_spec_names_round_trip(spec: HeadSpec, name: str) -> None:
    assert spec.name == name == str(spec)
    assert HeadSpec.parse(name) == spec
    assert HeadSpec.parse(spec.name).kwargs == spec.kwargs
    assert hash(HeadSpec.parse(name)) == hash(spec)


def test_head_spec_is_canonical() -> None:
    assert HeadSpec.parse("ep") == HeadSpec.parse("ep()") == HeadSpec.of("ep", queries=32, d_out=1)
    assert HeadSpec.parse(" ep( d_out = 1 , queries = 8.0 ) ") == HeadSpec.of("ep", queries=8)
    assert len({HeadSpec.of("ep"), HeadSpec.parse("ep(queries=32)"), HeadSpec.of("ep", d_out=1)}) == 1
    with pytest.raises(AttributeError):
        HeadSpec.of("ep").kind = "mhca"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ep(8)", "name=value"),
        ("ep(queries=__import__('os').getcwd())", "not a Python literal"),
        ("ep(queries=8", "cannot parse"),
        ("ep(queries=8,,)", "cannot parse"),
        ("1ep", "cannot parse"),
        ("ep(**{'queries': 8})", "name=value"),
    ],
)
def test_head_spec_parse_never_evaluates(text: str, message: str) -> None:
    with pytest.raises(HeadSpecError, match=message):
        HeadSpec.parse(text)


# -------------------------------------------------------------------------------- from_reference


def _ep_head_state() -> dict[str, np.ndarray]:
    z = np.load(DATA / "heads" / "head_ep_D64_M4_dout1_C10.npz")
    return {k: z[k] for k in z.files if k[:2] in ("0.", "1.", "2.")}


def test_from_reference_accepts_numpy_and_torch_alike() -> None:
    state = _ep_head_state()
    a = from_reference("ep", state).eval()
    b = from_reference("ep", {k: torch.from_numpy(v) for k, v in state.items()}).eval()
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert (a.pooling.queries, a.pooling.d_out, a.num_classes) == (4, 1, 10)
    state["0.cls_token"][...] = 0.0  # the module owns a copy of the weights
    assert a.pooling.cls_token.abs().sum() > 0


def test_from_reference_pooling_only_returns_the_pooling() -> None:
    state = {k.removeprefix("0."): v for k, v in _ep_head_state().items() if k.startswith("0.")}
    pool = from_reference("ep", state)
    assert isinstance(pool, EfficientProbing) and not isinstance(pool, ProbeHead)
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    assert pool.pool(x).shape == (2, 64) and pool.attention(x).shape == (2, 4, 7)


def test_from_reference_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    from_reference("jepa", {k: v for k, v in _load_pool("jepa_h16_D64_init").items()})
    torch.testing.assert_close(torch.rand(3), expected)


def _load_pool(stem: str) -> dict[str, np.ndarray]:
    z = np.load(DATA / "pool" / f"{stem}.npz")
    skip = {"x", "y", "y_f32", "y_train", "meta"}
    return {k: z[k] for k in z.files if k not in skip and not k.startswith(("attn", "after_train."))}


def test_from_reference_lists_missing_and_unexpected_keys() -> None:
    state = _ep_head_state()
    del state["2.bias"]
    state["0.extra"] = np.zeros(3)
    with pytest.raises(HeadSpecError, match=r"missing keys \['2.bias'\], unexpected keys \['0.extra'\]"):
        from_reference("ep", state)
    state = _ep_head_state()
    del state["0.v.weight"]
    with pytest.raises(HeadSpecError, match=r"missing key 'v.weight'.*prefix '0.'"):
        from_reference("ep", state)


def test_from_reference_shape_and_config_errors() -> None:
    state = _ep_head_state()
    state["2.weight"] = np.zeros((10, 32))
    with pytest.raises(HeadSpecError, match="classifier input width 32 != pooled width 64"):
        from_reference("ep", state)
    state = _load_pool("aim_h16_D64_init")
    state["k.weight"] = np.zeros((64, 32))
    with pytest.raises(HeadSpecError, match=r"k.weight: \(64, 32\) vs \(64, 64\)"):
        from_reference("aim", state)
    with pytest.raises(HeadSpecError, match=r"unknown config \['queries'\]; accepted: num_heads"):
        from_reference("aim", _load_pool("aim_h16_D64_init"), queries=2)
    with pytest.raises(HeadSpecError, match="takes none"):
        from_reference("ep", _ep_head_state(), num_heads=1)


def test_from_reference_tolerates_missing_batch_counters() -> None:
    state = _ep_head_state()
    del state["1.num_batches_tracked"]
    head = from_reference("ep", state)
    assert int(head.bn.num_batches_tracked) == 0


# ------------------------------------------------------------------------------------ costs


def _param_rows() -> list[dict]:
    return json.loads((DATA / "param_counts.json").read_text())


def test_param_counts_match_reference_for_every_head() -> None:
    rows = _param_rows()
    assert len(rows) == 38
    for row in rows:
        kind = "linear" if row["head"].startswith("linear") else row["head"]
        options = {"queries": row["M"], "d_out": row["d_out"]} if kind == "ep" else {}
        if kind == "ep" and not row["forward_ok"]:  # M=64, d_out=8: 768 is not divisible by 512
            with pytest.raises(HeadSpecError, match="D=768, M=64, d_out=8"):
                head_cost(kind, dim=768, num_classes=1000, num_tokens=196, **options)
            assert row["total_trainable"] == 64 * 768 + 768 * 96 + 96 * 1000 + 1000
            continue
        cost = head_cost(kind, dim=768, num_classes=1000, num_tokens=196, **options)
        assert (cost.pooling_params, cost.params) == (row["pooling"], row["total_trainable"]), row


def test_mhca_parameter_count() -> None:
    cost = head_cost("mhca", dim=768, num_classes=1000, num_tokens=196)
    assert cost.pooling_params == 4 * 768**2 + 4 * 768 + 768  # projections with biases + query
    assert cost.params == cost.pooling_params + 769_000


# GFLOP/img from docs/EP_SPEC.md §2.5 (reference modules, torch.utils.flop_counter, ViT-B/16).
SPEC_GFLOP = {
    "aim": 0.465,
    "jepa": 0.476,
    "siglip": 0.476,
    "cait": 0.479,
    "dinovit": 2.894,
    "clip": 1.050,
    "coca": 0.427,
    "cae": 0.467,
    "abmilp": 1.276,
    "simpool": 0.235,
    "esimpool": 0.002,
    "dolg": 0.233,
    "cbam": 0.002,
}


def test_heads_table_matches_spec() -> None:
    rows = {(r.kind, r.variant): r for r in heads_table()}
    assert rows[("ep", "queries=32,d_out=1")].params == 1_383_400
    assert rows[("ep", "queries=8,d_out=1")].params == 1_364_968
    assert rows[("linear", "tokens='cls'")].params == 769_000
    assert rows[("linear", "tokens='cls'")].flops == 2 * 768 * 1000
    assert rows[("ep", "queries=32,d_out=1")].flops == 2 * (2 * 32 * 196 * 768 + 768 * 768 + 768 * 1000)
    for kind, gflop in SPEC_GFLOP.items():
        (row,) = [r for (k, _), r in rows.items() if k == kind]
        assert abs(row.flops / 1e9 - gflop) < 6e-4, (kind, row.flops)
    assert [k for k, _ in rows][:4] == ["linear", "ep", "ep", "mhca"]


def test_heads_table_skips_baselines_that_do_not_fit() -> None:
    kinds = {r.kind for r in heads_table(dim=1280, num_classes=10, num_tokens=256, queries=(32,))}
    assert "esimpool" not in kinds  # 1280 is not divisible by its 12 heads
    assert {"linear", "ep", "mhca", "jepa", "cbam"} <= kinds
    with pytest.raises(HeadSpecError, match="esimpool"):
        heads_table(dim=1280, num_classes=10, num_tokens=256, kinds=["esimpool"])


def test_format_heads_table_is_aligned() -> None:
    text = format_heads_table(heads_table(dim=64, num_classes=10, num_tokens=16, queries=(4,)))
    lines = text.splitlines()
    assert lines[0].split() == ["kind", "variant", "pooling", "params", "total", "params", "MFLOP/img"]
    assert set(lines[1]) <= {"-", " "}
    assert any(line.startswith("ep ") and "queries=4,d_out=1" in line for line in lines)
    gflop_column = lines[0].index("MFLOP/img") + len("MFLOP/img")
    assert all(len(line) == gflop_column for line in lines[2:])  # right-aligned last column


def test_builtin_head_kinds_are_the_registry_s() -> None:
    """The torch-free list `epcache probe` checks --head against before torch loads cannot drift from the registry."""
    assert list(BUILTIN_HEAD_KINDS) == list_heads() + list_solvers()
    assert list(TRAINED_HEAD_KINDS) == list_heads() and list(SOLVER_KINDS) == list_solvers()
