"""The offline pretraining corpus of the tiny backbone: rendered concepts with their captions.

The corpus is a set of *ink maps* (grey masks, uint8 [N, 1, S, S]) of concepts from four families,
each concept named by a class name and captioned with its family's templates:

- digits "zero".."nine": font-rendered (21 fonts matplotlib ships) and procedural handwriting
  (jittered Catmull-Rom strokes of a per-digit skeleton, random pen width, :func:`stroke_digits`);
- letters: 22 capitals from the same fonts;
- shapes: the eight task shapes plus pentagon, ring, crescent and heart, filled or outlined;
- textures: the eight task textures plus zigzag, concentric circles and bricks.

No image of a task dataset is used. The *style* of every training image is drawn per batch by
:class:`Stylist` (random affine warp and pen width for glyphs and shapes, random resolution, colour
pairs of either polarity, distractor strokes, pixel noise), so the rendered concepts are seen in a
broad family of styles of which the tasks' (handwritten, low-resolution, coloured, cluttered) are a
part: zero-shot transfer is real but leaves room for fine-tuning.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from neulig.data import procedural as proc
from neulig.data.registry import SPECS

CORPUS_VERSION = 2  # part of the pretraining cache key: bump when the corpus or its styles change

CORPUS_LETTERS = tuple("ABCDEFGHJKLMNPQRTUVWXY")  # no I, O, S, Z: they read as 1, 0, 5, 2
EXTRA_SHAPES = ("pentagon", "ring", "crescent", "heart")
EXTRA_TEXTURES = ("zigzag", "concentric circles", "bricks")
FONT_NAMES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
)
# handwriting skeletons in a unit box (x right, y down): strokes of ("curve" | "line", points)
DIGIT_STROKES: dict[int, tuple[tuple[str, tuple[tuple[float, float], ...]], ...]] = {
    0: (("curve", ((0.5, 0.04), (0.82, 0.3), (0.75, 0.8), (0.45, 0.96), (0.18, 0.7), (0.22, 0.2), (0.5, 0.04),
                   (0.82, 0.3))),),
    1: (("line", ((0.32, 0.22), (0.55, 0.04), (0.55, 0.96))),),
    2: (("curve", ((0.18, 0.25), (0.45, 0.04), (0.78, 0.22), (0.68, 0.52), (0.2, 0.94))),
        ("line", ((0.2, 0.94), (0.86, 0.94)))),
    3: (("curve", ((0.18, 0.14), (0.55, 0.04), (0.78, 0.25), (0.42, 0.48), (0.8, 0.7), (0.55, 0.96), (0.18, 0.86))),),
    4: (("line", ((0.6, 0.04), (0.14, 0.64), (0.86, 0.64))), ("line", ((0.64, 0.3), (0.64, 0.96)))),
    5: (("line", ((0.8, 0.05), (0.3, 0.05), (0.25, 0.45))),
        ("curve", ((0.25, 0.45), (0.6, 0.36), (0.82, 0.64), (0.55, 0.95), (0.18, 0.86)))),
    6: (("curve", ((0.72, 0.05), (0.36, 0.32), (0.2, 0.7), (0.45, 0.96), (0.76, 0.78), (0.66, 0.52), (0.38, 0.52),
                   (0.22, 0.7))),),
    7: (("line", ((0.14, 0.06), (0.86, 0.06), (0.4, 0.96))),),
    8: (("curve", ((0.5, 0.5), (0.76, 0.27), (0.5, 0.04), (0.24, 0.27), (0.5, 0.5), (0.8, 0.74), (0.5, 0.96),
                   (0.2, 0.74), (0.5, 0.5), (0.76, 0.27))),),
    9: (("curve", ((0.76, 0.3), (0.5, 0.52), (0.24, 0.3), (0.5, 0.06), (0.76, 0.3))),
        ("curve", ((0.76, 0.25), (0.74, 0.6), (0.62, 0.96)))),
}


@dataclass
class Corpus:
    ink: torch.Tensor  # uint8 [N, 1, S, S]
    labels: torch.Tensor  # concept ids [N]
    warp: torch.Tensor  # bool [N]: the image may be warped (glyphs, shapes; never full-frame textures)
    concepts: list[str]
    templates: list[tuple[str, ...]]  # per concept


@lru_cache(maxsize=1)
def corpus_fonts() -> tuple[str, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(str(folder / n) for n in FONT_NAMES if (folder / n).is_file())


def _catmull_rom(points: np.ndarray, per_segment: int = 8) -> np.ndarray:
    """A smooth curve through ``points`` (the ends are held by duplicated end points)."""
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    return np.concatenate([*out, p[-2:-1]])


def stroke_digits(n: int, seed: int, size: int = 32, oversample: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Procedural handwriting: each digit's skeleton with jittered control points, drawn with a round
    pen of random width in a random box, rendered ``oversample`` times larger and downsampled."""
    rng = np.random.default_rng(seed)
    labels = proc._balanced_labels(n, 10, rng)
    big = size * oversample
    out = np.empty((n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        img = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(img)
        w, h = rng.uniform(0.4, 0.7) * big, rng.uniform(0.62, 0.86) * big
        x0, y0 = rng.uniform(0.08 * big, big - w - 0.08 * big), rng.uniform(0.06 * big, big - h - 0.06 * big)
        pen = rng.uniform(0.06, 0.14) * big
        jitter = rng.uniform(0.02, 0.06)
        for kind, pts in DIGIT_STROKES[int(label)]:
            pts = np.asarray(pts) + rng.normal(0, jitter, (len(pts), 2))
            if kind == "curve":
                pts = _catmull_rom(pts)
            xy = [(x0 + x * w, y0 + y * h) for x, y in pts]
            draw.line(xy, fill=255, width=max(1, int(pen)), joint="curve")
            for x, y in (xy[0], xy[-1]):  # round caps
                draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
        out[i] = np.asarray(img.resize((size, size), Image.BOX))
    return out, labels


def font_glyphs(n: int, seed: int, chars: tuple[str, ...], size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Characters from :func:`corpus_fonts`, random in size, place and angle."""
    rng = np.random.default_rng(seed)
    labels = proc._balanced_labels(n, len(chars), rng)
    fonts = corpus_fonts()
    out = np.empty((n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        out[i] = np.asarray(proc.render_glyph(chars[label], size, fonts, rng, scale=(0.55, 0.95), max_angle=12))
    return out, labels


def _extra_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float, fill,
                 outline: int | None) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "pentagon":
        pts = [(cx + r * math.cos(angle - math.pi / 2 + k * 2 * math.pi / 5),
                cy + r * math.sin(angle - math.pi / 2 + k * 2 * math.pi / 5)) for k in range(5)]
        draw.polygon(pts, fill=None if outline else fill, outline=fill if outline else None, width=outline or 1)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    elif kind == "crescent":
        draw.ellipse(box, fill=fill)
        off = 0.45 * r
        draw.ellipse([cx - r + off * math.cos(angle), cy - r + off * math.sin(angle),
                      cx + r + off * math.cos(angle), cy + r + off * math.sin(angle)], fill=0)
    elif kind == "heart":
        t = np.linspace(0, 2 * math.pi, 40)
        x, y = 16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = [(cx + r * a / 17, cy + r * b / 17) for a, b in zip(x, y)]
        draw.polygon(pts, fill=None if outline else fill, outline=fill if outline else None, width=outline or 1)
    else:
        raise ValueError(kind)


def shape_inks(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The task shapes and :data:`EXTRA_SHAPES`, white on black, filled or (a quarter) outlined."""
    names = proc.SHAPES + EXTRA_SHAPES
    rng = np.random.default_rng(seed)
    labels = proc._balanced_labels(n, len(names), rng)
    out = np.empty((n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        r = rng.uniform(0.2, 0.42) * size
        cx, cy = rng.uniform(r, size - r, 2)
        angle = rng.uniform(-0.5, 0.5)
        outline = int(rng.integers(1, 3)) if rng.random() < 0.25 else None
        kind = names[label]
        if kind in EXTRA_SHAPES:
            _extra_shape(draw, kind, cx, cy, r, angle, 255, outline)
        elif kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=None if outline else 255,
                         outline=255 if outline else None, width=outline or 1)
        else:
            draw.polygon(proc._shape_polygon(kind, cx, cy, r, angle), fill=None if outline else 255,
                         outline=255 if outline else None, width=outline or 1)
        out[i] = np.asarray(img)
    return out, labels, names


def _extra_texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, period)
    if kind == "zigzag":
        tri = np.abs(((x + phase) / period) % 2 - 1) * period * 0.8
        return (((y + tri) % period) < period / 2).astype(np.float32)
    if kind == "concentric circles":
        cx, cy = rng.uniform(0, size, 2)
        return (np.sin(2 * math.pi * np.hypot(x - cx, y - cy) / period + phase) > 0).astype(np.float32)
    if kind == "bricks":
        h = period
        row = np.floor((y + phase) / h)
        shift = (row % 2) * period
        mortar = ((y + phase) % h < 1.2) | (((x + shift) % (2 * period)) < 1.2)
        return (~mortar).astype(np.float32)
    raise ValueError(kind)


def texture_inks(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The task textures and :data:`EXTRA_TEXTURES` as binary masks (a random side is the ink)."""
    names = proc.TEXTURES + EXTRA_TEXTURES
    rng = np.random.default_rng(seed)
    labels = proc._balanced_labels(n, len(names), rng)
    out = np.empty((n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        kind = names[label]
        mask = _extra_texture(kind, size, rng) if kind in EXTRA_TEXTURES else proc._texture(kind, size, rng)
        if rng.random() < 0.3:
            mask = 1 - mask
        out[i] = (mask * 255).astype(np.uint8)
    return out, labels, names


FAMILIES = (  # (concepts, caption templates, warpable) in corpus order
    (proc.DIGIT_NAMES, SPECS["digits"].templates, True),
    (CORPUS_LETTERS, SPECS["glyphs"].templates, True),
    (proc.SHAPES + EXTRA_SHAPES, SPECS["shapes"].templates, True),
    (proc.TEXTURES + EXTRA_TEXTURES, SPECS["textures"].templates, False),
)


def corpus_captions() -> tuple[list[str], list[tuple[str, ...]]]:
    """Every concept of the corpus and its caption templates (no image is rendered)."""
    concepts = [c for names, _, _ in FAMILIES for c in names]
    templates = [tuple(t) for names, t, _ in FAMILIES for _ in names]
    return concepts, templates


def pretraining_corpus(n_per_family: int, seed: int, size: int = 32) -> Corpus:
    """The four families, ``n_per_family`` images each (digits: half fonts, half handwriting)."""
    half = n_per_family // 2
    fonts_x, fonts_y = font_glyphs(n_per_family - half, seed + 1, tuple("0123456789"), size)
    hand_x, hand_y = stroke_digits(half, seed + 5, size)
    letters_x, letters_y = font_glyphs(n_per_family, seed + 4, CORPUS_LETTERS, size)
    shapes_x, shapes_y, _ = shape_inks(n_per_family, seed + 2, size)
    tex_x, tex_y, _ = texture_inks(n_per_family, seed + 3, size)
    images = [(np.concatenate([fonts_x, hand_x]), np.concatenate([fonts_y, hand_y])), (letters_x, letters_y),
              (shapes_x, shapes_y), (tex_x, tex_y)]
    inks, labels, warp, concepts, templates = [], [], [], [], []
    for (x, y), (names, family_templates, warpable) in zip(images, FAMILIES):
        inks.append(torch.from_numpy(x)[:, None])
        labels.append(torch.from_numpy(np.asarray(y)).long() + len(concepts))
        warp.append(torch.full((len(y),), warpable))
        concepts.extend(names)
        templates.extend([tuple(family_templates)] * len(names))
    return Corpus(torch.cat(inks), torch.cat(labels), torch.cat(warp), concepts, templates)


class Stylist:
    """Random styles for batches of ink maps: [B, 1, S, S] uint8 -> RGB floats in [0, 1] [B, 3, S, S].

    In order, each image independently: an affine warp (rotation, scale, shear, shift) and a thicker
    or thinner pen, for warpable images; a random resolution (down to 7..16 pixels and back up,
    bilinear); colours: white on black, a bright colour on a dark one, any contrasting pair, or dark
    on light; 0-3 distractor strokes of random colour; Gaussian pixel noise. ``strength`` in [0, 1]
    scales every probability (0: white ink on black, unwarped).
    """

    def __init__(self, strength: float = 1.0):
        self.p = float(strength)

    def __call__(self, ink: torch.Tensor, warp: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        g = generator
        b, _, s, _ = ink.shape

        def u(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=g)

        x = ink.float() / 255
        # geometry (glyphs and shapes only)
        do = warp & (u(b) < 0.8 * self.p)
        if do.any():
            angle = (u(b) - 0.5) * math.radians(40)
            scale = 0.8 + 0.4 * u(b)
            shear = (u(b) - 0.5) * 0.6
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0], theta[:, 0, 1] = cos / scale, (cos * shear - sin) / scale
            theta[:, 1, 0], theta[:, 1, 1] = sin / scale, (sin * shear + cos) / scale
            theta[:, :, 2] = (u(b, 2) - 0.5) * 0.3
            grid = F.affine_grid(theta[do], [int(do.sum()), 1, s, s], align_corners=False)
            x[do] = F.grid_sample(x[do], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        pen = u(b)
        thick = warp & (pen < 0.25 * self.p)
        thin = warp & (pen > 1 - 0.1 * self.p)
        if thick.any():
            x[thick] = F.max_pool2d(x[thick], 3, 1, 1)
        if thin.any():
            x[thin] = -F.max_pool2d(-x[thin], 3, 1, 1) * 0.5 + x[thin] * 0.5
        # resolution
        low = u(b) < 0.35 * self.p
        if low.any():
            res = torch.randint(7, 17, (1,), generator=g).item()
            small = F.interpolate(x[low], size=(res, res), mode="area")
            x[low] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False).clamp(0, 1)
        # colours
        mode = u(b)
        fg, bg = torch.ones(b, 3), torch.zeros(b, 3)
        bright = (mode < 0.35 * self.p)
        fg[bright] = 0.5 + 0.5 * u(int(bright.sum()), 3)
        bg[bright] = 0.43 * u(int(bright.sum()), 3)
        pair = (mode >= 0.35 * self.p) & (mode < 0.55 * self.p)
        a, c = u(b, 3), u(b, 3)
        weak = (a.mean(1) - c.mean(1)).abs() < 0.3
        c[weak] = 1 - a[weak]
        fg[pair], bg[pair] = a[pair], c[pair]
        dark = (mode >= 0.55 * self.p) & (mode < 0.65 * self.p)
        fg[dark] = 0.4 * u(int(dark.sum()), 3)
        bg[dark] = 0.6 + 0.4 * u(int(dark.sum()), 3)
        x = x * fg[:, :, None, None] + (1 - x) * bg[:, :, None, None]
        # distractor strokes
        for _ in range(3):
            on = u(b) < 0.3 * self.p
            if on.any():
                x[on] = self._stroke(x[on], g)
        # noise
        sigma = torch.where(u(b) < 0.6 * self.p, u(b) * 0.1, torch.zeros(b))
        x = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=g)
        return x.clamp(0, 1)

    @staticmethod
    def _stroke(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """``x`` with one anti-aliased straight stroke of random ends, width and colour per image."""
        b, _, s, _ = x.shape
        p, q = torch.rand(b, 2, generator=g) * s, torch.rand(b, 2, generator=g) * s
        width = 0.8 + 1.2 * torch.rand(b, generator=g)
        colour = torch.rand(b, 3, generator=g)
        yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
        pix = torch.stack([xx, yy], -1).view(1, s, s, 2)
        d = (q - p).view(b, 1, 1, 2)
        t = (((pix - p.view(b, 1, 1, 2)) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-6)).clamp(0, 1)
        dist = (pix - p.view(b, 1, 1, 2) - t[..., None] * d).norm(dim=-1)
        alpha = (width.view(b, 1, 1) / 2 + 0.5 - dist).clamp(0, 1)[:, None]
        return x * (1 - alpha) + alpha * colour[:, :, None, None]
