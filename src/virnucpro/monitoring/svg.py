"""Small inline-SVG charts for the report: lines, bars, histogram, segments.

Inline SVG instead of matplotlib PNGs: no plotting dependency to install on cluster nodes,
the report stays one small text file that opens offline, and text stays sharp at any zoom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
VIRUS, OTHER = "#d62728", "#00008b"  # red and dark blue, as the original's drew_fig.py


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"


class Plot:
    """Axes on a canvas: data coordinates -> pixels, plus the frame, ticks and labels."""

    LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 40  # TOP leaves a row for the legend above the data

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], *,
                 width: int = 720, height: int = 220, x_label: str = "", y_label: str = "",
                 x_ticks: bool = True):
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0], x_range[0] + 1)
        self.y0, self.y1 = y_range if y_range[1] > y_range[0] else (y_range[0], y_range[0] + 1)
        self.width, self.height = width, height
        self.parts: list[str] = []
        self._axes(x_label, y_label, x_ticks)

    def px(self, x: float) -> float:
        span = self.width - self.LEFT - self.RIGHT
        return self.LEFT + (x - self.x0) / (self.x1 - self.x0) * span

    def py(self, y: float) -> float:
        span = self.height - self.TOP - self.BOTTOM
        return self.height - self.BOTTOM - (y - self.y0) / (self.y1 - self.y0) * span

    def _axes(self, x_label: str, y_label: str, x_ticks: bool) -> None:
        bottom, left = self.height - self.BOTTOM, self.LEFT
        add = self.parts.append
        for y in nice_ticks(self.y0, self.y1, 4):
            add(f'<line x1="{left}" x2="{self.width - self.RIGHT}" y1="{self.py(y):.1f}" '
                f'y2="{self.py(y):.1f}" stroke="#e5e5e5"/>')
            add(f'<text x="{left - 6}" y="{self.py(y) + 4:.1f}" text-anchor="end">{_label(y)}</text>')
        for x in nice_ticks(self.x0, self.x1, 6) if x_ticks else ():
            add(f'<text x="{self.px(x):.1f}" y="{bottom + 16}" text-anchor="middle">{_label(x)}</text>')
        add(f'<line x1="{left}" x2="{self.width - self.RIGHT}" y1="{bottom}" y2="{bottom}" stroke="#888"/>')
        add(f'<line x1="{left}" x2="{left}" y1="{self.TOP}" y2="{bottom}" stroke="#888"/>')
        add(f'<text x="{(left + self.width) / 2:.0f}" y="{self.height - 6}" text-anchor="middle" '
            f'fill="#555">{escape(x_label)}</text>')
        add(f'<text transform="translate(14 {(self.TOP + bottom) / 2:.0f}) rotate(-90)" '
            f'text-anchor="middle" fill="#555">{escape(y_label)}</text>')

    def marker(self, x: float, label: str) -> None:
        """A dashed vertical line at x across the data, labelled at its top."""
        self.parts.append(f'<line class="marker" x1="{self.px(x):.1f}" x2="{self.px(x):.1f}" y1="{self.TOP}" '
                          f'y2="{self.height - self.BOTTOM}" stroke="#333" stroke-dasharray="4 3"/>'
                          f'<text x="{self.px(x) + 4:.1f}" y="{self.TOP + 10}">{escape(label)}</text>')

    def legend(self, entries: Sequence[tuple[str, str]]) -> None:
        x = self.LEFT + 10
        for name, color in entries:
            self.parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color}"/>'
                              f'<text x="{x + 14}" y="13">{escape(name)}</text>')
            x += 24 + 7 * len(name)

    def svg(self, title: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{self.width}" '
                f'height="{self.height}" viewBox="0 0 {self.width} {self.height}" font-size="11" '
                f'font-family="sans-serif"><title>{escape(title)}</title>{"".join(self.parts)}</svg>')


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *, title: str,
               x_label: str, y_label: str, y_max: float | None = None) -> str:
    xs = [x for _, sx, _ in series for x in sx] or [0.0, 1.0]
    ys = [y for _, _, sy in series for y in sy] or [0.0, 1.0]
    plot = Plot((min(xs), max(xs)), (0.0, y_max if y_max is not None else max(ys) * 1.1 or 1.0),
                x_label=x_label, y_label=y_label)
    entries = []
    for i, (name, sx, sy) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{plot.px(x):.1f},{plot.py(y):.1f}" for x, y in zip(sx, sy))
        plot.parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        entries.append((name, color))
    plot.legend(entries)
    return plot.svg(title)


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str, y_label: str) -> str:
    top = max((v for _, v in bars), default=1.0) * 1.15 or 1.0
    plot = Plot((0.0, float(max(len(bars), 1))), (0.0, top), width=max(240, 110 * len(bars) + 80),
                y_label=y_label, x_ticks=False)
    for i, (name, value) in enumerate(bars):
        left, right = plot.px(i + 0.2), plot.px(i + 0.8)
        plot.parts.append(
            f'<rect x="{left:.1f}" y="{plot.py(value):.1f}" width="{right - left:.1f}" '
            f'height="{plot.py(0) - plot.py(value):.1f}" fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{(left + right) / 2:.1f}" y="{plot.py(value) - 4:.1f}" text-anchor="middle">'
            f'{_label(value)}</text><text x="{(left + right) / 2:.1f}" y="{plot.py(0) + 16:.1f}" '
            f'text-anchor="middle">{escape(name)}</text>')
    return plot.svg(title)


def histogram(edges: Sequence[float], layers: Sequence[tuple[str, Sequence[int], str | Sequence[str]]], *,
              title: str, x_label: str, y_label: str, marker: tuple[float, str] | None = None) -> str:
    """Bars over `edges`, one layer (name, counts, colour or a colour per bin) stacked on the
    one before; `marker`: (x, label) drawn as a dashed line, a threshold."""
    totals = [sum(column) for column in zip(*(counts for _, counts, _ in layers))]
    plot = Plot((edges[0], edges[-1]), (0.0, max(max(totals, default=0) * 1.1, 1.0)),
                x_label=x_label, y_label=y_label)
    base = [0] * len(totals)
    for _, counts, colors in layers:
        per_bin = [colors] * len(counts) if isinstance(colors, str) else colors
        for i, (lo, hi, n, color) in enumerate(zip(edges, edges[1:], counts, per_bin)):
            if n:
                plot.parts.append(f'<rect x="{plot.px(lo):.1f}" y="{plot.py(base[i] + n):.1f}" '
                                  f'width="{max(plot.px(hi) - plot.px(lo) - 1, 0.5):.1f}" '
                                  f'height="{plot.py(base[i]) - plot.py(base[i] + n):.1f}" fill="{color}"/>')
            base[i] += n
    if marker is not None:
        plot.marker(*marker)
    plot.legend([("virus", VIRUS), ("others", OTHER)])
    return plot.svg(title)


def segment_chart(segments: Sequence[tuple[float, float, float, str]], *, title: str, x_max: float,
                  y_range: tuple[float, float] = (0.45, 1.05)) -> str:
    """Horizontal segments (x0, x1, y, colour): one per chunk along a sequence."""
    plot = Plot((0.0, x_max), y_range, height=160, x_label="position (bp)", y_label="best score")
    for x0, x1, y, color in segments:
        plot.parts.append(f'<line x1="{plot.px(x0):.1f}" x2="{plot.px(x1):.1f}" y1="{plot.py(y):.1f}" '
                          f'y2="{plot.py(y):.1f}" stroke="{color}" stroke-width="3"/>')
    plot.legend([("virus", VIRUS), ("others", OTHER)])
    return plot.svg(title)
