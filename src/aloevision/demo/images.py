"""Synthetic, medical-looking images whose content is known, so questions about them are answerable.

A "scan" is a grey image: a per-modality background texture, an elliptical body outline, and (optionally) ONE bright
finding in a known quadrant with a known pixel box. Everything is drawn with numpy from a seeded generator, so the
same arguments give the same pixels; encoding with the same Pillow version gives the same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aloevision.demo.vocabulary import COLORS, MODALITIES, POSITIONS, SHAPES

# Quadrant -> (column, row) of the quadrant in the 2x2 grid.
_QUADRANT = {"upper left": (0, 0), "upper right": (1, 0), "lower left": (0, 1), "lower right": (1, 1)}
_RGB = {
    "red": (200, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 200),
    "yellow": (220, 200, 40),
}


@dataclass
class Scan:
    image: Image.Image
    modality: str
    position: str | None  # quadrant of the finding; None when there is no finding
    box: tuple[int, int, int, int] | None  # finding box in pixels (x1, y1, x2, y2), x2/y2 exclusive

    def box_1000(self) -> tuple[int, int, int, int] | None:
        """The finding box on Qwen2-VL's [0, 1000) grid."""
        if self.box is None:
            return None
        w, h = self.image.size
        x1, y1, x2, y2 = self.box
        return (
            min(999, round(x1 / w * 1000)),
            min(999, round(y1 / h * 1000)),
            min(999, round(x2 / w * 1000)),
            min(999, round(y2 / h * 1000)),
        )

    def box_unit(self) -> tuple[float, float, float, float] | None:
        """The finding box normalised to [0, 1] (4 decimals, as Med-GRIT's float variant)."""
        if self.box is None:
            return None
        w, h = self.image.size
        x1, y1, x2, y2 = self.box
        return (round(x1 / w, 4), round(y1 / h, 4), round(x2 / w, 4), round(y2 / h, 4))


def _smooth(a: np.ndarray, k: int) -> np.ndarray:
    """Box blur with a k x k kernel (separable cumulative sums; no scipy needed)."""
    if k <= 1:
        return a
    pad = k // 2
    p = np.pad(a, pad, mode="reflect")
    c = np.cumsum(np.cumsum(p, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    out = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    return out[: a.shape[0], : a.shape[1]]


def _texture(rng: np.random.Generator, modality: str, h: int, w: int) -> np.ndarray:
    """Background in [0, 1] with a texture specific to the modality (what "What modality is this?" is read from)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.random((h, w)).astype(np.float32)
    if modality == "CT":  # fine grain, mid grey
        return 0.35 + 0.25 * noise
    if modality == "MRI":  # smooth blotches, brighter
        return 0.45 + 0.45 * _smooth(noise, max(3, w // 16))
    if modality == "X-ray":  # vertical gradient with horizontal "rib" stripes
        ribs = 0.5 + 0.5 * np.sin(yy / max(h, 1) * np.pi * 12)
        return 0.15 + 0.3 * (yy / max(h - 1, 1)) + 0.2 * ribs + 0.08 * noise
    if modality == "Ultrasound":  # speckle inside a fan, black outside
        cx, cy = w / 2, -h * 0.15
        ang = np.arctan2(xx - cx, yy - cy)
        r = np.hypot(xx - cx, yy - cy)
        fan = (np.abs(ang) < 0.6) & (r < h * 1.1)
        speckle = rng.exponential(0.25, (h, w)).astype(np.float32)
        return np.where(fan, np.clip(0.15 + speckle, 0, 1), 0.0)
    raise ValueError(f"unknown modality {modality!r}; use one of {MODALITIES}")


def finding_box(position: str, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of 12-20% of the image side well inside the given quadrant."""
    col, row = _QUADRANT[position]
    bw, bh = max(4, int(w * rng.uniform(0.12, 0.2))), max(4, int(h * rng.uniform(0.12, 0.2)))
    qx0, qy0 = col * w // 2, row * h // 2
    # keep the box inside the quadrant with a margin so "upper left" is unambiguous
    x1 = qx0 + int(rng.integers(w // 16 + 1, max(w // 16 + 2, w // 2 - bw - w // 16)))
    y1 = qy0 + int(rng.integers(h // 16 + 1, max(h // 16 + 2, h // 2 - bh - h // 16)))
    return x1, y1, x1 + bw, y1 + bh


def make_scan(
    rng: np.random.Generator,
    modality: str,
    size: tuple[int, int] = (128, 128),
    position: str | None = "upper left",
) -> Scan:
    """A grey scan of `size` (w, h); with a bright elliptical finding in `position` unless it is None."""
    w, h = size
    img = _texture(rng, modality, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Smooth anatomy-like shading: a few random low-frequency waves. Without it two scans of the same modality and
    # quadrant share their 64-bit pHash (it only sees low frequencies), and unrelated images would look leaked. Kept
    # faint (amplitude 0.06, was 0.2): stronger shading hid the modality's texture from the tiny model.
    for _ in range(3):
        fx, fy = rng.uniform(-2.5, 2.5, 2)
        img = img + 0.06 * np.cos(2 * np.pi * (fx * xx / w + fy * yy / h) + rng.uniform(0, 2 * np.pi))
    # Body outline: an ellipse filling most of the frame (random centre and radii), darker outside.
    cx0, cy0 = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.45, 0.55)
    body = ((xx - cx0) / (w * rng.uniform(0.40, 0.47))) ** 2 + ((yy - cy0) / (h * rng.uniform(0.40, 0.47))) ** 2
    img = np.where(body <= 1.0, img, img * 0.25)
    ring = np.abs(body - 1.0) < 0.06
    img = np.minimum(np.where(ring, 0.85, img), 0.86)  # leaves near-white to the finding alone
    box = None
    if position is not None:
        box = finding_box(position, w, h, rng)
        x1, y1, x2, y2 = box
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        blob = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        img = np.where(blob, 1.0, img)
    arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Scan(Image.fromarray(arr), modality, position, box)


def make_photo(rng: np.random.Generator, color: str, shape: str, size: tuple[int, int] = (96, 96)) -> Image.Image:
    """A "general domain" picture: one coloured shape on a light textured background (Cambrian-like data)."""
    w, h = size
    bg = (200 + 40 * rng.random((h, w, 1))).astype(np.float32) * np.ones((1, 1, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, r = w / 2, h / 2, min(w, h) * 0.3
    if shape == "circle":
        mask = np.hypot(xx - cx, yy - cy) <= r
    elif shape == "square":
        mask = (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    elif shape == "triangle":
        mask = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    if color not in _RGB:
        raise ValueError(f"unknown color {color!r}; use one of {COLORS}")
    arr = np.where(mask[..., None], np.array(_RGB[color], np.float32), bg)
    return Image.fromarray(arr.astype(np.uint8))


def make_fracture_xray(
    rng: np.random.Generator, size: tuple[int, int], fractured: bool
) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """An X-ray-like image of a long bone; if fractured, a dark crack across it with its pixel box (x, y, w, h)."""
    w, h = size
    img = _texture(rng, "X-ray", h, w) * 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bone_x = w * (0.35 + 0.3 * rng.random())
    bone = np.abs(xx - bone_x) <= w * 0.08
    img = np.where(bone, 0.9, img)
    box = None
    if fractured:
        cy = h * (0.25 + 0.5 * rng.random())
        crack = bone & (np.abs(yy - cy - (xx - bone_x) * 0.3) <= 1.5)
        img = np.where(crack, 0.1, img)
        bx1, bx2 = int(bone_x - w * 0.1), int(bone_x + w * 0.1) + 1
        by1, by2 = int(cy - w * 0.05), int(cy + w * 0.05) + 1
        box = (bx1, by1, bx2 - bx1, by2 - by1)
    arr = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(arr), box


def encode(img: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode deterministically (no timestamps, no optimiser randomness)."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        if img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("RGB")
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    """The same picture in another Pillow mode (medical images come as L, I;16, RGB, P, ...)."""
    if mode == "I;16":
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range, like a real DICOM export
        return Image.fromarray(arr)
    if mode == "P":
        return img.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return img.convert(mode)


__all__ = ["Scan", "make_scan", "make_photo", "make_fracture_xray", "encode", "in_mode", "POSITIONS"]
