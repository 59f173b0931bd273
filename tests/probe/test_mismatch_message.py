"""Store-mismatch errors name the differing fields, shortened, instead of printing both documents."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from extract_helpers import make_imagefolder, tiny_config
from probe_helpers import config, make_meta, write_store

from epcache.errors import ProvenanceMismatchError
from epcache.probe import probe_store
from epcache.store.describe.diff import describe_differences, differing_fields


def preprocessing(mean: list[float], std: list[float]) -> dict[str, Any]:
    """What an extraction records: timm's data config and the eval transform's reprs (long tensors)."""
    t = lambda v: ", ".join(f"{x:.4f}" for x in v)  # noqa: E731
    return {
        "data_config": {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": mean, "std": std,
                        "crop_pct": 0.9, "crop_mode": "center"},
        "eval_transform": ["Resize(size=35, interpolation=bicubic, max_size=None, antialias=True)",
                           "CenterCrop(size=(32, 32))", "MaybeToTensor()",
                           f"Normalize(mean=tensor([{t(mean)}]), std=tensor([{t(std)}]))"],
        "model_kwargs": {}, "img_size": 32, "amp": None,
        "token_source": "forward_intermediates (tokens); prefix tokens then patches",
    }


@pytest.mark.reliability_bad_input
def test_eval_store_of_another_model_is_refused_in_a_short_line(tmp_path: Path) -> None:
    ours = dataclasses.replace(make_meta(name="vit_toy"), preprocessing=preprocessing([0.5] * 3, [0.5] * 3))
    theirs = dataclasses.replace(make_meta(name="deit_toy"),
                                 preprocessing=preprocessing([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    store = write_store(tmp_path / "ours.zarr", n_train=40, n_val=16, meta=ours)
    other = write_store(tmp_path / "theirs.zarr", n_train=40, n_val=16, meta=theirs)
    with pytest.raises(ProvenanceMismatchError) as info:
        probe_store(config(store, eval_store=str(other)), progress=False)
    message = str(info.value)
    without_paths = message.replace(str(other), "").replace(str(store), "")
    assert len(without_paths) < 300, message
    assert "\n" not in message and "tensor(" not in message and "{" not in message
    assert "backbone: 'vit_toy' vs 'deit_toy'" in message
    assert "preprocessing.data_config.mean: [0.5, 0.5, 0.5] vs [0.485, 0.456, 0.406]" in message
    assert "and 2 more (preprocessing.data_config.std" in message  # the rest is counted, not printed whole
    assert "extract both with the same backbone, weights and preprocessing" in message


def test_differing_fields_are_dotted_paths_of_the_leaves() -> None:
    a = {"backbone": {"name": "vit", "sha": "x"}, "pre": {"t": ["Resize(35)", "Normalize(mean=tensor([0.5]))"]},
         "layers": [10, 11]}
    b = {"backbone": {"name": "vit", "sha": "y"}, "pre": {"t": ["Resize(35)", "Normalize(mean=tensor([0.4]))"]},
         "layers": [11], "extra": 1}
    assert [p for p, _, _ in differing_fields(a, b)] == ["backbone.sha", "pre.t[1]", "layers", "extra"]
    assert describe_differences({"x": 1}, {"x": 1}) == "no field differs"
    text = describe_differences(a, b, budget=1000)
    assert "layers: [10, 11] vs [11]" in text and "extra: (none) vs 1" in text


def test_long_values_keep_the_part_that_differs() -> None:
    a = {"transform": "Normalize(mean=tensor([0.4850, 0.4560, 0.4060]), std=tensor([0.2290, 0.2240, 0.2250]))"}
    b = {"transform": "Normalize(mean=tensor([0.5000, 0.5000, 0.5000]), std=tensor([0.5000, 0.5000, 0.5000]))"}
    text = describe_differences(a, b)
    assert text.startswith("transform: '...")  # the shared "Normalize(mean=tensor([" is cut
    assert "0.4850" in text and "0.5000" in text and len(text) < 80


def test_the_budget_counts_what_it_leaves_out() -> None:
    a = {f"field{i}": "a" * 20 for i in range(12)}
    b = {f"field{i}": "b" * 20 for i in range(12)}
    text = describe_differences(a, b, budget=100)
    assert len(text) < 200 and text.count(" vs ") < 12
    shown = text.count(" vs ")
    assert f"and {12 - shown} more (field{shown}, " in text


@pytest.mark.reliability_bad_input
def test_extracting_into_a_store_of_another_configuration_names_the_fields(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 3, "val": 2})
    out = tmp_path / "s.zarr"
    from epcache.extract import extract_store

    extract_store(tiny_config(data, out, layers="1"), progress=False)
    with pytest.raises(ProvenanceMismatchError) as info:
        extract_store(tiny_config(data, out, layers="0", img_size=48, model_kwargs={"depth": 2, "img_size": 48}),
                      progress=False)
    message = str(info.value)
    assert "layers: [1] vs [0]" in message and "the store's vs this run's" in message
    assert "\n" not in message and "{" not in message
    assert len(message.replace(str(out), "")) < 400
    assert "Pass --overwrite to replace it" in message
