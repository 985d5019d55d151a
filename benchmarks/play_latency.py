"""How long `play` takes to answer a stroke's end, against the page's budget of one second: the guess of a posted canvas
(a 400x400 PNG of a real drawing, as the page posts it) over HTTP from the real command, for the smallest model, one
vgg-bn and the largest ensemble `--ensemble 10` can make (ten vgg-bn networks, each with its mirrored view), beside
model.onnx alone in onnxruntime on the same bitmap. The networks are untrained: time does not depend on the weights.

    python benchmarks/play_latency.py [--requests 100] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from PIL import Image

from common import DEFAULT_DATA, REPO, RESULTS, save
from quickdraw.model import MODELS
from quickdraw.onnx_export import onnx_model
from quickdraw.portable import PortableModel

CASES = {"seed": ("seed", 1, False), "vgg-bn": ("vgg-bn", 1, False), "10 x vgg-bn, mirrored": ("vgg-bn", 10, True)}
CLASSES = ["apple", "bicycle", "cat", "diamond", "eye", "fish"]
BUDGET_SECONDS = 1.0  # the issue's: a stroke ends -> a new guess within a second


def main() -> None:
    args = parse_args()
    drawings = np.load(args.data_dir / "cat.npy")[:args.requests].reshape(-1, 28, 28)
    canvases = [canvas_png(drawing) for drawing in drawings]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, (model, count, mirrored) in CASES.items():
            folder = best_model(Path(scratch) / name.replace(" ", "_"), model, count, mirrored)
            alone = onnxruntime_seconds(folder, drawings)
            over_http = served_seconds(folder.parent, canvases)
            rows.append({"model": name, "onnxruntime alone, median ms": 1000 * np.median(alone),
                         "guess over HTTP, median ms": 1000 * np.median(over_http),
                         "guess over HTTP, p95 ms": 1000 * np.percentile(over_http, 95),
                         "p95 / 1 s budget": np.percentile(over_http, 95) / BUDGET_SECONDS,
                         "requests": len(over_http)})
    save(args.output, rows, pd.DataFrame(rows), "play: a stroke's end to its guess, one request at a time")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="guesses timed per model (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="cat.npy's drawings are posted")
    parser.add_argument("--output", type=Path, default=RESULTS / "play_latency.json", help="default %(default)s")
    return parser.parse_args()


def canvas_png(drawing: np.ndarray) -> bytes:
    """A drawing as the page posts it: dark ink on a transparent 400x400 canvas."""
    alpha = Image.fromarray(drawing).resize((400, 400), Image.Resampling.BILINEAR)
    image = Image.new("RGBA", (400, 400), (17, 17, 17, 0))
    image.putalpha(alpha)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def best_model(experiment: Path, model: str, count: int, mirrored: bool) -> Path:
    """An experiment folder holding only what `play` reads: best_model/config.json and model.onnx."""
    folder = experiment / "best_model"
    folder.mkdir(parents=True)
    members = [{"model": model, "dropout": 0.5, "weight": 1 / count, "mirrored": mirrored}] * count
    networks = [MODELS[model].build(len(CLASSES), 0.5).eval() for _ in range(count)]
    (folder / "model.onnx").write_bytes(onnx_model(networks, members, CLASSES))
    (folder / "config.json").write_text(json.dumps({"members": members, "validation_accuracy": 0.0}))
    return folder


def onnxruntime_seconds(folder: Path, drawings: np.ndarray) -> list[float]:
    """model.onnx on one bitmap at a time, in this process, with the one thread `play` gives it."""
    model = PortableModel.from_bytes((folder / "model.onnx").read_bytes())
    model.probabilities(drawings[:1])  # the first run allocates
    return [timed(lambda: model.probabilities(drawing[np.newaxis])) for drawing in drawings]


def served_seconds(experiment: Path, canvases: list[bytes]) -> list[float]:
    """Each canvas posted to a real `play` in turn, from sending to the answer read."""
    server = subprocess.Popen([sys.executable, "tune_search.py", "play", str(experiment), "--port", "0"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://\S+/", server.stdout.readline())[0] + "guess"
        with requests.Session() as session:
            session.post(url, data=canvases[0]).raise_for_status()
            return [timed(lambda: session.post(url, data=canvas).raise_for_status()) for canvas in canvases]
    finally:
        server.terminate()
        server.wait()


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
