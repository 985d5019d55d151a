"""How a trial's arithmetic runs: the device, bf16 autocast where the hardware computes it natively, channels_last
memory, and optional torch.compile. A trial and benchmarks/trial_throughput.py use the same settings."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Compute:
    device: torch.device
    bf16: bool = False
    compile: bool = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model on the device in channels_last layout (oneDNN's and cuDNN's fast path for convolutions),
        compiled when asked; the returned module shares its parameters with `model`.

        Compiled, it compiles one graph for training and one for evaluation (a graph holds for one mode of the
        module), when its batches keep to the shapes this class sets: training on whole batches only
        (`epoch_size`), evaluation on batches whose first dimension is dynamic (`dynamic_batch`). Inductor compiles
        its kernels in as many worker processes as the trial has torch threads (its CPU share), not in one per core
        of the node in every trial; TORCHINDUCTOR_COMPILE_THREADS, when set, decides instead."""
        model = model.to(self.device, memory_format=torch.channels_last)
        if not self.compile:
            return model
        limit_compile_workers(torch.get_num_threads())
        return torch.compile(model)

    def epoch_size(self, count: int, batch_size: int) -> int:
        """How many of `count` training drawings an epoch trains on: all of them in eager mode. Compiled, whole
        batches only: the shuffled order's last, partial batch is left out (other drawings each epoch), as a
        batch of another size would compile another graph, and some of them three (a static one, a dynamic one,
        and on the CPU one more under 16 drawings, whose convolutions take another path). With no whole batch,
        all: one partial batch is one shape too."""
        if self.compile and count > batch_size:
            return count - count % batch_size
        return count

    def dynamic_batch(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs`, when compiled, with their first dimension marked dynamic: validation and test run through one
        graph whatever their sizes and their last batches', computing no padding. Torch may still tell sizes
        apart (on the CPU, batches under 16 drawings), at the cost of one more graph rather than an error.
        Untouched in eager mode."""
        if self.compile:
            torch._dynamo.maybe_mark_dynamic(inputs, 0)
        return inputs

    def autocast(self) -> contextlib.AbstractContextManager:
        """Convolutions and matrix products in bf16, the rest (loss, optimizer, weights) in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def precision(self) -> str:
        """What `auto` resolved to: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.bf16 else "fp32"

    def device_name(self) -> str:
        """The device as a person names it: "cpu", or "cuda" and the GPU's model."""
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return self.device.type

    def inputs(self, drawings: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 1, 28, 28) drawings as floats in [0, 1], in the model's memory layout."""
        return drawings.to(torch.float32).div_(255.0).contiguous(memory_format=torch.channels_last)


def limit_compile_workers(workers: int) -> None:
    """At most `workers` processes compiling Inductor's kernels for this process (torch's default is one per core,
    up to 32, in every process that compiles, so each trial on a node would start one per core)."""
    import torch._inductor.config as inductor

    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        inductor.compile_threads = max(1, workers)


def choose(device: torch.device, precision: str = "auto", compile: bool = False) -> Compute:
    """`auto` takes bf16 where the hardware has it (CUDA GPUs from Ampere on; CPUs with AVX-512 BF16 or AMX),
    since on other hardware it is emulated and slower than fp32."""
    bf16 = precision == "bf16" or (precision == "auto" and has_native_bf16(device))
    return Compute(device, bf16=bf16, compile=compile)


def has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # private helpers: a torch without them gets fp32
        return False
