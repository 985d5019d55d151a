"""--storage s3://...: an S3-compatible server on loopback (moto in server mode), reached the way users
reach MinIO or Ceph, through AWS_ENDPOINT_URL."""

import io
import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from conftest import (BUCKET, SYNTHETIC_CLASSES, copy_from_bucket, run_cli, s3_client, s3_keys, synthetic_drawings,
                      write_class_files)
from experiment_checks import check_experiment
from ray_cluster import free_port

pytestmark = pytest.mark.slow  # real searches stored in a loopback S3 server

LRS, BATCH_SIZES, EPOCHS = (0.01, 0.001), (32,), 2

STORAGE = f"s3://{BUCKET}/runs"


@pytest.fixture(scope="module")
def s3_experiment(s3_env, tmp_path_factory) -> str:
    data = write_class_files(tmp_path_factory.mktemp("s3") / "data")
    result = run_cli(
        "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "300,60,30",
        "--lrs", ",".join(map(str, LRS)), "--batch-sizes", ",".join(map(str, BATCH_SIZES)), "--epochs", EPOCHS,
        "--storage", STORAGE, "--name", "exp", env=s3_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"converted into {STORAGE}/datasets/" in result.stdout
    return f"{STORAGE}/exp"


def test_everything_lands_in_the_bucket_and_report_reads_it_back(s3_env, s3_experiment, tmp_path):
    stored = s3_keys(s3_env, "runs/")
    datasets = {key.split("/")[2] for key in stored if key.startswith("runs/datasets/")}
    assert len(datasets) == 1
    fingerprint = datasets.pop()
    assert {f"runs/datasets/{fingerprint}/split.npz", f"runs/datasets/{fingerprint}/manifest.json"} <= stored
    assert {"runs/exp/summary.md", "runs/exp/summary.csv", "runs/exp/summary.json", "runs/exp/search.json"} <= stored
    # The driver's claim (quickdraw.lease), made with a conditional PUT and released at the end.
    assert {key for key in stored if key.startswith("runs/exp/drivers/")} == {"runs/exp/drivers/0001.json"}
    claim = s3_client(s3_env).get_object(Bucket=BUCKET, Key="runs/exp/drivers/0001.json")["Body"].read()
    assert json.loads(claim)["released"] is True
    trials = {key.split("/")[2] for key in stored if key.startswith("runs/exp/lr=")}
    assert len(trials) == len(LRS) * len(BATCH_SIZES)
    for trial in trials:
        files = {key.split("/", 3)[3] for key in stored if key.startswith(f"runs/exp/{trial}/")}
        assert any(f.startswith("events.out.tfevents.") for f in files), files
        assert any(f.startswith("checkpoint_") and f.endswith("/trial_state.pt") for f in files), files
        assert "result.json" in files

    # report rebuilds the summaries from what is in the bucket alone.
    client = s3_client(s3_env)
    for name in ("summary.md", "summary.csv", "summary.json"):
        client.delete_object(Bucket=BUCKET, Key=f"runs/exp/{name}")
    report = run_cli("report", s3_experiment, env=s3_env, timeout=120)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "# Search results" in report.stdout
    table = pd.read_csv(io.BytesIO(client.get_object(Bucket=BUCKET, Key="runs/exp/summary.csv")["Body"].read()))
    assert len(table) == 2 and (table.status == "finished").all()

    # A local copy of the bucket's experiment passes every check a local run passes (TensorBoard included).
    local = tmp_path / "exp"
    for folder in ("exp", "datasets"):  # the split beside it, where report looks once the bucket is out of reach
        copy_from_bucket(s3_env, f"runs/{folder}", tmp_path / folder)
    check_experiment(local, LRS, BATCH_SIZES, EPOCHS)


def test_tensorboard_reads_the_trials_straight_from_the_bucket(s3_env, s3_experiment):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", s3_experiment, "--host", "127.0.0.1", "--port", str(port)],
        env=s3_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        runs, tags = [], {}
        # TensorBoard lists a run as soon as it finds its folder, and its tags once it has read its events: wait for both.
        while len(runs) < len(LRS) * len(BATCH_SIZES) or sorted(tags) != sorted(runs):
            assert time.monotonic() < deadline and server.poll() is None, f"TensorBoard listed {runs}, tags of {tags}"
            time.sleep(1)
            try:
                runs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5))
                tags = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5))
            except OSError:
                continue
        assert all(run.startswith("lr=") and "accuracy/test" in tags[run] for run in runs)
    finally:
        server.kill()
        server.wait()


def test_a_bucket_that_does_not_exist_is_one_line_before_any_work(s3_env, tmp_path):
    data = write_class_files(tmp_path / "data")
    result = run_cli("--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "30,6,3",
                     "--storage", "s3://no-such-bucket/runs", "--epochs", "1", env=s3_env, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"tune_search.py: error: --storage s3://no-such-bucket/runs: there is no bucket no-such-bucket at "
        f"{s3_env['AWS_ENDPOINT_URL']}; create it, or check the URI and AWS_ENDPOINT_URL"
    ]


def test_predict_reads_the_best_model_from_the_bucket(s3_env, s3_experiment, tmp_path):
    stored = {key for key in s3_keys(s3_env, "runs/exp/best_model/") if not key.endswith("/")}  # pyarrow's markers
    config = json.loads(s3_client(s3_env).get_object(Bucket=BUCKET, Key="runs/exp/best_model/config.json")["Body"].read())
    weights = [member[kind] for member in config["members"] for kind in ("weights_file", "safetensors_file")]
    assert stored == {f"runs/exp/best_model/{name}"
                      for name in (*weights, "model.onnx", "config.json", "classes.txt", "preprocessing.json")}
    np.save(tmp_path / "drawings.npy", np.stack([synthetic_drawings(label, 1)[0] for label in range(3)]))
    result = run_cli("predict", s3_experiment, tmp_path / "drawings.npy", env=s3_env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{tmp_path / 'drawings.npy'}[{n}]" for n in range(3)]
    tops = [line.split(": ")[1].split(", ") for line in lines]
    assert all(len(top) == 3 for top in tops)
    assert [top[0].rsplit(" ", 1)[0] for top in tops] == list(SYNTHETIC_CLASSES)  # each drawing's own class
