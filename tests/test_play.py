"""`play`, started as a user starts it, on the model of a search on real drawings (conftest's `real_experiment`), in a
real Chromium: 30 real test drawings, redrawn stroke by stroke with mouse events (their strokes recovered from the
bitmaps: tests/strokes.py), get their class in the top 3 about as often as `predict` gives it for their bitmaps; Clear
resets the page; at 390 px nothing scrolls sideways; nothing is fetched from anywhere but the command. And requests
the page never sends are each refused with a 4xx while the server goes on serving, its memory bounded by a flood."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest
import requests
from PIL import Image, ImageDraw
from playwright.sync_api import Error as PlaywrightError, expect

from conftest import needs_shared_drawings, run_in_process, start_cli
from quickdraw.dataset import load_split
from quickdraw.storage import Location
from strokes import draw_with_mouse, strokes

pytestmark = [pytest.mark.slow, needs_shared_drawings]  # the command as its own process, on a real search's model

PER_CLASS = 5  # test drawings redrawn of each class: 30 in all
CANVAS_SHARE = 0.9  # of the canvas's width that a redrawn drawing spans, as a person leaves a margin


@pytest.fixture(scope="module")
def server(real_experiment):
    """`python tune_search.py play EXPERIMENT --port 0`, and the address its first line gives."""
    process = start_cli("play", real_experiment, "--port", "0")
    seen = []
    for line in process.stdout:
        seen.append(line)
        if found := re.search(r"http://127\.0\.0\.1:\d+/", line):
            break
    else:
        pytest.fail(f"play did not say where it serves: {''.join(seen)}")
    yield SimpleNamespace(url=found[0], process=process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=30)[0]
    assert f"stopped; to serve it again: python tune_search.py play {real_experiment}" in output, output
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def drawings(real_experiment, tmp_path_factory):
    """The first PER_CLASS test drawings of each class, their labels, the class names, and whether `predict` puts
    each drawing's class in its top 3."""
    split = load_split(Location.parse(json.loads((real_experiment / "search.json").read_text())["dataset"]))
    chosen = np.concatenate([np.flatnonzero(split.y_test == label)[:PER_CLASS] for label in range(len(split.classes))])
    npy = tmp_path_factory.mktemp("play") / "drawings.npy"
    np.save(npy, split.x_test[chosen])
    result = run_in_process("predict", real_experiment, npy)
    assert result.returncode == 0, result.stderr[-3000:]
    top3 = [re.findall(r"(?:: |, )(.+?) \d+\.\d+%", line) for line in result.stdout.splitlines()]
    labels = split.y_test[chosen]
    predicted = [split.classes[label] in top for label, top in zip(labels, top3)]
    return SimpleNamespace(bitmaps=split.x_test[chosen], labels=labels, classes=split.classes, predicted=predicted)


def draw(page, bitmap: np.ndarray) -> int:
    return draw_with_mouse(page, bitmap, CANVAS_SHARE)


def guessed(page, stroke_count: int) -> list[str]:
    """The top classes shown once the page's guess covers all `stroke_count` strokes."""
    try:
        page.wait_for_function(f"document.body.dataset.guessedStrokes === '{stroke_count}'", timeout=30_000)
    except PlaywrightError:
        shown = page.evaluate("[document.body.dataset.guessedStrokes, document.getElementById('status').textContent]")
        pytest.fail(f"no guess of all {stroke_count} strokes: the page shows the guess of {shown[0]}, and {shown[1]!r}")
    return page.locator("#top .name").all_text_contents()


@pytest.mark.browser
def test_redrawn_test_drawings_get_their_class_in_the_top_3_as_often_as_predict_gives_it(server, browser, drawings):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    fetched = []
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(server.url)
    expect(page.locator("#classes li")).to_have_text(drawings.classes)
    hits, waits = [], []
    for bitmap, label in zip(drawings.bitmaps, drawings.labels):
        page.click("#clear")
        stroke_count = draw(page, bitmap)
        start = time.monotonic()
        top = guessed(page, stroke_count)
        waits.append(time.monotonic() - start)
        assert len(top) == 3 and set(top) <= set(drawings.classes), top
        hits.append(drawings.classes[label] in top)
    assert len(hits) >= 30
    redrawn, predicted = np.mean(hits), np.mean(drawings.predicted)
    print(f"top-3 hits: redrawn {redrawn:.1%}, predict on the bitmaps {predicted:.1%}; after the last stroke the "
          f"guess came in {np.median(waits):.2f} s (median), {max(waits):.2f} s (slowest)")
    assert redrawn >= predicted - 0.05
    assert all(url.startswith(server.url) for url in fetched), fetched  # offline: nothing from anywhere else
    bars = page.locator("#top .bar span").evaluate_all("spans => spans.map(span => parseFloat(span.style.width))")
    assert bars == sorted(bars, reverse=True) and 0 < bars[0] <= 100


@pytest.mark.browser
def test_clear_empties_the_canvas_and_the_guesses(server, browser, drawings):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server.url)
    assert guessed_after(page, draw(page, drawings.bitmaps[0]))
    page.click("#clear")
    assert not page.evaluate("""() => { const canvas = document.getElementById("canvas");
        return canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data.some(value => value); }""")
    expect(page.locator("#top li")).to_have_count(0)
    expect(page.locator("#status")).to_have_text("Draw something to see what the model thinks it is.")
    assert guessed_after(page, draw(page, drawings.bitmaps[-1]))  # a new drawing is guessed from its first strokes


def guessed_after(page, stroke_count: int) -> bool:
    return len(guessed(page, stroke_count)) == 3


@pytest.mark.browser
@pytest.mark.parametrize("width", [390, 1400])
def test_the_page_fits_a_phone_and_a_desktop(server, browser, drawings, width):
    page = browser.new_page(viewport={"width": width, "height": 844})
    page.goto(server.url)
    expect(page.locator("#classes li")).to_have_count(len(drawings.classes))
    assert guessed_after(page, draw(page, drawings.bitmaps[7]))
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing scrolls sideways
    canvas, guesses = page.locator("#canvas").bounding_box(), page.locator(".guesses").bounding_box()
    assert 0 <= canvas["x"] and canvas["x"] + canvas["width"] <= width and canvas["width"] >= 0.8 * min(width, 400)
    if width == 390:
        assert guesses["y"] >= canvas["y"] + canvas["height"]  # under the canvas
    else:
        assert guesses["x"] >= canvas["x"] + canvas["width"]  # beside it


def drawing_png(bitmap: np.ndarray, side: int = 400) -> bytes:
    """A drawing as the page posts it: its strokes in dark ink on a transparent canvas."""
    image = Image.new("RGBA", (side, side))
    pen = ImageDraw.Draw(image)
    for path in strokes(bitmap):
        points = [((x + 0.5) * side / 28, (y + 0.5) * side / 28) for x, y in path]
        pen.line(points * 2 if len(points) == 1 else points, fill=(17, 17, 17, 255), width=18, joint="curve")
    return png_bytes(image)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def without_length(url: str) -> int:
    """The status of a POST to /guess without Content-Length, sent on a bare socket (HTTP clients always add one)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as connection:
        connection.sendall(b"POST /guess HTTP/1.1\r\nHost: play\r\n\r\n")
        return int(connection.recv(4096).split()[1])


def test_requests_the_page_never_sends_are_refused_and_the_server_keeps_serving(server, drawings):
    guess, good = server.url + "guess", drawing_png(drawings.bitmaps[0])
    bad = {
        "a body over the limit": (413, lambda: requests.post(guess, data=b"\0" * (2 << 20))),
        "not an image": (400, lambda: requests.post(guess, data=b"<html>not a drawing</html>")),
        "a blank canvas": (400, lambda: requests.post(guess, data=png_bytes(Image.new("RGBA", (400, 400))))),
        "an image too large": (400, lambda: requests.post(guess, data=png_bytes(Image.new("1", (5000, 5000))))),
        "PUT": (405, lambda: requests.put(guess, data=good)),
        "DELETE": (405, lambda: requests.delete(server.url)),
        "GET on /guess": (405, lambda: requests.get(guess)),
        "POST to the page": (405, lambda: requests.post(server.url, data=good)),
        "an unknown path": (404, lambda: requests.get(server.url + "../etc/passwd")),
        "another unknown path": (404, lambda: requests.post(server.url + "guesses", data=good)),
    }
    for name, (status, send) in bad.items():
        response = send()
        assert response.status_code == status, name
        assert response.json()["error"], name
    assert without_length(server.url) == 411

    def served() -> list[dict]:
        response = requests.post(guess, data=good, timeout=30)
        assert response.status_code == 200
        return response.json()["guesses"]

    first = served()
    assert [g["class"] for g in first][0] in drawings.classes and len(first) == 3
    process = psutil.Process(server.process.pid)
    before = process.memory_info().rss
    requests_sent = [*bad.values()] + [(200, lambda: requests.post(guess, data=good))]
    for n in range(200):
        status, send = requests_sent[n % len(requests_sent)]
        assert send().status_code == status
    grown = process.memory_info().rss - before
    assert grown < 64 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB over 200 requests"
    assert served() == first  # still serving, and the same answer
    assert requests.get(server.url).status_code == 200
