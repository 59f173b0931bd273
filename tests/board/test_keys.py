"""A board cell's key: one protocol per sweep, whatever lr/wd/input the configs swept."""

from __future__ import annotations

from epcache.board.keys import BOARD_COLUMNS, BOARD_KEY, head_family, input_label, protocol_key


def _row(**proto: object) -> dict:
    base = {"recipe": "auto", "lr": 0.1, "wd": 0.0, "tokens": "cls", "layers": [3], "batch_size": 64}
    return {"protocol": {**base, **proto}, "config": {"kind": "ep", "layer": 3, "tokens": "patch"},
            "input": {"layers": [3], "tokens": "patch", "layer_mix": "none"}}


def test_protocol_key_ignores_the_swept_axes_but_not_the_protocol() -> None:
    assert protocol_key(_row()) == protocol_key(_row(lr=0.01, wd=0.05, tokens="gap", layers=[1, 2]))
    assert protocol_key(_row()) != protocol_key(_row(batch_size=128))
    assert len(protocol_key(_row())) == 16


def test_labels_and_columns() -> None:
    row = _row()
    assert head_family(row) == "ep"
    assert input_label(row) == "L3 patch"
    row["input"] = {"layers": [8, 11], "tokens": "cls", "layer_mix": "concat"}
    assert input_label(row) == "L8+L11 cls (concat)"
    assert set(BOARD_KEY) <= set(BOARD_COLUMNS)
