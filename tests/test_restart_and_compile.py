"""A restarted trial trains on as the uninterrupted one would have (issue 17): its random state comes back with
its checkpoint, and its optimizer state lands where the optimizer keeps it; and a compiled trial compiles one
graph for training and one for evaluation, whatever the sizes of its last batches."""

from __future__ import annotations

import warnings

import pytest
import torch

import quickdraw.training
from conftest import synthetic_tensors
from quickdraw.compute import Compute
from quickdraw.model import MODELS, Recipe, SeedCNN
from quickdraw.training import CHECKPOINT_FILE, Hyperparameters, Trainer

CPU = torch.device("cpu")
TIMINGS = ("train_seconds", "epoch_seconds", "images_per_second")
HYPERPARAMETERS = Hyperparameters(lr=0.003, batch_size=32, dropout=0.5, epochs=3)  # 40 a class: batches of 32, 32, 32, 24


def data() -> dict:
    return {"train": synthetic_tensors(40, seed=0), "validation": synthetic_tensors(10, seed=1)}


def trial_start(compute: Compute = Compute(CPU), name: str = "vgg-bn") -> Trainer:
    """A trial's Trainer as quickdraw.trainable starts one, fresh or restarted: torch's generator seeded first."""
    torch.manual_seed(0)
    return Trainer(MODELS[name], 3, HYPERPARAMETERS, 3 * 40, compute)


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMINGS}


def test_a_trial_restarted_after_an_epoch_trains_on_exactly_as_the_uninterrupted_one(tmp_path):
    """vgg-bn draws from torch's generator for shuffles, augmentation and dropout; a restart that reseeded it
    would replay the first epoch's draws."""
    straight = trial_start()
    straight_metrics = [without_timings(straight.run_epoch(data())[0]) for _ in range(3)]

    first = trial_start()
    first.run_epoch(data())
    first.save(tmp_path)
    torch.manual_seed(123)  # whatever ran in between
    restarted = trial_start()
    restarted.load(tmp_path)
    restarted_metrics = [without_timings(restarted.run_epoch(data())[0]) for _ in range(2)]

    assert restarted.finished and restarted_metrics == straight_metrics[1:]
    for ours, theirs in ((restarted.model.state_dict(), straight.model.state_dict()),
                         (restarted.progress.best_weights, straight.progress.best_weights)):
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            assert torch.equal(value, theirs[key]), key


def test_a_restart_keeps_adam_s_step_counters_on_the_host_and_its_moments_with_the_weights(tmp_path):
    """Restarted on an accelerator (here the `meta` device, which holds no data), the moments belong with their
    weights, and AdamW's step counters on the CPU, where it reads them each step; loaded onto the accelerator
    they would cost a host-device sync per parameter per step."""
    saved = trial_start(name="seed")
    saved.run_epoch(data())
    saved.save(tmp_path)

    meta = torch.device("meta")
    restarted = trial_start(Compute(meta), name="seed")
    with warnings.catch_warnings():  # copying weights into a model on `meta` does nothing, and torch says so
        warnings.filterwarnings("ignore", message=".*meta parameter.*")
        restarted.load(tmp_path)
    parameters = list(restarted.model.parameters())
    state = restarted.training.optimizer.state
    assert len(state) == len(parameters) == 10
    for parameter in parameters:
        assert parameter.device == meta
        assert state[parameter]["step"].device == CPU and state[parameter]["step"].item() == 4  # 4 batches
        assert state[parameter]["exp_avg"].device == state[parameter]["exp_avg_sq"].device == meta


@pytest.mark.slow  # Inductor compiles C++: 30 s with a cold cache, as on CI
def test_a_compiled_trial_compiles_one_graph_to_train_and_one_to_evaluate(monkeypatch, tmp_path):
    """102 drawings in batches of 32 leave a last batch of 6 (under 16: on the CPU another convolution path),
    validation's 90 in batches of 64 one of 26, and the test's 21 drawings are another size again. Before, that
    made three graphs: training's static one, a dynamic one for its last batch, and evaluation's."""
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(inductor, "compile_threads", inductor.compile_threads)  # put back afterwards
    monkeypatch.setattr(quickdraw.training, "EVAL_BATCH_SIZE", 64)
    threads = torch.get_num_threads()
    torch._dynamo.reset()
    counters.clear()
    try:
        torch.set_num_threads(1)  # as a trial with one CPU
        torch.manual_seed(0)
        seed_in_one_cycle = Recipe(SeedCNN, one_cycle=True)  # the smaller network compiles faster
        trainer = Trainer(seed_in_one_cycle, 3, HYPERPARAMETERS, 3 * 34, Compute(CPU, compile=True))
        assert inductor.compile_threads == 1  # not one compiling process per core
        compiled = {"train": synthetic_tensors(34, seed=0), "validation": synthetic_tensors(30, seed=1)}
        while not trainer.finished:
            metrics, _ = trainer.run_epoch(compiled)
        trainer.best_probabilities(synthetic_tensors(7, seed=2)[0])
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] == 2 and counters["frames"]["ok"] == 2, dict(counters["stats"])
    # Three whole batches an epoch, and the one-cycle schedule counted in them: it ends on the trial's last step.
    schedule = trainer.training.schedule
    assert schedule.total_steps == schedule.last_epoch == 3 * 3
    assert metrics["images_per_second"] == 96 / metrics["epoch_seconds"] and metrics["val_accuracy"] > 1 / 3
    trainer.save(tmp_path)  # a checkpoint holds the model's own names, loadable without compile
    checkpoint = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["model"].keys() == SeedCNN(3).state_dict().keys()
