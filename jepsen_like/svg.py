"""Just enough SVG for the run report: a scatter and a line chart with shaded bands.

No plotting dependency, no external assets: each chart is one ``<svg>`` string to be
inlined in report.html. Axes are linear in x (seconds) and linear or log10 in y.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Band", "Series", "line_chart", "scatter", "state_rows"]

_W, _H = 960, 300
_L, _R, _T, _B = 60, 20, 16, 40  # margins


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    color: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Band:
    """A shaded x-interval (a nemesis window)."""

    start: float
    end: float
    label: str
    color: str


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.2e}"


class _Frame:
    def __init__(self, x_max: float, y_min: float, y_max: float, log_y: bool) -> None:
        self.x_max = max(x_max, 1e-9)
        self.log_y = log_y
        if log_y:
            y_min, y_max = math.log10(max(y_min, 1e-3)), math.log10(max(y_max, 1e-3))
        if y_max <= y_min:
            y_max = y_min + 1
        self.y_min, self.y_max = y_min, y_max

    def x(self, v: float) -> float:
        return _L + (_W - _L - _R) * v / self.x_max

    def y(self, v: float) -> float:
        if self.log_y:
            v = math.log10(max(v, 1e-3))
        frac = (v - self.y_min) / (self.y_max - self.y_min)
        return _H - _B - (_H - _T - _B) * frac

    def axes(self, x_label: str, y_label: str) -> list[str]:
        out = [
            f'<line x1="{_L}" y1="{_H - _B}" x2="{_W - _R}" y2="{_H - _B}" stroke="#444"/>',
            f'<line x1="{_L}" y1="{_T}" x2="{_L}" y2="{_H - _B}" stroke="#444"/>',
        ]
        for t in _nice_ticks(0, self.x_max):
            x = self.x(t)
            y0 = _H - _B
            out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 4}" stroke="#444"/>')
            out.append(f'<text x="{x:.1f}" y="{y0 + 16}" text-anchor="middle">{_fmt(t)}</text>')
        if self.log_y:
            ticks = [10.0**e for e in range(math.floor(self.y_min), math.ceil(self.y_max) + 1)]
        else:
            ticks = _nice_ticks(self.y_min, self.y_max, 5)
        for t in ticks:
            y = self.y(t)
            if not _T - 1 <= y <= _H - _B + 1:
                continue
            out.append(f'<line x1="{_L}" y1="{y:.1f}" x2="{_W - _R}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        out.append(
            f'<text x="{(_L + _W - _R) / 2}" y="{_H - 6}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
        out.append(
            f'<text transform="translate(14,{(_T + _H - _B) / 2}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )
        return out

    def bands(self, bands: Sequence[Band]) -> list[str]:
        out = []
        for b in bands:
            x0, x1 = self.x(max(0.0, b.start)), self.x(min(self.x_max, b.end))
            out.append(
                f'<rect x="{x0:.1f}" y="{_T}" width="{max(1.0, x1 - x0):.1f}" '
                f'height="{_H - _T - _B}" fill="{b.color}" fill-opacity="0.18">'
                f"<title>{escape(b.label)}: {b.start:.1f}s&#8211;{b.end:.1f}s</title></rect>"
            )
            out.append(
                f'<text x="{x0 + 2:.1f}" y="{_T + 10}" font-size="9" fill="#555">'
                f"{escape(b.label)}</text>"
            )
        return out


def _svg(body: list[str], legend: Sequence[Series]) -> str:
    items = []
    for i, s in enumerate(legend):
        x = _L + 10 + i * 110
        items.append(f'<rect x="{x}" y="{_H - 14}" width="10" height="10" fill="{s.color}"/>')
        items.append(f'<text x="{x + 14}" y="{_H - 5}">{escape(s.label)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H + 6}" '
        f'width="100%" font-family="sans-serif" font-size="11">'
        + "".join(body)
        + "".join(items)
        + "</svg>"
    )


def scatter(
    series: Sequence[Series],
    bands: Sequence[Band],
    *,
    x_max: float,
    x_label: str,
    y_label: str,
    log_y: bool = True,
    y_cap: float | None = None,
    pending: Sequence[float] = (),
) -> str:
    """Points above ``y_cap`` are not clipped: each is a triangle on the top edge, at
    its x, and a label counts them and gives the largest. ``pending``: x of operations
    that never completed, drawn as hollow triangles on the top edge."""
    ys = [y for s in series for _, y in s.points] or [1.0]
    top = max(ys) if y_cap is None else min(max(ys), y_cap)
    frame = _Frame(x_max, min(ys), top, log_y)
    body = frame.bands(bands) + frame.axes(x_label, y_label)
    above: list[float] = []
    for s in series:
        body.append(f'<g fill="{s.color}" fill-opacity="0.6">')
        for x, y in s.points:
            if y > top:
                above.append(y)
                body.append(_triangle(frame.x(x), s.color, filled=True))
            else:
                body.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="1.8"/>')
        body.append("</g>")
    body += [_triangle(frame.x(x), "#444", filled=False) for x in pending]
    notes = []
    if above:
        notes.append(f"\u25b2 {len(above)} above {_fmt(top)} (max {_fmt(round(max(above)))})")
    if pending:
        notes.append(f"\u25b3 {len(pending)} never completed")
    if notes:
        body.append(
            f'<text x="{_W - _R}" y="{_T - 4}" text-anchor="end" font-size="10">'
            f"{escape('; '.join(notes))}</text>"
        )
    return _svg(body, series)


def _triangle(x: float, color: str, *, filled: bool) -> str:
    """A marker pointing up on the top edge of the plot: off the scale above."""
    y = _T
    fill = f'fill="{color}"' if filled else f'fill="none" stroke="{color}"'
    return f'<path d="M{x - 3:.1f},{y + 5} L{x + 3:.1f},{y + 5} L{x:.1f},{y} Z" {fill}/>'


def line_chart(
    series: Sequence[Series],
    bands: Sequence[Band],
    *,
    x_max: float,
    x_label: str,
    y_label: str,
) -> str:
    ys = [y for s in series for _, y in s.points] or [1.0]
    frame = _Frame(x_max, 0.0, max(ys) * 1.05, log_y=False)
    body = frame.bands(bands) + frame.axes(x_label, y_label)
    for s in series:
        if not s.points:
            continue
        path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in s.points)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.5"/>'
        )
    return _svg(body, series)


_ROW = 16


def state_rows(
    rows: Mapping[str, Sequence[tuple[float, float, str]]],
    colors: Mapping[str, str],
    bands: Sequence[Band],
    *,
    x_max: float,
) -> str:
    """One band per row (a node) of coloured intervals ``(start, end, state)``, on the
    same x scale as the other charts, fault windows shaded behind."""
    height = _T + _ROW * max(1, len(rows)) + 24
    frame = _Frame(x_max, 0.0, 1.0, log_y=False)
    body = []
    for b in bands:
        x0, x1 = frame.x(max(0.0, b.start)), frame.x(min(frame.x_max, b.end))
        body.append(
            f'<rect x="{x0:.1f}" y="{_T}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{_ROW * len(rows)}" fill="{b.color}" fill-opacity="0.12"/>'
        )
    for i, (name, spans) in enumerate(rows.items()):
        y = _T + i * _ROW
        body.append(f'<text x="{_L - 6}" y="{y + 11}" text-anchor="end">{escape(name)}</text>')
        for start, end, state in spans:
            x0, x1 = frame.x(max(0.0, start)), frame.x(min(frame.x_max, end))
            body.append(
                f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(0.5, x1 - x0):.1f}" '
                f'height="{_ROW - 4}" fill="{colors.get(state, "#bbb")}">'
                f"<title>{escape(name)} {escape(state)}: {start:.1f}s&#8211;{end:.1f}s</title>"
                "</rect>"
            )
    legend = []
    for i, (state, color) in enumerate(colors.items()):
        x = _L + i * 100
        y = height - 12
        legend.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{color}"/>')
        legend.append(f'<text x="{x + 14}" y="{y}">{escape(state)}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="100%" font-family="sans-serif" font-size="11">' + "".join(body + legend) + "</svg>"
    )
