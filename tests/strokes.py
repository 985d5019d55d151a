"""Strokes of a drawing, from its 28x28 bitmap alone (Google's numpy_bitmap files keep no strokes): the ink's centre
lines (Zhang and Suen's thinning, 1984), walked into paths a hand could draw, in bitmap pixels (x, y); and those
strokes drawn with the mouse on `play`'s canvas (the browser tests and scripts/screenshots.py)."""

from __future__ import annotations

import numpy as np

INK = 96  # of 255: the bitmaps' anti-aliased edges are left to the pen's width
Point = tuple[int, int]


def strokes(bitmap: np.ndarray) -> list[list[Point]]:
    """The drawing's centre lines as strokes of (x, y) points joined by straight lines; each starts at a line's end where it can,
    and joins the lines already drawn where it touches them, so that nothing is left out or broken."""
    pixels = {(int(x), int(y)) for y, x in zip(*np.nonzero(thinned(bitmap > INK)))}
    remaining, drawn = set(pixels), []
    while remaining:
        path = [min(remaining, key=lambda p: (len(neighbours(p, pixels)) != 1, p[1], p[0]))]
        remaining.discard(path[0])
        path[:0] = [q for q in neighbours(path[0], pixels) if q not in remaining][:1]  # join the drawn lines
        while nexts := [q for q in neighbours(path[-1], pixels) if q in remaining]:
            step = min(nexts, key=lambda q: abs(q[0] - path[-1][0]) + abs(q[1] - path[-1][1]))  # 4-neighbours first
            path.append(step)
            remaining.discard(step)
        path += [q for q in neighbours(path[-1], pixels) if q not in remaining and q not in path[-3:]][:1]
        drawn.append(simplified(path))
    return drawn


def simplified(path: list[Point], tolerance: float = 0.7) -> list[Point]:
    """The path with fewer points (Ramer-Douglas-Peucker): none of the dropped ones is more than `tolerance` pixels from
    the line that replaces it, so a straight or staircase run is one mouse move."""
    if len(path) < 3:
        return path
    (x0, y0), (x1, y1) = path[0], path[-1]
    length = max(np.hypot(x1 - x0, y1 - y0), 1e-9)
    distances = [abs((x1 - x0) * (y0 - y) - (x0 - x) * (y1 - y0)) / length for x, y in path[1:-1]]
    far = int(np.argmax(distances)) + 1
    if distances[far - 1] <= tolerance:
        return [path[0], path[-1]]
    return simplified(path[:far + 1], tolerance)[:-1] + simplified(path[far:], tolerance)


def neighbours(point: Point, pixels: set[Point]) -> list[Point]:
    x, y = point
    return [(x + dx, y + dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx or dy) and (x + dx, y + dy) in pixels]


def thinned(ink: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: ink pixels peeled off the outside in two alternating passes until one-pixel lines remain."""
    image = np.pad(ink, 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4, p5, p6, p7, p8, p9 = around(image)  # north, then clockwise
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            count = sum(ring[:-1])
            transitions = sum((a == 0) & (b == 1) for a, b in zip(ring, ring[1:]))
            first, second = (p2 * p4 * p6, p4 * p6 * p8) if step == 0 else (p2 * p4 * p8, p2 * p6 * p8)
            peel = (image[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & (first == 0) & (
                second == 0)
            if peel.any():
                image[1:-1, 1:-1][peel] = 0
                changed = True
        if not changed:
            return image[1:-1, 1:-1].astype(bool)


def around(image: np.ndarray) -> list[np.ndarray]:
    """Each pixel's eight neighbours, north first, then clockwise, for the pixels inside the one-pixel border."""
    h, w = image.shape
    shifts = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
    return [image[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] for dy, dx in shifts]


def draw_with_mouse(page, bitmap: np.ndarray, share: float) -> int:
    """The drawing's strokes drawn with the mouse on the page's canvas, spanning `share` of its width, centred; how
    many strokes."""
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] * share / 28
    left, top = box["x"] + box["width"] * (1 - share) / 2, box["y"] + box["height"] * (1 - share) / 2
    paths = strokes(bitmap)
    for path in paths:
        points = [(left + (x + 0.5) * scale, top + (y + 0.5) * scale) for x, y in path]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point)
        page.mouse.up()
    return len(paths)
