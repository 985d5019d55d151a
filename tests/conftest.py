"""Shared test helpers: synthetic class files, the real drawings, running the command as a user would, and a real
browser (Debian's Chromium driven by Playwright) for what only a browser shows."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DRAWINGS = Path(os.environ.get("QUICKDRAW_DATA", REPO.parent / "shared" / "quickdraw"))
SHARED_CLASSES = ("apple", "bicycle", "cat", "diamond", "eye", "fish")
SYNTHETIC_CLASSES = ("circle", "line", "hot dog")


def synthetic_drawings(label: int, count: int, seed: int = 0) -> np.ndarray:
    """(count, 784) uint8 drawings a small CNN can tell apart: class `label` lights its own band of
    rows, on noise. Every drawing is unique (its index is written into the first four pixels),
    so tests can check that splits never share a drawing."""
    rng = np.random.default_rng([seed, label])
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    band = slice(4 + 7 * label, 8 + 7 * label)
    images[:, band, 4:24] = 255
    index = np.arange(count, dtype=np.uint32).view(np.uint8).reshape(count, 4)
    images.reshape(count, 784)[:, :4] = index
    return images.reshape(count, 784)


def synthetic_tensors(count: int, seed: int):
    """`count` synthetic drawings of each of three classes as a trial holds them: (N, 1, 28, 28) uint8, labels."""
    import torch

    drawings = [torch.from_numpy(synthetic_drawings(label, count, seed)) for label in range(3)]
    return torch.cat(drawings).reshape(-1, 1, 28, 28), torch.arange(3).repeat_interleave(count)


def write_class_files(folder: Path, classes=SYNTHETIC_CLASSES, count: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(classes):
        np.save(folder / f"{name}.npy", synthetic_drawings(label, count))
    return folder


def write_confusable_class_files(folder: Path, count: int = 200) -> Path:
    """Synthetic class files in which every fifth drawing looks like the next class: no model gets them all
    right, so accuracies are not simply 100%."""
    folder.mkdir(parents=True)
    for label, name in enumerate(SYNTHETIC_CLASSES):
        drawings = synthetic_drawings(label, count)
        drawings[::5] = synthetic_drawings((label + 1) % len(SYNTHETIC_CLASSES), count, seed=1)[::5]
        np.save(folder / f"{name}.npy", drawings)
    return folder


@pytest.fixture
def synthetic_data(tmp_path) -> Path:
    return write_class_files(tmp_path / "data")


def cli_command(*args, python_flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *python_flags, "tune_search.py", *map(str, args)]


def run_cli(*args, timeout: int = 300, env: dict | None = None, python_flags: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess:
    """`python tune_search.py ARGS` from the repository root, as the README runs it."""
    return subprocess.run(cli_command(*args, python_flags=python_flags), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_in_process(*args) -> subprocess.CompletedProcess:
    """The command through the same `main` that tune_search.py calls, in this process: the same output and exit
    code, without starting Python and importing the package again (for commands that end before Ray starts)."""
    from quickdraw.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exited:  # argparse's errors and --help
            code = exited.code
    return subprocess.CompletedProcess(["tune_search.py", *map(str, args)], code, out.getvalue(), err.getvalue())


def imported_modules(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime tune_search.py ARGS`, and every module it imported (from importtime's lines)."""
    result = run_cli(*args, python_flags=("-X", "importtime"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return result, {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # the first line is importtime's header


def is_ray(module: str) -> bool:
    return module == "ray" or module.startswith("ray.")


def start_cli(*args, env: dict | None = None) -> subprocess.Popen:
    """The command started in the background, its output (stdout and stderr together) kept for asserts.

    Ctrl-C (SIGINT) reaches it as it reaches a command in a terminal, even when pytest itself was started
    in the background, which leaves SIGINT ignored in every process it starts and Python without its handler."""
    return subprocess.Popen(
        cli_command(*args), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


needs_shared_drawings = pytest.mark.skipif(
    not all((SHARED_DRAWINGS / f"{c}.npy").is_file() for c in SHARED_CLASSES),
    reason=f"real drawings not found in {SHARED_DRAWINGS} (set QUICKDRAW_DATA)",
)


CHROMIUM = Path(os.environ.get("QUICKDRAW_CHROMIUM", "/usr/bin/chromium"))
INSTALL_CHROMIUM = "apt-get install -y chromium"


@pytest.fixture(scope="session")
def browser():
    """Chromium, headless, through Playwright. Without it the browser tests skip, saying how to install it, unless
    QUICKDRAW_REQUIRE_BROWSER=1 (as .ci/run sets): CI never skips them silently."""
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM}: install it with `{INSTALL_CHROMIUM}` (as root) to run the browser tests"
        if os.environ.get("QUICKDRAW_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()
