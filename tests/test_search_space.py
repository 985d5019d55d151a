"""Search spaces (`--space FILE`, the grid flags) and the search flags: what a file means, and every kind of bad
space or contradicting flag stopped with one line that names the file, the key and what to write, exit code 2,
before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import tune

from conftest import REPO, SYNTHETIC_CLASSES, run_cli, write_class_files
from quickdraw.cli import build_parser, main, search_config
from quickdraw.config import SearchConfig
from quickdraw.search_record import config_json, config_of_json
from quickdraw.space import Dimension, load_space, parse_space
from quickdraw.tuner import param_space

EXAMPLE = REPO / "spaces" / "example.yaml"


def test_the_example_file_is_the_issue_s_space():
    space = {d.name: d for d in load_space(EXAMPLE)}
    assert space["lr"] == Dimension("lr", "loguniform", (1e-4, 1e-1))
    assert space["batch_size"] == Dimension("batch_size", "values", (32, 64, 128, 256, 512))
    assert space["dropout"] == Dimension("dropout", "uniform", (0.1, 0.6))
    assert space["weight_decay"] == Dimension("weight_decay", "loguniform", (1e-6, 1e-2))
    assert all(type(v) is int for v in space["batch_size"].args)


def test_yaml_and_json_mean_the_same_and_yaml_s_1e_4_is_a_number(tmp_path):
    (tmp_path / "s.yaml").write_text("lr: {loguniform: [1e-4, 1e-1]}\nbatch_size: [32, 64.0]\nmodel: vgg-bn\n")
    (tmp_path / "s.json").write_text('{"lr": {"loguniform": [0.0001, 0.1]}, "batch_size": [32, 64], "model": "vgg-bn"}')
    from_yaml, from_json = load_space(tmp_path / "s.yaml"), load_space(tmp_path / "s.json")
    assert from_yaml == from_json
    assert from_yaml[0].args == (1e-4, 0.1) and all(type(v) is float for v in from_yaml[0].args)
    assert [type(v) for v in from_yaml[1].args] == [int, int]
    assert from_yaml[2] == Dimension("model", "value", ("vgg-bn",)) and not from_yaml[2].searched


def test_a_space_round_trips_through_search_json():
    space = load_space(EXAMPLE)
    assert parse_space({d.name: d.as_spec() for d in space}, "x") == space
    config = flags_config("--search", "optuna", "--space", EXAMPLE, "--models", "seed,vgg-bn", "--epochs", "3")
    assert config_of_json(config_json(config)) == config


def flags_config(*argv) -> SearchConfig:
    """The SearchConfig that `run` builds from these flags (without running it)."""
    return search_config(build_parser().parse_args(["run", *map(str, argv)]))


def test_flags_make_the_seed_grid_and_the_file_replaces_only_what_it_names():
    default = flags_config()
    assert default.num_trials == 15 and [d.name for d in default.space if d.searched] == ["lr", "batch_size"]
    space = param_space(default)
    assert space["lr"] == tune.grid_search([0.01, 0.001, 0.0001]) and space["model"] == "seed"
    assert space["dropout"] == 0.5 and space["weight_decay"] == 0.0 and space["label_smoothing"] == 0.0
    assert param_space(flags_config("--label-smoothing", "0.1"))["label_smoothing"] == 0.1
    compiled = param_space(flags_config("--compile", "--precision", "fp32"))  # what quickdraw.trainable reads
    assert compiled["compile"] is True and compiled["precision"] == "fp32" and space["compile"] is False

    sampled = flags_config("--search", "optuna", "--space", EXAMPLE, "--models", "seed,vgg-bn")
    assert sampled.num_trials == 15  # --num-samples' default: the seed grid's budget
    space = param_space(sampled)
    assert isinstance(space["lr"], tune.search.sample.Float) and space["lr"].lower == 1e-4
    assert isinstance(space["model"], tune.search.sample.Categorical) and space["model"].categories == ["seed", "vgg-bn"]
    assert space["batch_size"].categories == [32, 64, 128, 256, 512]


def test_integer_ranges_include_high_and_sample_integers(tmp_path):
    (tmp_path / "s.yaml").write_text("batch_size: {lograndint: [16, 17]}\n")
    config = flags_config("--search", "random", "--space", tmp_path / "s.yaml")
    domain = param_space(config)["batch_size"]
    drawn = {domain.sample() for _ in range(200)}
    assert drawn == {16, 17} and all(type(v) is int for v in drawn)


# --- bad input -----------------------------------------------------------------------------------------------------

BAD_SPACES = [  # (file name, its text, what the error line must name)
    ("space.yaml", "lr: [0.01\n", ["space.yaml", "not YAML or JSON"]),
    ("space.json", '{"lr": [0.01,]}', ["space.json", "not YAML or JSON"]),
    ("space.yaml", "- 0.01\n- 0.001\n", ["space.yaml", "mapping", "lr: {loguniform"]),
    ("space.yaml", "", ["space.yaml", "mapping"]),
    ("space.yaml", "learning_rate: [0.01]\n", ["space.yaml", "'learning_rate'", "lr, batch_size"]),
    ("space.yaml", "lr: {logunif: [1e-4, 1e-1]}\n", ["space.yaml", "lr", "logunif", "loguniform"]),
    ("space.yaml", "lr: {loguniform: [0.1, 0.001]}\n", ["space.yaml", "lr", "low < high", "[0.001, 0.1]"]),
    ("space.yaml", "dropout: {uniform: [0.3, 0.3]}\n", ["space.yaml", "dropout", "low < high", "dropout: 0.3"]),
    ("space.yaml", "weight_decay: {loguniform: [0, 1e-2]}\n", ["space.yaml", "weight_decay", "low > 0", "uniform"]),
    ("space.yaml", "lr: {loguniform: [-1, 1e-2]}\n", ["space.yaml", "lr", "not a valid lr", "above 0"]),
    ("space.yaml", "batch_size: [32, 64.5]\n", ["space.yaml", "batch_size", "64.5", "whole number"]),
    ("space.yaml", "batch_size: {choice: [0, 64]}\n", ["space.yaml", "batch_size", "0", "whole number"]),
    ("space.yaml", "batch_size: {loguniform: [16, 512]}\n", ["space.yaml", "batch_size", "lograndint"]),
    ("space.yaml", "lr: {choice: []}\n", ["space.yaml", "lr", "empty", "lr: {loguniform"]),
    ("space.yaml", "lr: []\n", ["space.yaml", "lr", "empty"]),
    ("space.yaml", "model: [seed, resnet]\n", ["space.yaml", "model", "'resnet'", "vgg-bn"]),
    ("space.yaml", "dropout: {uniform: [0.1]}\n", ["space.yaml", "dropout", "[low, high]"]),
    ("space.yaml", "lr: {uniform: [0.001, 0.01], choice: [0.1]}\n", ["space.yaml", "lr", "unknown distribution"]),
    ("space.yaml", "dropout: 1.5\n", ["space.yaml", "dropout", "1.5", "up to, not including, 1"]),
]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_files(tmp_path / "data")


def run_in_process(capsys, data: Path, storage: Path, *flags) -> tuple[int, str]:
    """The main command with a tiny valid setup, run in this process: its exit code and its stderr."""
    code = main(["--data-dir", str(data), "--classes", ",".join(SYNTHETIC_CLASSES), "--split", "30,6,3",
                 "--storage", str(storage), "--epochs", "1", *map(str, flags)])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, storage: Path, *mentions: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for mention in mentions:
        assert mention in err, f"{mention!r} not in {err!r}"
    assert not storage.exists(), "a rejected search wrote to --storage"


@pytest.mark.parametrize("file_name,text,mentions", BAD_SPACES)
def test_bad_space_file(tmp_path, capsys, data, file_name, text, mentions):
    (tmp_path / file_name).write_text(text)
    code, err = run_in_process(capsys, data, tmp_path / "results", "--search", "random",
                               "--space", tmp_path / file_name)
    assert_one_line(code, err, tmp_path / "results", *mentions)


@pytest.mark.parametrize("flags,mentions", [
    (["--space", "nowhere.yaml"], ["nowhere.yaml", "no such file", "spaces/example.yaml"]),
    (["--space", EXAMPLE], ["example.yaml", "lr", "loguniform is sampled", "--search random"]),
    (["--num-samples", "10"], ["--num-samples", "15 combinations", "--search random"]),
    (["--search", "random", "--num-samples", "0"], ["--num-samples", "at least 1"]),
    (["--search", "optuna", "--max-concurrent-trials", "0"], ["--max-concurrent-trials", "at least 1"]),
    (["--search", "optuna", "--space", EXAMPLE, "--lrs", "0.1,0.01"], ["--lrs", "lr", "--space", "keep one"]),
    (["--search", "random", "--space", EXAMPLE, "--dropout", "0.2"], ["--dropout", "dropout", "keep one"]),
    (["--search", "bayes"], ["--search", "invalid choice", "optuna"]),
    (["--weight-decay", "-0.1"], ["--weight-decay", "0 or more"]),
    (["--label-smoothing", "1"], ["--label-smoothing", "up to, not including, 1"]),
])
def test_flags_that_contradict_the_space_or_the_search(tmp_path, capsys, data, flags, mentions):
    try:
        code, err = run_in_process(capsys, data, tmp_path / "results", *flags)
    except SystemExit as e:  # argparse's own errors exit from the parser
        code, err = e.code, capsys.readouterr().err
    assert_one_line(code, err, tmp_path / "results", *mentions)


@pytest.mark.slow
def test_a_bad_space_file_through_the_command_line_as_a_user_runs_it(tmp_path, data):
    (tmp_path / "space.yaml").write_text("weight_decay: {loguniform: [0, 0.1]}\n")
    result = run_cli("--data-dir", data, "--classes", ",".join(SYNTHETIC_CLASSES), "--storage", tmp_path / "results",
                     "--search", "optuna", "--space", tmp_path / "space.yaml", timeout=60)
    assert_one_line(result.returncode, result.stderr, tmp_path / "results", "space.yaml", "weight_decay", "low > 0")


def test_the_docs_list_every_hyperparameter_as_the_catalogue_describes_it():
    from quickdraw.catalogue import markdown_table

    assert markdown_table() in (REPO / "docs" / "search-spaces.md").read_text()
