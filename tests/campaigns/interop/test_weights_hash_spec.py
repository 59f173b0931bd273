"""The random-init weights hash of cache_layout.md §2.5, recomputed from the text with timm and torch only.

The §2.5 code block is cut out of the document verbatim and run on the root documents of stores that
`epcache extract --random-init` wrote: a ViT given ``img_size`` as an option, a ViT given it in
``model_kwargs`` and a convnet (which takes no ``img_size``), each with a non-default seed. It must
give the recorded ``backbone.weights_sha256``; and each point the text fixes (the seed, no
classifier, the order by name) changes the hash, so a text that left one out could not match.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from extract_helpers import TINY_VIT, make_imagefolder

from epcache.extract import ExtractConfig, extract_store
from epcache.store import open_store

LAYOUT = Path(__file__).resolve().parents[3] / "cache_layout.md"
CASES = {
    "vit-img-size-option": {"model": TINY_VIT, "model_kwargs": {"depth": 2}, "img_size": 32, "seed": 3},
    "vit-img-size-kwarg": {"model": TINY_VIT, "model_kwargs": {"depth": 1, "img_size": 32}, "seed": 0},
    "convnet": {"model": "resnet18", "img_size": 32, "seed": 5},
}


def recipe() -> Any:
    """``random_init_sha256`` as §2.5 writes it."""
    text = LAYOUT.read_text(encoding="utf-8")
    start = text.index("\n### 2.5")
    section = text[start : text.index("\n### 2.6", start)]  # §2.5 alone: later sections have examples of their own
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    ns: dict[str, Any] = {}
    exec(compile(code, "cache_layout.md §2.5", "exec"), ns)
    return ns["random_init_sha256"]


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("weights_hash")
    data = make_imagefolder(root / "data", splits={"train": 2, "val": 2})
    docs = {}
    for name, kw in CASES.items():
        cfg = ExtractConfig(data=data, out=root / f"{name}.zarr", random_init=True, batch_size=2, workers=0,
                            allow_duplicate=True, **kw)
        assert extract_store(cfg, progress=False).status == "complete"
        with open_store(cfg.out) as st:
            docs[name] = st._stored_doc
    return docs


@pytest.mark.parametrize("case", list(CASES))
def test_the_text_recomputes_the_recorded_hash(documents: dict[str, dict], case: str) -> None:
    doc = documents[case]
    assert doc["backbone"]["source"] == "random-init" and doc["views"]["seed"] == CASES[case]["seed"]
    assert recipe()(doc) == doc["backbone"]["weights_sha256"]


def test_each_point_the_text_fixes_changes_the_hash(documents: dict[str, dict]) -> None:
    import timm
    import torch

    doc = documents["vit-img-size-option"]
    want = doc["backbone"]["weights_sha256"]
    assert recipe()({**doc, "views": {**doc["views"], "seed": doc["views"]["seed"] + 1}}) != want

    def digest(model: torch.nn.Module, order: Any) -> str:
        h = hashlib.sha256()
        for name, t in order(model.state_dict().items()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def build(**kw: Any) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(doc["views"]["seed"])
            return timm.create_model(TINY_VIT, pretrained=False, depth=2, img_size=32, **kw)

    assert digest(build(num_classes=0), sorted) == want  # the text's reading
    assert digest(build(num_classes=0), list) != want  # state_dict order, not sorted by name
    assert digest(build(), sorted) != want  # with the classifier
