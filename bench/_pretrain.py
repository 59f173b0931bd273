"""A genuinely pretrained backbone for the quality bench, trained here on images the project draws itself.

No pretrained weights can be downloaded and no installed package ships any. A random-init ViT's
tokens are badly conditioned (the class signal sits in low-variance, correlated directions), so a
probe comparison on them measures a quirk of random features rather than what users see. Instead a
small timm ViT (ViT-Tiny's layout at a quarter of its width: 4 blocks, width 96, patch 8, 32 px; the
narrow width and coarse patches buy about 8x the steps per CPU minute of the random bench's ViT) is
pretrained with supervision on synthetic line drawings: the demo's shapes (epcache.demo: circle,
square, triangle, cross, ring, bar) plus straight strokes in four orientations, open arcs in four
directions and 19 capital letters in Pillow's bundled font (none a digit could pass for), 33
classes, each drawn light on dark at a random size, place, rotation, stroke width, brightness and
blur, with pixel noise. Every batch is freshly drawn from a seeded generator, so the run is
reproducible and never sees a digit: the probe's data (sklearn's handwritten digits) is disjoint
from it by construction.

The checkpoint is a plain safetensors state dict of the timm model (its 33-way head included, which
``epcache extract --weights`` drops as a classifier), so the bench extracts through the real-weights
path, exactly as a user with a local checkpoint would.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

MODEL = "vit_tiny_patch16_224"
MODEL_KWARGS = {"depth": 4, "patch_size": 8, "embed_dim": 96, "num_heads": 3}
IMG = 32
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")  # the demo's shapes, drawn as line art
LETTERS = tuple("ACDEFHJKLMNPRTUVWXY")  # capitals, less those a digit could pass for (B G I O Q S Z)
CLASSES = (*SHAPES, *(f"stroke{a}" for a in (0, 45, 90, 135)), *(f"arc{a}" for a in (0, 90, 180, 270)), *LETTERS)


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run; every field enters the cached checkpoint's name, so a change retrains."""

    steps: int = 800
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    seed: int = 0

    def tag(self) -> str:
        """A file-name-safe summary of the run, so a cache directory holds one checkpoint per recipe."""
        return "vit4w96p8_32_" + "_".join(f"{k}{v}" for k, v in asdict(self).items())


def draw(rng: np.random.Generator, label: int) -> Image.Image:
    """One 32 px grayscale-as-RGB line drawing of class ``label``, light on dark like the digits."""
    s = 4 * IMG  # drawn at 4x, then blurred and shrunk: soft strokes like upsampled 8x8 digits
    img = Image.new("L", (s, s), int(rng.integers(0, 40)))
    d = ImageDraw.Draw(img)
    ink = int(rng.integers(150, 256))
    width = int(rng.integers(8, 20))
    r = float(rng.uniform(0.22, 0.42)) * s  # half extent of the object
    cx, cy = (float(v) for v in rng.uniform(0.5 * s - (0.48 * s - r), 0.5 * s + (0.48 * s - r), size=2))
    box = [cx - r, cy - r, cx + r, cy + r]
    name = CLASSES[label]
    fill = ink if rng.random() < 0.3 else None  # shapes: mostly outlines (strokes), sometimes filled
    if name == "circle":
        d.ellipse(box, fill=fill, outline=ink, width=width)
    elif name == "square":
        d.rectangle(box, fill=fill, outline=ink, width=width)
    elif name == "triangle":
        pts = [(cx - r, cy + r), (cx, cy - r), (cx + r, cy + r)]
        d.polygon(pts, fill=fill, outline=ink, width=width)
    elif name == "cross":
        d.line([(cx - r, cy), (cx + r, cy)], fill=ink, width=width)
        d.line([(cx, cy - r), (cx, cy + r)], fill=ink, width=width)
    elif name == "ring":
        d.ellipse(box, outline=ink, width=width)
        d.ellipse([cx - r / 2.5, cy - r / 2.5, cx + r / 2.5, cy + r / 2.5], outline=ink, width=max(4, width // 2))
    elif name == "bar":
        d.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=fill, outline=ink, width=width)
    elif name.startswith("stroke"):
        a = math.radians(int(name[6:]) + float(rng.uniform(-12, 12)))
        dx, dy = r * math.cos(a), -r * math.sin(a)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=ink, width=width)
    elif name in LETTERS:  # Pillow's bundled font at a random size and weight: strokes in a class-specific layout
        font = ImageFont.load_default(size=int(2.2 * r))
        d.text((cx, cy), name, fill=ink, font=font, anchor="mm", stroke_width=int(rng.integers(0, 6)), stroke_fill=ink)
    else:  # an open arc: half a circle, opening towards 0/90/180/270 degrees
        start = int(name[3:]) + 90 + float(rng.uniform(-15, 15))
        d.arc(box, start=-(start + 180), end=-start, fill=ink, width=width)
    if name in SHAPES or name in LETTERS:
        turn = rng.uniform(-25, 25) if name in SHAPES else rng.uniform(-12, 12)
        img = img.rotate(float(turn), resample=Image.BILINEAR)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.0, 5.0)))).resize((IMG, IMG), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) + rng.normal(0.0, float(rng.uniform(0, 8)), size=(IMG, IMG))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def batch(rng: np.random.Generator, n: int, mean: float, std: float) -> tuple[object, object]:
    """``n`` fresh drawings of uniformly drawn classes, normalised as the extractor normalises them."""
    import torch

    y = rng.integers(0, len(CLASSES), size=n)
    x = np.stack([np.asarray(draw(rng, int(c)), dtype=np.float32) for c in y]) / 255.0
    x = (x - mean) / std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)


def pretrain(out: Path, config: PretrainConfig = PretrainConfig(), log: bool = False) -> Path:
    """Train the bench's ViT on the line drawings and write its state dict to ``out`` (safetensors)."""
    import timm
    import torch
    from safetensors.torch import save_file

    rng = np.random.default_rng(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = timm.create_model(MODEL, pretrained=False, img_size=IMG, num_classes=len(CLASSES), **MODEL_KWARGS)
    cfg = model.pretrained_cfg
    mean, std = float(np.mean(cfg["mean"])), float(np.mean(cfg["std"]))  # 0.5 / 0.5 for this ViT
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - config.warmup) / max(1, config.steps - config.warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    t0, seen, hits = time.perf_counter(), 0, 0
    for step in range(config.steps):
        x, y = batch(rng, config.batch, mean, std)
        logits = model(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen, hits = seen + len(y), hits + int((logits.argmax(1) == y).sum())
        if log and (step + 1) % 100 == 0:
            print(f"  pretrain step {step + 1}/{config.steps}: loss {loss.item():.3f}, "
                  f"train top-1 {100 * hits / seen:.1f}% (last 100 steps), {time.perf_counter() - t0:.0f} s",
                  flush=True)
            seen = hits = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    meta = {k: str(v) for k, v in asdict(config).items()} | {"classes": ",".join(CLASSES), "model": MODEL}
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(out)  # a run cut short never leaves a half-written checkpoint that a later run would reuse
    return out


def checkpoint(cache: Path, config: PretrainConfig = PretrainConfig(), log: bool = False) -> tuple[Path, bool]:
    """The cached checkpoint for ``config`` under ``cache``, trained first if absent; and whether it was reused."""
    path = cache / f"{config.tag()}.safetensors"
    if path.is_file():
        return path, True
    return pretrain(path, config, log=log), False


def describe() -> str:
    """The architecture in words, for the bench's output."""
    kw = {"embed_dim": 192, **MODEL_KWARGS}
    return f"{kw['depth']} blocks, width {kw['embed_dim']}, patch {kw['patch_size']}, {IMG} px"
