"""A real `tensorboard` server on loopback over a finished experiment, asked through its HTTP data API
what a user's browser would show: the runs, their scalars, images and the HParams table."""

import io
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import SYNTHETIC_CLASSES, run_cli, write_class_files
from experiment_checks import results, trial_dirs
from quickdraw.trainable import HPARAM_METRICS, SCALAR_TAGS
from ray_cluster import free_port

LRS, BATCH_SIZES, EPOCHS = (0.01, 0.001), (32,), 2


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    data = write_class_files(root / "data")
    result = run_cli("--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "300,60,30",
                     "--lrs", ",".join(map(str, LRS)), "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
                     "--epochs", EPOCHS, "--storage", root / "results", "--name", "tb")
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "results" / "tb"


@pytest.fixture(scope="module")
def tensorboard(experiment):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(experiment), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if len(get(url, "/data/runs")) == len(LRS) * len(BATCH_SIZES):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not list the runs"
        time.sleep(0.5)
    yield url
    server.kill()
    server.wait()


def get(url: str, path: str, **query):
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=10) as response:
        return response.read() if query.get("raw") else json.load(response)


def post(url: str, path: str, body: dict):
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_each_trial_is_a_run_with_every_scalar_per_epoch(experiment, tensorboard):
    trials = {t.name: results(t) for t in trial_dirs(experiment)}
    assert sorted(get(tensorboard, "/data/runs")) == sorted(trials)
    tags = get(tensorboard, "/data/plugin/scalars/tags")
    for run, history in trials.items():
        assert set(SCALAR_TAGS) | {"accuracy/test"} <= set(tags[run])
        for tag, key in SCALAR_TAGS.items():
            points = get(tensorboard, "/data/plugin/scalars/scalars", run=run, tag=tag)
            assert [step for _, step, _ in points] == [r["epoch"] for r in history]
            assert [value for *_, value in points] == pytest.approx([r[key] for r in history], rel=1e-6)
        learning_rates = [v for *_, v in get(tensorboard, "/data/plugin/scalars/scalars", run=run,
                                             tag="optimizer/learning_rate")]
        assert learning_rates == pytest.approx([history[0]["learning_rate"]] * EPOCHS)


def test_confusion_matrix_and_misclassified_drawings_are_images(experiment, tensorboard):
    tags = get(tensorboard, "/data/plugin/images/tags")
    for run in get(tensorboard, "/data/runs"):
        assert {"test/confusion_matrix", "test/misclassified"} <= set(tags[run])
        for tag in ("test/confusion_matrix", "test/misclassified"):
            (entry,) = get(tensorboard, "/data/plugin/images/images", run=run, tag=tag)
            query = urllib.parse.parse_qs(entry["query"])
            png = get(tensorboard, "/data/plugin/images/individualImage",
                      **{k: v[0] for k, v in query.items()}, raw=1)
            image = Image.open(io.BytesIO(png)).convert("L")
            assert image.width > 100 and len(np.unique(np.asarray(image))) > 10  # a drawn figure, not a blank


def test_hparams_lists_every_trial_with_its_settings_and_accuracies(experiment, tensorboard):
    info = post(tensorboard, "/data/plugin/hparams/experiment", {"experimentName": ""})
    # Only what the grid varies, with the grid's values: a batch size, model or dropout shared by every trial
    # would be an axis of one value.
    (lr,) = info["hparamInfos"]
    assert lr["name"] == "lr" and sorted(lr["domainDiscrete"]) == sorted(LRS)
    assert {m["name"]["tag"] for m in info["metricInfos"]} == set(HPARAM_METRICS)
    groups = post(tensorboard, "/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    })["sessionGroups"]
    trials = {t.name: results(t)[-1] for t in trial_dirs(experiment)}
    assert sorted(g["name"] for g in groups) == sorted(trials)
    for group in groups:
        last = trials[group["name"]]
        config = json.loads((experiment / group["name"] / "params.json").read_text())
        assert group["hparams"] == {"lr": config["lr"]}
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metrics["accuracy/test"] == pytest.approx(last["test_accuracy"])
        assert metrics["accuracy/validation_best"] == pytest.approx(last["best_val_accuracy"])
        assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]
