"""What mattered, on experiment folders written by hand as Tune and the search write them (no training): the
ranked summary of a sampled search, fANOVA's hyperparameter importance from Optuna, its figures, and which
figures a grid and a sampled search get."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from PIL import Image

from experiment_checks import check_ranking, ranked_rows
from quickdraw import importance
from quickdraw.catalogue import HYPERPARAMETERS
from quickdraw.config import SearchConfig
from quickdraw.experiment import load_trials, space_of
from quickdraw.figures import validation_curves_figure
from quickdraw.report import write_report
from quickdraw.report_sections import curve_lines
from quickdraw.provenance import run_record
from quickdraw.search_record import SearchRecord
from quickdraw.space import merge, parse_space
from quickdraw.storage import Location

# A random search in which validation accuracy depends on the learning rate alone (best near 3e-3, worse on a log
# scale either side); batch size and dropout are drawn too but change nothing.
RANDOM_SPACE = {"model": "seed", "lr": {"loguniform": [1e-4, 1e-1]}, "batch_size": [32, 64, 128],
                "dropout": {"uniform": [0.1, 0.6]}, "weight_decay": 0.0}
TRIALS, STOPPED = 16, (3, 7, 11)  # trials ASHA stopped after 1 epoch, untested
EPOCHS = 3


def accuracy_of(lr: float) -> float:
    return 0.95 - 0.08 * (math.log10(lr) + 2.5) ** 2


DEFAULTS = {h.name: h.default[0] for h in HYPERPARAMETERS}  # every hyperparameter a trial's config holds


def random_trials(count: int = TRIALS, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    trials = []
    for n in range(count):
        lr = float(10 ** rng.uniform(-4, -1))
        config = {**DEFAULTS, "lr": lr, "batch_size": int(rng.choice([32, 64, 128])),
                  "dropout": float(rng.uniform(0.1, 0.6))}
        trials.append({"config": config, "accuracy": accuracy_of(lr), "stopped": n in STOPPED})
    return trials


def write_experiment(folder: Path, trials: list[dict], record: SearchRecord | None) -> Location:
    """An experiment folder as a search leaves it: search.json (`record`; none when None), Tune's experiment state,
    and each trial's params.json and result.json (a line per epoch; validation accuracy rising to `accuracy`)."""
    folder.mkdir(parents=True)
    if record is not None:
        record.write(Location.parse(str(folder)))
    entries = []
    for n, trial in enumerate(trials):
        trial_id, config = f"abc_{n:05d}", {**trial["config"], "epochs": EPOCHS, "seed": 0}
        name = f"lr={config['lr']:g}_batch={config['batch_size']}_{config['model']}_{trial_id}"
        (folder / name).mkdir()
        (folder / name / "params.json").write_text(json.dumps(config))
        epochs = 1 if trial.get("stopped") else EPOCHS
        reached = [trial["accuracy"] * e / epochs for e in range(1, epochs + 1)]
        history = [{"epoch": e, "training_iteration": e, "val_accuracy": accuracy, "val_loss": 1.5 - accuracy,
                    "best_val_accuracy": accuracy, "best_val_loss": 1.5 - accuracy, "train_seconds": 2.0 * e}
                   for e, accuracy in enumerate(reached, start=1)]
        if not trial.get("stopped"):
            history[-1]["test_accuracy"] = trial["accuracy"] - 0.01
        (folder / name / "result.json").write_text("".join(json.dumps(row) + "\n" for row in history))
        state = {"trial_id": trial_id, "config": config, "status": "TERMINATED", "relative_logdir": name,
                 "experiment_tag": f"{n + 1}_lr={config['lr']:g}"}
        entries.append([json.dumps(state), json.dumps({"last_result": history[-1]})])
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    return Location.parse(str(folder))


def random_record(space: dict = RANDOM_SPACE, search: str = "random") -> SearchRecord:
    config = SearchConfig(space=merge(parse_space(space, "test")), search=search,
                          num_samples=TRIALS if search != "grid" else None, epochs=EPOCHS)
    return SearchRecord(config, "/nowhere", {"cpu": 1.0, "gpu": 0}, run_record({"CPU": 2.0}, 1))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # a whole, valid PNG
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def random_search(tmp_path_factory) -> Location:
    experiment = write_experiment(tmp_path_factory.mktemp("random") / "search", random_trials(), random_record())
    write_report(experiment)
    return experiment


def summary_of(experiment: Location) -> dict:
    return json.loads((experiment / "summary.json").read_text())


def test_the_summary_ranks_every_trial_with_every_hyperparameter(random_search):
    table = pd.read_csv(Path(random_search.path) / "summary.csv")
    assert list(table.columns) == ["rank", "model", "lr", "batch_size", "dropout", "weight_decay", "label_smoothing", "ema_decay", "epochs",
                                   "best_val_loss", "best_val_accuracy", "test_accuracy", "train_seconds", "status",
                                   "best"]
    check_ranking(table)
    assert len(table) == TRIALS and (table.status == "stopped").sum() == len(STOPPED)
    assert table.equals(pd.DataFrame(summary_of(random_search)["trials"]))
    expected = sorted((t["config"]["lr"] for t in random_trials()), key=lambda lr: -accuracy_of(lr))
    assert list(table.lr) == pytest.approx(expected)  # the ranking follows validation accuracy, stopped trials too

    markdown = (Path(random_search.path) / "summary.md").read_text()
    rows = ranked_rows(markdown)
    assert list(rows[0]) == ["Rank", "Learning rate", "Batch size", "Dropout", "Validation accuracy", "Test accuracy"]
    assert [row["Rank"].strip("*") for row in rows] == [str(n) for n in range(1, TRIALS + 1)]
    assert "Same for every trial: model seed, weight decay 0, label smoothing 0, EMA decay 0." in markdown
    best = table[table.best].iloc[0]
    assert best.status == "finished" and best.name == table[table.status == "finished"].index[0]
    assert f"Best: **seed, lr {best.lr:.4g}, batch size {best.batch_size}, dropout {best.dropout:.4g}: " in markdown
    (bold,) = [row for row in rows if row["Rank"].startswith("**")]
    assert bold["Rank"] == f"**{best['rank']}**" and bold["Dropout"] == f"**{best.dropout:.4g}**"
    for row in rows:
        if row["Rank"] in {str(r) for r in table[table.status == "stopped"]["rank"]}:
            assert row["Test accuracy"] == "stopped by ASHA (1 epoch)"


def test_the_learning_rate_mattered_most_and_the_numbers_are_optunas(random_search):
    """summary.json holds what Optuna's fANOVA returns for the same trials, built here independently."""
    summary = summary_of(random_search)
    shares = summary["hyperparameter_importance"]
    assert set(shares) == {"lr", "batch_size", "dropout"} and sum(shares.values()) == pytest.approx(1)
    assert max(shares, key=shares.get) == "lr" and shares["lr"] > 0.5, shares
    assert summary["importance_method"] == (f"fANOVA: optuna {optuna.__version__} FanovaImportanceEvaluator(seed=0) "
                                            f"on {TRIALS} trials ({len(STOPPED)} of them stopped by ASHA)")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distributions = {"lr": FloatDistribution(1e-4, 1e-1, log=True),
                     "batch_size": CategoricalDistribution([32, 64, 128]), "dropout": FloatDistribution(0.1, 0.6)}
    for trial in random_trials():  # in the search's order, the accuracy each reached (stopped trials too)
        params = {name: trial["config"][name] for name in distributions}
        epochs = 1 if trial["stopped"] else EPOCHS
        value = 100 * (trial["accuracy"] * epochs / epochs)  # the last epoch's, as write_experiment wrote it
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    expected = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    assert list(shares) == list(expected)  # largest first
    assert shares == expected


def test_the_importance_is_exactly_optunas_on_the_report_table(random_search):
    trials, _ = load_trials(random_search)
    search, space = space_of(random_search, trials)
    assert search == "random" and [d.name for d in space if d.searched] == ["lr", "batch_size", "dropout"]
    study = importance.study(trials, space)
    assert len(study.trials) == TRIALS
    assert [t.params["lr"] for t in study.trials] == [t["config"]["lr"] for t in random_trials()]  # search order
    expected = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    assert summary_of(random_search)["hyperparameter_importance"] == expected


def test_a_sampled_search_gets_what_mattered_and_no_heatmap(random_search):
    folder = Path(random_search.path)
    figures = {p.name for p in (folder / "report").iterdir()}
    assert figures == {"hyperparameter_importance.png", "parallel_coordinates.png", "scatter_lr.png",
                       "scatter_batch_size.png", "scatter_dropout.png", "curves.png"}  # 16 lrs: one curves figure
    for name in figures:
        width, height = png_size(folder / "report" / name)
        assert width > 300 and height > 200, name
    page = (folder / "report.html").read_text()
    assert "<h2>What mattered</h2>" in page
    assert "Not shown: the heatmap: a random search samples its trials instead of filling a grid" in page
    assert "test_accuracy_heatmap" not in page


def test_log_dimensions_get_log_axes():
    table, space = random_table(), parse_space(RANDOM_SPACE, "test")
    figure = importance.parallel_coordinates_figure(table, space)
    (lr_axes,) = [axes for axes in figure.axes if axes.get_yscale() == "log"]  # lr is the only log dimension
    assert lr_axes.get_ylim() == pytest.approx((table.lr.min(), table.lr.max()))
    assert importance.scatter_figure(table, space, "lr").axes[0].get_xscale() == "log"
    assert importance.scatter_figure(table, space, "dropout").axes[0].get_xscale() == "linear"


def random_table() -> pd.DataFrame:
    from quickdraw.summary import trial_row, trial_table

    rows = []
    for n, trial in enumerate(random_trials()):
        last = {"epoch": EPOCHS, "best_val_accuracy": trial["accuracy"], "best_val_loss": 1 - trial["accuracy"],
                "test_accuracy": trial["accuracy"]}
        rows.append({**trial_row(trial["config"], last, "TERMINATED"), "trial_id": f"t_{n:05d}",
                     "trial_number": n + 1, "trial_dir": ""})
    return trial_table(rows)


def grid_trials(dropouts=(0.5,)) -> list[dict]:
    return [{"config": {**DEFAULTS, "lr": lr, "batch_size": batch_size, "dropout": dropout},
             "accuracy": (0.9 if lr == 0.01 else 0.8) - batch_size / 10_000}  # mostly the learning rate
            for lr in (0.01, 0.001) for batch_size in (32, 64) for dropout in dropouts]


GRID_SPACE = {"lr": [0.01, 0.001], "batch_size": [32, 64]}


def test_a_grid_keeps_its_heatmap_and_gets_what_mattered(tmp_path):
    experiment = write_experiment(tmp_path / "grid", grid_trials(), random_record(GRID_SPACE, "grid"))
    summary = write_report(experiment)
    assert summary.search == "grid"
    assert [d.as_spec() for d in summary.space] == ["seed", [0.01, 0.001], [32, 64], 0.5, 0.0, 0.0, 0.0]
    figures = {p.name for p in (tmp_path / "grid" / "report").iterdir()}
    assert figures == {"test_accuracy_heatmap.png", "hyperparameter_importance.png", "parallel_coordinates.png",
                       "scatter_lr.png", "scatter_batch_size.png", "curves_lr=0.01.png", "curves_lr=0.001.png"}
    shares = summary_of(experiment)["hyperparameter_importance"]
    assert max(shares, key=shares.get) == "lr"


def test_a_grid_whose_trials_share_heatmap_cells_skips_the_heatmap(tmp_path):
    """A grid over dropout too: two trials per (model, lr, batch size) cell, so no cell holds one trial."""
    space = {"model": "seed", "lr": [0.01, 0.001], "batch_size": [32, 64], "dropout": [0.2, 0.5], "weight_decay": 0.0}
    experiment = write_experiment(tmp_path / "grid", grid_trials((0.2, 0.5)), random_record(space, "grid"))
    write_report(experiment)
    figures = {p.name for p in (tmp_path / "grid" / "report").iterdir()}
    assert "test_accuracy_heatmap.png" not in figures and "scatter_dropout.png" in figures
    page = (tmp_path / "grid" / "report.html").read_text()
    assert "Not shown: the heatmap: trials share a cell of model, learning rate and batch size, differing in " \
           "dropout" in page
    markdown = (tmp_path / "grid" / "summary.md").read_text()
    assert "Best: **seed, lr 0.01, batch size 32, dropout 0.2: " in markdown  # dropout tells the tied trials apart


def test_one_trial_is_too_few_to_say_what_mattered(tmp_path):
    experiment = write_experiment(tmp_path / "one", random_trials(1), random_record())
    write_report(experiment)
    summary = summary_of(experiment)
    assert summary["hyperparameter_importance"] == {}
    assert summary["importance_method"] == ("not computed: 1 trial finished or was stopped by ASHA with a validation "
                                            "result; comparing hyperparameters takes 2 or more")
    (trial,) = random_trials(1)
    assert {p.name for p in (tmp_path / "one" / "report").iterdir()} == {f"curves_lr={trial['config']['lr']:.4g}.png"}
    page = (tmp_path / "one" / "report.html").read_text()
    assert "Not shown: the hyperparameter importance, parallel coordinates and scatters: 1 trial finished" in page


def test_without_search_json_the_report_uses_the_values_the_trials_took(tmp_path):
    experiment = write_experiment(tmp_path / "bare", grid_trials(), None)
    trials, _ = load_trials(experiment)
    search, space = space_of(experiment, trials)
    assert search == "grid"
    assert [d.as_spec() for d in space] == ["seed", [0.001, 0.01], [32, 64], 0.5, 0.0, 0.0, 0.0]
    assert importance.assess(trials, space).shares


def test_the_curves_of_many_trials_name_the_best_eight(random_search):
    trials, histories = load_trials(random_search)
    named, others = curve_lines(trials, histories, ["lr", "batch_size", "dropout"])
    assert [label.split()[0] for label in named] == [f"#{rank}" for rank in range(1, 9)]
    assert len(others) == TRIALS - 8
    first = trials.iloc[0]
    status = "" if first.status == "finished" else f" ({first.status})"
    assert list(named)[0] == f"#1 lr {first.lr:.4g} batch {first.batch_size} dropout {first.dropout:.4g}{status}"
    figure = validation_curves_figure("Every trial", named, others)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == [*named, f"{TRIALS - 8} other trials"]
    assert len(figure.axes[0].lines) == TRIALS
