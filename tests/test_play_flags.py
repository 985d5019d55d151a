"""`play`'s bad input, each one line naming the folder or flag and what to do, exit code 2: a folder without a best
model, a best model without model.onnx (exported before there was one) or with a damaged one, a port out of range, a
port another program listens on, a host it cannot listen on; and serving beyond loopback warns in one line."""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest
import torch

from conftest import run_in_process, start_cli
from quickdraw.model import MODELS
from quickdraw.onnx_export import onnx_model

CLASSES = ["circle", "line"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A folder whose best_model/ holds what `play` reads: config.json and model.onnx (an untrained seed network)."""
    folder = tmp_path_factory.mktemp("play") / "exp"
    (folder / "best_model").mkdir(parents=True)
    member = {"model": "seed", "dropout": 0.5, "weight": 1.0, "mirrored": False}
    torch.manual_seed(0)
    network = MODELS["seed"].build(len(CLASSES), 0.5).eval()
    (folder / "best_model" / "model.onnx").write_bytes(onnx_model([network], [member], CLASSES))
    (folder / "best_model" / "config.json").write_text(json.dumps({"members": [member], "validation_accuracy": 0.5}))
    return folder


def one_line(result) -> str:
    assert result.returncode == 2 and not result.stdout, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tune_search.py: error: ") and "Traceback" not in result.stderr
    return line


def test_a_folder_without_a_best_model(tmp_path):
    assert "has no best_model/config.json: give the folder <storage>/<name>" in one_line(run_in_process("play", tmp_path))


@pytest.mark.parametrize("damage", ["missing", "not ONNX"])
def test_a_best_model_without_a_readable_model_onnx_names_the_command_that_exports_it(experiment, tmp_path, damage):
    import shutil

    copy = tmp_path / "exp"
    shutil.copytree(experiment, copy)
    if damage == "missing":
        (copy / "best_model" / "model.onnx").unlink()  # as in a search exported before model.onnx
    else:
        (copy / "best_model" / "model.onnx").write_bytes(b"\x08\x07garbage")
    line = one_line(run_in_process("play", copy))
    assert f"{copy / 'best_model' / 'model.onnx'} cannot be loaded" in line
    assert line.endswith(f"run `python tune_search.py report {copy}` to export it again")


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_a_port_out_of_range(experiment, port):
    assert f"--port {port}: give a port from 0 to 65535" in one_line(run_in_process("play", experiment, "--port", port))


def test_a_port_another_program_listens_on(experiment):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(run_in_process("play", experiment, "--port", port))
    assert line.endswith(f"--port {port}: another program listens there; give another --port (0: any free one)")


def test_a_host_it_cannot_listen_on(experiment):
    line = one_line(run_in_process("play", experiment, "--host", "192.0.2.1", "--port", "0"))  # TEST-NET: not ours
    assert "--host 192.0.2.1 --port 0: cannot listen there" in line


def test_serving_beyond_loopback_warns_in_one_line(experiment):
    process = start_cli("play", experiment, "--host", "0.0.0.0", "--port", "0")
    try:
        warning, serving = process.stdout.readline(), process.stdout.readline()
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert warning.startswith("tune_search.py: warning: --host 0.0.0.0 serves the page to other machines too")
    assert re.match(r"Draw at http://0\.0\.0\.0:\d+/ \(2 classes, from .+\); Ctrl-C stops", serving), serving
    assert process.returncode == 0 and rest.strip().startswith("stopped; to serve it again:"), rest
