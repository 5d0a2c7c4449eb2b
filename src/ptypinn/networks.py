"""Generators: normalized diffraction amplitudes -> complex object patches.

The default generator is a U-Net-style encoder/decoder.  It maps ``(B, C, H, W)`` normalized
amplitudes (``data.normalized_amplitudes``) of the C members of a group to ``(B, C, H, W)``
complex patches ``A * exp(i phi)`` with ``A = amplitude_max * sigmoid(.)`` and
``phi = pi * tanh(.)``.  The encoder works on the diffraction pattern and the decoder produces real
space, so skip connections join the two domains; they are kept because they speed training up
markedly at the sizes we use (a choice shared with the reference system's U-Net variant).
Networks never do file I/O.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["UNetGenerator", "build_generator"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
    )


class UNetGenerator(nn.Module):
    """U-Net generator.

    Parameters
    ----------
    members : int
        C, the number of patterns per group (input and output channels per head).
    width : int
        Channels of the first level; level ``k`` has ``width * 2**k``.
    depth : int
        Number of down-sampling levels (H must be divisible by ``2**depth``).
    amplitude_max : float
        Upper bound of the output amplitude.
    """

    def __init__(self, members: int, width: int = 32, depth: int = 3, amplitude_max: float = 1.5):
        super().__init__()
        self.members = members
        self.depth = depth
        self.amplitude_max = float(amplitude_max)
        chans = [width * 2**k for k in range(depth + 1)]
        self.stem = _block(members, chans[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), _block(chans[k], chans[k + 1])) for k in range(depth)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[k + 1], chans[k], 2, stride=2) for k in reversed(range(depth))
        )
        self.merge = nn.ModuleList(_block(2 * chans[k], chans[k]) for k in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], 2 * members, 1)

    def forward(self, amplitudes: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float normalized amplitudes -> ``(B, C, H, W)`` complex patches."""
        if amplitudes.ndim != 4 or amplitudes.shape[1] != self.members:
            raise ValueError(
                f"amplitudes: expected shape (B, {self.members}, H, W), got {tuple(amplitudes.shape)}"
            )
        h = amplitudes.shape[-1]
        if h % 2**self.depth:
            raise ValueError(f"pattern size: expected a multiple of {2**self.depth}, got {h}")
        skips = [self.stem(amplitudes)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up, merge in zip(self.up, self.merge):
            y = merge(torch.cat([up(y), skips.pop()], dim=1))
        out = self.head(y).float()
        amp = self.amplitude_max * torch.sigmoid(out[:, : self.members])
        phase = math.pi * torch.tanh(out[:, self.members:])
        return torch.polar(amp, phase)


def build_generator(kind: str, members: int, width: int, depth: int, amplitude_max: float) -> nn.Module:
    """Factory for generators by config name (``model.generator``)."""
    if kind == "unet":
        return UNetGenerator(members, width=width, depth=depth, amplitude_max=amplitude_max)
    raise ValueError(f"model.generator: expected 'unet', got {kind!r}")
