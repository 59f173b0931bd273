"""Point labels that stay inside the axes and overlap no other label.

matplotlib's ``annotate`` puts text where it is told, even past the axes' edge or on top of the
next label (``mhca(num_heads=8)`` at the right edge, two EP variants 2 % apart). Here each label
tries a few offsets around its point, measured with the renderer (``get_window_extent``), and
keeps the first one that lies inside the axes and clear of the labels already placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["place_labels"]

# (dx, dy) in points, horizontal and vertical alignment: right/up first, then the other sides
_CANDIDATES = [
    ((7, 3), "left", "bottom"), ((7, -3), "left", "top"), ((-7, 3), "right", "bottom"),
    ((-7, -3), "right", "top"), ((0, 9), "center", "bottom"), ((0, -9), "center", "top"),
    ((7, 16), "left", "bottom"), ((-7, 16), "right", "bottom"), ((7, -16), "left", "top"),
    ((-7, -16), "right", "top"), ((0, 24), "center", "bottom"), ((0, -24), "center", "top"),
]


def place_labels(ax: Any, labels: Sequence[tuple[float, float, str]], *, fontsize: float = 7.5) -> list[Any]:
    """Annotate each ``(x, y, text)`` in data coordinates; returns the text artists."""
    if not labels:
        return []
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed: list[Any] = []
    boxes: list[Any] = [_point_box(ax, x, y) for x, y, _ in labels]  # labels keep off every marker
    for x, y, text in labels:
        best = None
        for (dx, dy), ha, va in _CANDIDATES:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                              fontsize=fontsize, annotation_clip=False)
            box = ann.get_window_extent(renderer)
            fits = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1)
            if fits and not any(box.overlaps(b) for b in boxes):
                best = (ann, box)
                break
            ann.remove()
        if best is None:  # crowded: the first side that stays inside, overlap accepted over clipping
            for (dx, dy), ha, va in _CANDIDATES:
                ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                                  fontsize=fontsize, annotation_clip=False)
                box = ann.get_window_extent(renderer)
                if box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1:
                    best = (ann, box)
                    break
                ann.remove()
        if best is None:
            continue
        placed.append(best[0])
        boxes.append(best[1])
    return placed


def _point_box(ax: Any, x: float, y: float, radius: float = 10.0) -> Any:
    """A marker's extent in display pixels (a square of ``2 * radius`` around the point)."""
    from matplotlib.transforms import Bbox

    px, py = ax.transData.transform((x, y))
    return Bbox([[px - radius, py - radius], [px + radius, py + radius]])
