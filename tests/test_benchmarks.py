"""The benchmark scripts run end to end on a small workload and write the rows they promise (no timing is
asserted: the figures are for the README, measured with the scripts' defaults)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, SYNTHETIC_CLASSES, npy_bytes, synthetic_drawings, write_class_files

pytestmark = pytest.mark.slow  # each test runs a benchmark script


def run_benchmark(name: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, f"benchmarks/{name}.py", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def small_data(tmp_path):
    data = write_class_files(tmp_path / "data")
    return ["--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "150,30,30"]


def test_trial_throughput_measures_all_three_pipelines_per_batch_size(tmp_path):
    output = tmp_path / "throughput.json"
    result = run_benchmark("trial_throughput", *small_data(tmp_path), "--batch-sizes", "16,64", "--repeats", "1",
                           "--output", output)
    rows = json.loads(output.read_text())
    assert [row["batch_size"] for row in rows] == [16, 64]
    for row in rows:
        assert set(row) == {"batch_size", "ceiling_ips", "trial_ips", "seed_pipeline_ips"}
        assert all(value > 0 for value in row.values())
    assert "trial / ceiling (b/a)" in result.stdout and "trial / seed (b/c)" in result.stdout


def test_grid_overhead_times_a_real_grid(tmp_path):
    output = tmp_path / "overhead.json"
    run_benchmark("grid_overhead", *small_data(tmp_path), "--lrs", "0.001", "--batch-sizes", "32,64", "--epochs", "1",
                  "--output", output)
    (row,) = json.loads(output.read_text())
    assert row["trials"] == 2 and row["trials_at_once"] == 2
    assert row["grid_wall_s"] >= row["longest_trial_s"] > 0
    assert abs(row["ideal_s"] - row["sum_trial_s"] / 2) < 1e-6


def test_asha_saving_runs_both_grids(tmp_path):
    output = tmp_path / "asha.json"
    # lr 0.003 learns, lr 0.5 stays at chance, and trials start in grid order: ASHA has something to stop.
    run_benchmark("asha_saving", *small_data(tmp_path), "--lrs", "0.003,0.5", "--batch-sizes", "16,32", "--epochs",
                  "3", "--grace-period", "1", "--reduction-factor", "2", "--output", output)
    fifo, asha = json.loads(output.read_text())
    assert (fifo["scheduler"], asha["scheduler"]) == ("none", "asha")
    assert fifo["trials"] == asha["trials"] == 4 and fifo["stopped"] == 0
    assert fifo["trial_epochs"] == 4 * 3
    assert asha["stopped"] > 0 and asha["trial_epochs"] < fifo["trial_epochs"]
    assert 0 <= asha["best_test_accuracy"] <= 100


def test_model_ablation_trains_every_variant(tmp_path):
    output = tmp_path / "ablation.json"
    # Enough steps for batch norm's running statistics to settle: 3 epochs of 300 drawings in batches of 16, 57 steps
    # (38 were enough for every variant on this project's machine; 20 were not for the three with one-cycle).
    data = write_class_files(tmp_path / "data")
    run_benchmark("model_ablation", "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES),
                  "--split", "300,60,60", "--epochs", "3", "--batch-size", "16", "--output", output)
    rows = json.loads(output.read_text())
    assert [row["variant"] for row in rows] == ["seed", "vgg-bn network", "+ one-cycle", "+ augmentation",
                                                "+ mirroring = vgg-bn"]
    for row in rows:
        assert row["test_errors"] == round(60 * (1 - row["test_accuracy"] / 100))
        assert row["best_val_accuracy"] > 50  # chance is a third: each variant learned


def test_search_efficiency_runs_every_method_with_the_grid_s_budget(tmp_path):
    output = tmp_path / "search.json"
    run_benchmark("search_efficiency", *small_data(tmp_path), "--lrs", "0.01", "--batch-sizes", "16",
                  "--epochs", "2", "--repeats", "1", "--output", output)  # a grid of one trial: each method draws one
    rows = json.loads(output.read_text())
    assert [row["method"] for row in rows] == ["grid", "random", "optuna", "optuna + asha"]
    for row in rows:
        assert {"method", "repeat", "trials", "trial_epochs", "best_val_accuracy", "test_accuracy",
                "wall_seconds"} <= set(row)
        assert row["trials"] == 1 and 0 <= row["test_accuracy"] <= 100 and row["wall_seconds"] > 0
    assert [row["trial_epochs"] for row in rows[:3]] == [2, 2, 2]
    assert rows[0]["best_lr"] == 0.01 and rows[1]["best_lr"] != 0.01  # the grid's values, then sampled ones


def test_memory_scaling_measures_each_case(tmp_path):
    output = tmp_path / "memory.json"
    data = write_class_files(tmp_path / "data")  # 200 drawings a class, tiled to 1,000 for the 3,000-drawing split
    run_benchmark("memory_scaling", "--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--sizes", "3000",
                  "--trials", "1,2", "--output", output)
    rows = json.loads(output.read_text())
    assert [(row["drawings"], row["trials"]) for row in rows] == [(3000, 1), (3000, 2)]
    for row in rows:
        assert {"drawings", "trials", "split_bytes", "peak_pss_bytes", "conversion_seconds",
                "images_per_second"} <= set(row)
        assert row["split_bytes"] == 3000 * (784 + 8)  # uint8 drawings and int64 labels
        assert all(row[key] > 0 for key in ("peak_pss_bytes", "conversion_seconds", "images_per_second",
                                            "trial_own_bytes"))
        assert row["trials_at_once"] == row["trials"]  # --cpus-per-trial 2/k let all k run together
        assert row["peak_pss_bytes"] > row["split_bytes"]
        assert row["object_store_bytes"] >= row["split_bytes"]  # the split sits in Ray's object store (shared memory)
    assert rows[0]["added_per_extra_trial_bytes"] is None and rows[1]["added_per_extra_trial_bytes"] is not None


def test_ensembles_chooses_every_row_on_validation(tmp_path):
    output = tmp_path / "ensembles.json"
    result = run_benchmark("ensembles", *small_data(tmp_path), "--lrs", "0.003", "--batch-sizes", "16,32",
                           "--seed-lrs", "0.003", "--seed-batch-sizes", "32", "--epochs", "1", "--repeats", "1",
                           "--output", output)
    rows = {row["model"]: row for row in json.loads(output.read_text())}
    assert list(rows) == ["seed CNN", "vgg-bn", "vgg-bn + EMA", "+ mirrored views", "+ ensemble of the search's trials"]
    ensemble, single = rows["+ ensemble of the search's trials"], rows["+ mirrored views"]
    # Never below the best single trial on validation (the trials report theirs in float32: to within its rounding).
    assert ensemble["validation_accuracy"] >= single["validation_accuracy"]
    assert single["validation_accuracy"] >= rows["vgg-bn + EMA"]["validation_accuracy"] - 1e-4
    assert 1 <= ensemble["members"] <= 2 and sum(ensemble["weights"].values()) == pytest.approx(1)
    assert "test errors / seed CNN's" in result.stdout


def test_onnx_export_times_both_exporters_in_fresh_processes(tmp_path):
    output = tmp_path / "onnx.json"
    data = tmp_path / "data"
    data.mkdir()
    (data / "cat.npy").write_bytes(npy_bytes(synthetic_drawings(0, 20)))
    result = run_benchmark("onnx_export", "--models", "seed", "--repeats", "1", "--data-dir", data, "--output", output)
    rows = json.loads(output.read_text())
    assert [(row["model"], row["exporter"]) for row in rows] == [("seed", "torchscript"), ("seed", "dynamo")]
    for row in rows:
        assert row["import_seconds"] > 0 and row["export_seconds"] > 0
        assert row["max_difference"] < 1e-5  # onnxruntime computes what torch does, through either exporter
    assert "b / a" in result.stdout
