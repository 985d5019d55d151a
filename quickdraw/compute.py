"""How a trial's arithmetic runs: the device, bf16 autocast where the hardware computes it natively, channels_last
memory, and optional torch.compile. A trial and benchmarks/trial_throughput.py use the same settings."""

from __future__ import annotations

import contextlib
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
        compiled when asked; the returned module shares its parameters with `model`."""
        model = model.to(self.device, memory_format=torch.channels_last)
        return torch.compile(model) if self.compile else model

    def autocast(self) -> contextlib.AbstractContextManager:
        """Convolutions and matrix products in bf16, the rest (loss, optimizer, weights) in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def inputs(self, drawings: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 1, 28, 28) drawings as floats in [0, 1], in the model's memory layout."""
        return drawings.to(torch.float32).div_(255.0).contiguous(memory_format=torch.channels_last)


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
