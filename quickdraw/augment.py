"""Random small rotations, scalings, shifts and mirror images of a training batch, drawn per drawing and
computed on the batch's device in one affine resampling: the model sees a new variant of each drawing
every epoch, as a person would draw it a little differently each time."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.1  # sizes from 90% to 110%
MAX_SHIFT_PIXELS = 2.0
MIRROR = True  # Quick Draw's classes are drawn facing either way


def random_affine(batch: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) floats -> the same drawings, each moved by its own random transform; ink leaving the frame is cut."""
    n, _, height, width = batch.shape
    uniform = lambda low, high: torch.empty(n, device=batch.device).uniform_(low, high)  # noqa: E731
    angle = uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * (math.pi / 180)
    inverse_scale = 1 / uniform(1 - MAX_SCALE_CHANGE, 1 + MAX_SCALE_CHANGE)
    mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if MIRROR else torch.ones(n, device=batch.device)
    # affine_grid maps each output pixel to where it samples the input, in coordinates from -1 to 1.
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    shift_x = uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS) * (2 / width)
    shift_y = uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS) * (2 / height)
    theta = torch.stack([torch.stack([mirror * cos, -sin, shift_x], 1),
                         torch.stack([mirror * sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.contiguous(memory_format=torch.channels_last)
