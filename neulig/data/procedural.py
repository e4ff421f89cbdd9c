"""Procedurally generated image tasks with class names, deterministic from a seed.

Each generator returns uint8 images [N, 3, S, S] and int64 labels with balanced classes. ``style``
selects the rendering: ``"task"`` images (cluttered, coloured, noisy) are what experts are
fine-tuned and evaluated on; ``"clean"`` images (plain backgrounds) form the offline pretraining
corpus of the tiny backbone, so zero-shot transfer to the task style is real but imperfect.

``scale`` (shapes, textures) multiplies every length in pixels (stroke widths, texture periods), so
``size=224, scale=7`` renders the 32-pixel designs at full CLIP resolution with the same random draws
(the ``synthetic_*`` datasets). The default ``scale=1`` reproduces the original images exactly.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond", "arrow")
TEXTURES = (
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard",
    "polka dots", "grid", "waves", "noise",
)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = tuple("ABCDEFGHJK")


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    return labels


def _colour(rng: np.random.Generator, bright: bool) -> tuple[int, int, int]:
    if bright:
        return tuple(int(v) for v in rng.integers(130, 256, 3))
    return tuple(int(v) for v in rng.integers(0, 110, 3))


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if kind == "square":
        return rot([(-r, -r), (r, -r), (r, r), (-r, r)])
    if kind == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, 4)[:3]])
    if kind == "hexagon":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in np.arange(6) * math.pi / 3])
    if kind == "diamond":
        return rot([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)])
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        return rot(pts)
    if kind == "cross":
        w = 0.35 * r
        return rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)])
    if kind == "arrow":
        return rot([(-r, -0.25 * r), (0.2 * r, -0.25 * r), (0.2 * r, -0.7 * r), (r, 0), (0.2 * r, 0.7 * r),
                    (0.2 * r, 0.25 * r), (-r, 0.25 * r)])
    raise ValueError(kind)


def make_shapes(
    n: int, seed: int, size: int = 32, style: str = "task", scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric shapes; the task style adds a coloured noisy background and a distractor stroke."""
    rng = np.random.default_rng(seed)
    stroke = max(1, round(scale))
    labels = _balanced_labels(n, len(SHAPES), rng)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        task = style == "task"
        bg = _colour(rng, bright=False) if task else (0, 0, 0)
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        if task:
            for _ in range(2):
                xy = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
                draw.line(xy, fill=_colour(rng, bright=bool(rng.integers(2))), width=stroke)
        r = rng.uniform(0.22, 0.38) * size
        cx, cy = rng.uniform(r, size - r, 2)
        fill = _colour(rng, bright=True) if task else (255, 255, 255)
        kind = SHAPES[label]
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_shape_polygon(kind, cx, cy, r, rng.uniform(-0.4, 0.4)), fill=fill)
        arr = np.asarray(img, dtype=np.float32)
        if task:
            arr += rng.normal(0, 18, arr.shape)
        out[i] = np.clip(arr, 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


def _texture(kind: str, size: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(4.0, 8.0) * scale
    phase = rng.uniform(0, 2 * math.pi)
    k = 2 * math.pi / period
    if kind == "horizontal stripes":
        v = np.sin(k * y + phase) > 0
    elif kind == "vertical stripes":
        v = np.sin(k * x + phase) > 0
    elif kind == "diagonal stripes":
        sign = 1 if rng.integers(2) else -1
        v = np.sin(k * (x + sign * y) / math.sqrt(2) + phase) > 0
    elif kind == "checkerboard":
        v = (np.sin(k * x + phase) > 0) ^ (np.sin(k * y + phase) > 0)
    elif kind == "polka dots":
        cx, cy = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        v = cx**2 + cy**2 < (period / 3.5) ** 2
    elif kind == "grid":
        v = ((x + phase) % period < 1.3 * scale) | ((y + phase) % period < 1.3 * scale)
    elif kind == "waves":
        v = np.sin(k * y + 2.0 * np.sin(0.5 * k * x) + phase) > 0
    elif kind == "noise":
        cell = max(1, round(4 * scale))
        coarse = rng.random((size // cell + 1, size // cell + 1))
        v = np.kron(coarse, np.ones((cell, cell)))[:size, :size] > 0.5
    else:
        raise ValueError(kind)
    return v.astype(np.float32)


def make_textures(
    n: int, seed: int, size: int = 32, style: str = "task", scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Periodic textures; the task style uses two random colours and pixel noise, clean is black/white."""
    rng = np.random.default_rng(seed)
    labels = _balanced_labels(n, len(TEXTURES), rng)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        mask = _texture(TEXTURES[label], size, rng, scale)[..., None]
        if style == "task":
            fg, bg = np.array(_colour(rng, True), np.float32), np.array(_colour(rng, False), np.float32)
            arr = mask * fg + (1 - mask) * bg + rng.normal(0, 20, (size, size, 3))
        else:
            arr = mask * 255.0 * np.ones(3, np.float32)
        out[i] = np.clip(arr, 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


@lru_cache(maxsize=1)
def _font_paths() -> tuple[str, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Italic.ttf")
    return tuple(str(folder / n) for n in names if (folder / n).is_file())


def render_glyph(char: str, size: int, fonts: tuple[str, ...], rng: np.random.Generator,
                 scale: tuple[float, float], max_angle: float) -> Image.Image:
    """One white-on-black character: a random font, height ``scale`` of ``size``, random place and angle."""
    font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.uniform(*scale) * size))
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((0, 0), char, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    x = rng.uniform(0, max(size - w, 1)) - box[0]
    y = rng.uniform(0, max(size - h, 1)) - box[1]
    draw.text((x, y), char, fill=255, font=font)
    return img.rotate(rng.uniform(-max_angle, max_angle), resample=Image.BILINEAR)


def make_glyphs(
    n: int, seed: int, chars: tuple[str, ...], size: int = 32, style: str = "clean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Characters rendered from the fonts matplotlib ships, jittered in size, place and angle."""
    rng = np.random.default_rng(seed)
    labels = _balanced_labels(n, len(chars), rng)
    fonts = _font_paths()
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        img = render_glyph(chars[label], size, fonts, rng, scale=(0.55, 0.85), max_angle=15)
        arr = np.asarray(img, dtype=np.float32)[..., None].repeat(3, -1)
        if style == "task":
            arr = arr + rng.normal(0, 20, arr.shape)
        out[i] = np.clip(arr, 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()
