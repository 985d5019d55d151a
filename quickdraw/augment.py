"""Random small rotations, scalings, shifts and mirror images of a training batch, drawn per drawing and
computed on the batch's device in one affine resampling: the model sees a new variant of each drawing
every epoch, as a person would draw it a little differently each time."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """How far each drawing may be moved; a recipe (quickdraw.model.Recipe) holds one when it augments."""

    max_rotation_degrees: float = 10.0
    max_scale_change: float = 0.1  # sizes from 90% to 110%
    max_shift_pixels: float = 2.0
    mirror: bool = True  # left-right with probability 1/2: Quick Draw's classes are drawn facing either way

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) floats -> the same drawings, each moved by its own random transform; ink leaving the frame
        is cut."""
        n, _, height, width = batch.shape
        uniform = lambda low, high: torch.empty(n, device=batch.device).uniform_(low, high)  # noqa: E731
        angle = uniform(-self.max_rotation_degrees, self.max_rotation_degrees) * (math.pi / 180)
        inverse_scale = 1 / uniform(1 - self.max_scale_change, 1 + self.max_scale_change)
        flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0) if self.mirror else torch.ones(n, device=batch.device)
        # affine_grid maps each output pixel to where it samples the input, in coordinates from -1 to 1.
        cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
        shift_x = uniform(-self.max_shift_pixels, self.max_shift_pixels) * (2 / width)
        shift_y = uniform(-self.max_shift_pixels, self.max_shift_pixels) * (2 / height)
        theta = torch.stack([torch.stack([flip * cos, -sin, shift_x], 1),
                             torch.stack([flip * sin, cos, shift_y], 1)], 1)
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved.contiguous(memory_format=torch.channels_last)
