"""Small result charts drawn with Pillow (already a dependency), so reports need no
plotting library: grouped bars (success per task and arm) and lines (success vs k)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
)


def _canvas(width: int, height: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    return img, ImageDraw.Draw(img)


def _axes(draw, box, title: str, ylabel: str, ymax: float) -> None:
    x0, y0, x1, y1 = box
    draw.text((x0, 8), title, fill="black")
    draw.text((4, y0 - 22), ylabel, fill="black")
    draw.line([(x0, y0), (x0, y1), (x1, y1)], fill="black")
    for frac in np.linspace(0, 1, 5):
        y = y1 - frac * (y1 - y0)
        draw.line([(x0 - 4, y), (x0, y)], fill="black")
        draw.line([(x0 + 1, y), (x1, y)], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{frac * ymax:.2f}", fill="black")


def _legend(draw, names: Sequence[str], x: int, y: int) -> None:
    for i, name in enumerate(names):
        c = PALETTE[i % len(PALETTE)]
        draw.rectangle([x, y + 14 * i, x + 10, y + 14 * i + 10], fill=c)
        draw.text((x + 14, y + 14 * i), name, fill="black")


def grouped_bars(
    path: str,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str,
    ylabel: str = "success rate",
    ymax: float = 1.0,
    errors: dict[str, Sequence[float]] | None = None,
) -> str:
    """One group of bars per entry of `groups`, one bar per series (optional +/- error)."""
    for name, vals in series.items():
        if len(vals) != len(groups):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(groups)} groups")
    width = max(480, 70 + len(groups) * (24 * len(series) + 30) + 150)
    img, draw = _canvas(width, 360)
    box = (60, 52, width - 160, 300)
    _axes(draw, box, title, ylabel, ymax)
    x0, y0, x1, y1 = box
    slot = (x1 - x0) / max(len(groups), 1)
    bar = min(24.0, 0.8 * slot / max(len(series), 1))
    for g, group in enumerate(groups):
        left = x0 + g * slot + (slot - bar * len(series)) / 2
        for s, (name, vals) in enumerate(series.items()):
            v = float(np.clip(vals[g], 0, ymax))
            top = y1 - v / ymax * (y1 - y0)
            bx = left + s * bar
            draw.rectangle([bx, top, bx + bar - 2, y1], fill=PALETTE[s % len(PALETTE)])
            if bar >= 18:
                draw.text((bx, top - 11), f"{v:.2f}"[1:] if v < 1 else "1.0", fill="black")
            if errors and name in errors:
                e = float(errors[name][g]) / ymax * (y1 - y0)
                cx = bx + bar / 2 - 1
                draw.line([(cx, top - e), (cx, min(y1, top + e))], fill="black")
        draw.text((x0 + g * slot + 2, y1 + 6 + 12 * (g % 2)), group[:14], fill="black")
    _legend(draw, list(series), x1 + 12, y0)
    return _save(img, path)


def lines(
    path: str,
    xs: Sequence[float],
    series: dict[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str = "success rate",
    ymax: float = 1.0,
    errors: dict[str, Sequence[float]] | None = None,
) -> str:
    """One polyline per series over shared x values (x positions evenly spaced)."""
    img, draw = _canvas(560, 360)
    box = (60, 52, 400, 300)
    _axes(draw, box, title, ylabel, ymax)
    x0, y0, x1, y1 = box
    px = [x0 + (i + 0.5) * (x1 - x0) / len(xs) for i in range(len(xs))]
    for i, x in enumerate(xs):
        draw.text((px[i] - 6, y1 + 6), f"{x:g}", fill="black")
    draw.text(((x0 + x1) / 2 - 10, y1 + 22), xlabel, fill="black")
    for s, (name, vals) in enumerate(series.items()):
        if len(vals) != len(xs):
            raise ValueError(f"series {name!r} has {len(vals)} values for {len(xs)} x values")
        c = PALETTE[s % len(PALETTE)]
        pts = [
            (px[i], y1 - float(np.clip(v, 0, ymax)) / ymax * (y1 - y0)) for i, v in enumerate(vals)
        ]
        draw.line(pts, fill=c, width=2)
        for i, (x, y) in enumerate(pts):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
            if errors and name in errors:
                e = float(errors[name][i]) / ymax * (y1 - y0)
                draw.line([(x, y - e), (x, min(y1, y + e))], fill=c)
    _legend(draw, list(series), x1 + 12, y0)
    return _save(img, path)


def _save(img, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    img.save(tmp)
    os.replace(tmp, path)
    return path
