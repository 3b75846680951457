"""Side-by-side gallery of matched train/eval image pairs: one PNG grid (for W&B / the report) and one HTML page.

Each pair is a :class:`LeakPair`; image references go through the same pluggable ``reader`` as hashing (paths,
``archive::member`` or raw bytes). An unreadable image is drawn as a grey tile with the reason, never an exception.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .phash import default_reader, to_hex


@dataclass
class LeakPair:
    train_ref: Any
    eval_ref: Any
    train_source: str
    eval_set: str
    distance: int
    train_hash: int | None = None
    eval_hash: int | None = None
    train_id: str = ""
    eval_id: str = ""


def _thumb(ref: Any, reader: Callable[[Any], bytes], size: int) -> tuple[Image.Image, str]:
    try:
        im = Image.open(io.BytesIO(reader(ref)))
        im.load()
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((size, size))
        return im, ""
    except Exception as e:  # a missing/corrupt image still gets its tile, with the reason
        tile = Image.new("RGB", (size, size), (200, 200, 200))
        msg = f"{type(e).__name__}: {getattr(e, 'reason', '') or e}"[:60]
        ImageDraw.Draw(tile).text((6, size // 2), msg, fill=(120, 0, 0))
        return tile, msg


def write_gallery(pairs: Iterable[LeakPair], out_dir: str | Path, reader: Callable[[Any], bytes] | None = None,
                  thumb: int = 192, max_pairs: int = 64, title: str = "Train/eval pHash matches") -> dict[str, Path]:
    """Write ``leakage_gallery.png`` (rows of train | eval thumbnails with captions) and ``leakage_gallery.html``
    (same pairs, inline thumbnails, sources, ids, hashes and distance) under ``out_dir``. Returns both paths."""
    read = reader or default_reader
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = list(pairs)[:max_pairs]
    thumbs = [(_thumb(p.train_ref, read, thumb), _thumb(p.eval_ref, read, thumb)) for p in pairs]
    font, small = _font(15), _font(13)
    pad, gap, cap_h, head_h = 10, 6, 40, 44
    per_row = max(1, min(2, len(pairs)))  # one pair fills the canvas; more go two per row
    cell_w = 2 * thumb + gap + 2 * pad
    rows = [thumbs[i:i + per_row] for i in range(0, len(thumbs), per_row)] or [[]]
    row_h = [max([max(t.height, e.height) for (t, _), (e, _) in r] or [thumb // 2]) + cap_h + 18 + pad for r in rows]
    title_w = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 2 * pad
    grid = Image.new("RGB", (max(cell_w * per_row, title_w), head_h + sum(row_h)), "white")
    draw = ImageDraw.Draw(grid)
    n = len(pairs)
    draw.text((pad, 6), title, fill=(0, 0, 0), font=font)
    draw.text((pad, 24), f"{n} image pair{'' if n == 1 else 's'} shown: train (left) | evaluation (right)",
              fill=(90, 90, 90), font=small)
    html_rows = []
    y0 = head_h
    for r_i, r in enumerate(rows):
        for c_i, ((ti, terr), (ei, eerr)) in enumerate(r):
            p = pairs[r_i * per_row + c_i]
            x0 = c_i * cell_w + pad
            draw.text((x0, y0), "train", fill=(60, 60, 60), font=small)
            draw.text((x0 + thumb + gap, y0), "eval", fill=(60, 60, 60), font=small)
            grid.paste(ti, (x0, y0 + 18))
            grid.paste(ei, (x0 + thumb + gap, y0 + 18))
            cy = y0 + 18 + max(ti.height, ei.height) + 4
            draw.text((x0, cy), f"{p.train_source[:24]} | {p.eval_set[:24]}", fill=(0, 0, 0), font=small)
            draw.text((x0, cy + 17), f"Hamming distance {p.distance}", fill=(160, 0, 0), font=small)
            html_rows.append(_html_row(p, ti, ei, terr, eerr))
        y0 += row_h[r_i]
    png = out / "leakage_gallery.png"
    grid.save(png)
    page = out / "leakage_gallery.html"
    page.write_text(
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:6px}img{max-width:"
        f"{thumb}px}}</style><h1>{html.escape(title)}</h1>"
        f"<p>{n} image pair{'' if n == 1 else 's'} shown</p><table>"
        "<tr><th>#</th><th>train</th><th>eval</th><th>match</th></tr>" + "".join(html_rows) + "</table>\n")
    return {"png": png, "html": page}


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable default font
    except TypeError:
        return ImageFont.load_default()


def _data_uri(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ref_label(ref: Any) -> str:
    return "&lt;bytes&gt;" if isinstance(ref, (bytes, bytearray, memoryview)) else html.escape(str(ref))


def _html_row(p: LeakPair, ti: Image.Image, ei: Image.Image, terr: str, eerr: str) -> str:
    hashes = ""
    if p.train_hash is not None and p.eval_hash is not None:
        hashes = f"<br><code>{to_hex(p.train_hash)}</code><br><code>{to_hex(p.eval_hash)}</code>"
    return (
        "<tr><td>" + html.escape(p.train_id or "") + "</td>"
        f"<td><img src='{_data_uri(ti)}'><br>{html.escape(p.train_source)}<br><small>{_ref_label(p.train_ref)}"
        f"{' — ' + html.escape(terr) if terr else ''}</small></td>"
        f"<td><img src='{_data_uri(ei)}'><br>{html.escape(p.eval_set)} {html.escape(p.eval_id)}<br><small>"
        f"{_ref_label(p.eval_ref)}{' — ' + html.escape(eerr) if eerr else ''}</small></td>"
        f"<td>distance <b>{p.distance}</b>{hashes}</td></tr>")
