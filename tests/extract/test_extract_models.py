"""Model aliases resolve to real timm names; unknown names fail with suggestions; layer specs parse."""

from __future__ import annotations

import pytest
import timm

from epcache.errors import ConfigError, ModelError, UnknownLayerError
from epcache.extract import list_model_aliases, parse_layers, resolve_model


def test_every_alias_points_at_timm_weights_or_says_it_has_none() -> None:
    aliases = list_model_aliases()
    names = [a.alias for a in aliases]
    assert len(names) == len(set(names))
    required = {
        "mae_vits",
        "mae_vitb",
        "mae_vitl",
        "dino_vitb",
        "dinov2_vits",
        "dinov2_vitb",
        "dinov2_vitl",
        "dinov2_vits_reg",
        "dinov2_vitb_reg",
        "dinov2_vitl_reg",
        "clip_vitb16",
        "siglip_vitb16",
        "beitv2_vitb",
        "eva02_vitb",
        "deit3_vitb",
    }
    assert required <= set(names)
    pretrained = set(timm.list_pretrained())
    for a in aliases:
        if a.timm_weights:
            assert a.timm_name in pretrained, a
        else:
            assert timm.is_model(a.timm_name) and a.note, a  # an architecture, and a note saying what to pass


def test_alias_and_timm_names_resolve() -> None:
    r = resolve_model("mae_vitb")
    assert (r.timm_name, r.architecture, r.tag) == ("vit_base_patch16_224.mae", "vit_base_patch16_224", "mae")
    assert r.alias is not None and r.alias.family == "MAE"
    r = resolve_model("vit_small_patch14_reg4_dinov2.lvd142m")
    assert r.alias is None and r.tag == "lvd142m"
    assert resolve_model("resnet18").tag == ""


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'mae_vitbb'.*did you mean.*mae_vitb"):
        resolve_model("mae_vitbb")
    with pytest.raises(ModelError, match="vit_base_patch16_224"):
        resolve_model("vit_base_patch16_244")


def test_unknown_tag_lists_known_tags() -> None:
    with pytest.raises(ModelError, match=r"no weights tag 'nope'.*known tags:.*mae"):
        resolve_model("vit_base_patch16_224.nope")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", (0, 1, 2, 3, 4, 5)),
        ("last", (5,)),
        ("last:2", (4, 5)),
        ("-4:", (2, 3, 4, 5)),
        ("1:3", (1, 2)),
        ("0,5,-1", (0, 5)),
        (" 3 , 0 ", (0, 3)),
        ("0,-2:", (0, 4, 5)),
    ],
)
def test_layer_specs_resolve_to_sorted_absolute_indices(spec: str, expected: tuple[int, ...]) -> None:
    assert parse_layers(spec, 6) == expected


@pytest.mark.parametrize("spec", ["6", "-7", "last:7", "0:9"])
def test_out_of_range_layers_name_the_valid_range(spec: str) -> None:
    with pytest.raises(UnknownLayerError, match=r"valid indices are 0\.\.5 \(or -6\.\.-1\)"):
        parse_layers(spec, 6, model="m")


@pytest.mark.parametrize("spec", ["", "first", "1.5", "3:1"])
def test_unparseable_or_empty_layer_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_layers(spec, 6)
