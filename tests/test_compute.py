"""A trial's arithmetic: bf16 autocast where the hardware has it, channels_last, and torch.compile."""

import pytest
import torch

from conftest import synthetic_tensors
from quickdraw.compute import Compute, choose, has_native_bf16
from quickdraw.model import SeedCNN
from quickdraw.training import Training, evaluate, train_epoch

CPU = torch.device("cpu")


def test_auto_takes_bf16_only_where_the_hardware_has_it():
    assert choose(CPU, "auto").bf16 == has_native_bf16(CPU)
    assert choose(CPU, "bf16").bf16 and not choose(CPU, "fp32").bf16
    assert choose(CPU, "fp32", compile=True).compile


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp32"])
def test_convolutions_run_in_the_chosen_precision_on_channels_last_fp32_weights(bf16):
    compute = Compute(CPU, bf16=bf16)
    model = SeedCNN(3)
    network = compute.prepare(model)
    inputs = compute.inputs(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))
    assert inputs.dtype == torch.float32 and 0 <= inputs.min() and inputs.max() <= 1
    with compute.autocast():
        features = network.features(inputs)
    assert features.dtype == (torch.bfloat16 if bf16 else torch.float32)
    conv = network.features[0][0].weight
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)


def test_bf16_and_fp32_trials_learn_alike():
    train, validation = synthetic_tensors(100, seed=0), synthetic_tensors(30, seed=1)
    accuracies = {}
    for bf16 in (True, False):
        torch.manual_seed(0)
        compute = Compute(CPU, bf16=bf16)
        model = SeedCNN(3, dropout=0.2)
        network = compute.prepare(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            train_epoch(network, Training(optimizer), *train, 32, compute)
        accuracies[bf16] = evaluate(network, *validation, compute)[1]
    assert min(accuracies.values()) > 0.9, accuracies  # chance is 1/3
