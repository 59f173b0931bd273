"""A real checkpoint series for tests: a tiny timm ViT trained a few steps, a state_dict saved every step."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from extract_helpers import TINY_VIT, TINY_VIT_KWARGS, make_imagefolder

STEPS = (0, 100, 200, 300)


def train_checkpoints(folder: Path, steps: tuple[int, ...] = STEPS) -> list[Path]:
    """``folder/checkpoint_<step>.pth`` after each of ``len(steps)`` SGD steps (plain tensors: weights_only loads)."""
    torch.manual_seed(0)
    model = timm.create_model(TINY_VIT, pretrained=False, num_classes=3, **TINY_VIT_KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for step in steps:
        x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        path = folder / f"checkpoint_{step}.pth"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def series_data(root: Path) -> Path:
    """A handful of generated images: 12 train, 6 val, 3 classes."""
    return make_imagefolder(root, splits={"train": 12, "val": 6})


EXTRACT_ARGS = ["--model", TINY_VIT, "--model-kwargs", '{"depth": 2, "img_size": 32}', "--workers", "0",
                "--batch-size", "4", "--chunk-samples", "4", "--no-progress"]
