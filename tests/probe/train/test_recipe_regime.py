"""A recipe outside the regime it was designed for says so in one line, with the scaled lr; ep-paper refuses.

The case that motivated it: ep-paper on 180 training images shrinks its batch from 4096 to 16, so
the blr rule scales LARS's lr to 0.00625, and 990 steps later the probe is at chance while
nearest-class-mean is perfect on the same tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from solver_helpers import class_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.config.protocol import RegimeVerdict, lr_text, regime_verdict, resolve_protocol
from epcache.probe.config.recipes import RECIPES, format_recipes, get_recipe

EP_FIX = "use --recipe auto, or --lr 0.1 --min-steps 2000"


@pytest.fixture(scope="module")
def store200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ten class centres in 32 dimensions with unit noise: nearest class mean is 100% on val (asserted below)
    return class_store(tmp_path_factory.mktemp("regime") / "s.zarr", n_train=200, n_val=200, num_classes=10, dim=32,
                       noise=1.0)


def _verdict(n_train: int, recipe: str = "ep-paper", **flags: object) -> tuple[str, RegimeVerdict | None]:
    errors: list[str] = []
    c = ProbeConfig(store="s", recipe=recipe, **flags)  # type: ignore[arg-type]
    p = resolve_protocol(c, get_recipe(recipe), n_train=n_train, errors=errors)
    assert errors == []
    return lr_text(p), regime_verdict(c, get_recipe(recipe), p)


def _out(n_train: int, recipe: str = "ep-paper", **flags: object) -> tuple[str, RegimeVerdict]:
    text, verdict = _verdict(n_train, recipe, **flags)
    assert verdict is not None
    return text, verdict


def test_ep_paper_on_200_samples_refuses_and_names_the_fix(store200: Path) -> None:
    with pytest.raises(ConfigError) as err:
        probe_store(ProbeConfig(store=str(store200), head=("linear",), recipe="ep-paper", device="cpu"), progress=False)
    msg = str(err.value)
    # auto selection on 200 rows is cv5: the protocol is sized on a fold's 160 training rows (90 x 10 steps)
    assert msg.startswith("recipe ep-paper is outside the regime it was designed for: "
                          "lr 0.00625 (blr 0.1 x 16/256) is below its 0.1..6.4, 900 steps are below its 2000; ")
    assert EP_FIX in msg and "an explicit --lr or --blr runs it anyway" in msg
    cli = CliRunner().invoke(app, ["probe", "--store", str(store200), "--recipe", "ep-paper", "--no-progress"])
    assert cli.exit_code == 2 and EP_FIX in cli.output and "Traceback" not in cli.output


@pytest.mark.slow  # 2700 LARS steps: the fix trained, and NCM beside it
def test_the_suggested_fix_learns_what_ncm_gets_right(store200: Path) -> None:
    # the lr of ep-paper's batch-256 regime and its step floor; as-is it gets 18.5%, NCM 100%
    res = probe_store(ProbeConfig(store=str(store200), head=("linear", "ncm"), recipe="ep-paper", lr=(0.1,),
                                  min_steps=2000, device="cpu"), progress=False)
    by_kind = {r["config"]["kind"]: r["metrics"]["eval"]["top1"] for r in res.rows}
    assert by_kind["ncm"] == 1.0 and by_kind["linear"] >= 0.9, by_kind
    assert "recipe ep-paper: batch 16, lr 0.1, 90 epochs x 30 steps = 2700 steps" in res.notes[0]  # cv5 folds: 160
    assert not any("outside the regime" in n for n in res.notes)  # both values are the user's and in range


def test_forced_ep_paper_prints_one_line_naming_what_is_still_outside(store200: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    res = probe_store(ProbeConfig(store=str(store200), head=("linear",), recipe="ep-paper", blr=(0.1,), epochs=2,
                                  device="cpu"), progress=True)
    assert "lr 0.00625 (blr 0.1 x 16/256)" in res.notes[0]  # the scaled lr in the plan line
    lines = [n for n in res.notes if "outside the regime" in n]
    assert lines == ["recipe ep-paper is outside the regime it was designed for: lr 0.00625 (blr 0.1 x 16/256) is "
                     "below its 0.1..6.4; use --recipe auto, or --lr 0.1"]  # --epochs is the user's: not judged
    assert capsys.readouterr().err.count("outside the regime") == 1
    quiet = probe_store(ProbeConfig(store=str(store200), head=("linear",), recipe="ep-paper", lr=(1.0,), epochs=2,
                                    device="cpu", out=None), progress=False)
    assert not any("outside the regime" in n for n in quiet.notes)


def test_each_recipe_states_its_regime_and_is_judged_by_it() -> None:
    assert _verdict(1_153_051) == ("lr 1.6 (blr 0.1 x 4096/256)", None)  # ImageNet: the designed regime
    text, short = _out(2048)  # batch 256: the smallest batch in the lr regime, but 90 x 8 steps
    assert text == "lr 0.1 (blr 0.1 x 256/256)" and not short.refuse
    assert short.line.endswith(": 720 steps are below its 2000; use --recipe auto, or --min-steps 2000")
    text, small = _out(2047)  # batch 128: lr 0.05
    assert text == "lr 0.05 (blr 0.1 x 128/256)" and small.refuse
    text, dino = _out(180, "dinov2-linear")
    assert text == "13 lrs 6.25e-07..0.00625 (blr 1e-05..0.1 x 16/256)" and not dino.refuse
    assert dino.line.endswith(": 13 lrs 6.25e-07..0.00625 (blr 1e-05..0.1 x 16/256) are below its 0.025..25.6; "
                              "use --recipe auto, or --lr LRS (absolute)")
    assert _verdict(180, "auto") == ("12 lrs 0.0001..0.5", None)  # auto floors its own length
    _, steps = _out(180, "ep-paper", lr=(1.0,))
    assert steps.line.endswith(": 990 steps are below its 2000; use --recipe auto, or --min-steps 2000")
    assert not steps.refuse
    assert _verdict(180, "capi-attentive", lr=(0.5,))[1] is None  # an explicit --lr is the user's choice
    table = format_recipes()
    for r in RECIPES.values():
        assert f"regime: peak lr {r.regime.lr[0]:g}..{r.regime.lr[1]:g}, >= {r.regime.min_steps} steps" in table
    assert "refused outside its lr range unless --lr or --blr is given" in table
