"""Spectral-convolution generator (``model.generator = "spectral"``; issue 14).

A hybrid residual encoder-decoder in which every block mixes a local 3 x 3 convolution with a
*spectral convolution* (Fourier-neural-operator style: learned complex weights on the lowest
Fourier modes of the feature maps, all other modes dropped), so that each block sees the whole
patch at once.  A single diffraction pattern fixes its object patch only through a non-local
inversion (the twin image of the physics estimate spreads over the whole patch), which a U-Net
reaches only through its coarsest levels.  Measured (docs/benchmarks.md, "Generators"): on the
"lines" bench at gridsize 1, 10 epochs, 3 seeds, depth 2, it equals the U-Net within the seed
spread (amplitude SSIM 0.644 vs 0.638), so the U-Net stays the default.

Stages (``N`` the pattern size, ``C`` the group members, ``w`` the width, ``d`` the depth)::

    counts (B,C,N,N) --backprop--> O0 (B,C,N,N) complex          (the fixed physics layer)
    (Re O0, Im O0) (B,2C,N,N) --stem--> (B,w,N,N)
    encoder, level k = 1..d: stride-2 conv to (B, w 2^k, N/2^k, N/2^k) + one spectral block
    bottleneck: ``blocks`` spectral blocks at (B, w 2^d, N/2^d, N/2^d)
    decoder: transposed conv up, concatenate the encoder's skip, conv block, spectral block
    head: 1 x 1 conv to (B,2C,N,N) corrections, zero at initialisation
    residual head around O0 (:func:`residual_head`): A = a_max sigmoid(logit(|O0|/a_max) + a),
    phi = arg O0 + pi tanh(p)

A spectral block is ``x + W_mix GELU(GN(conv3x3(x) + K x))`` with ``K x = irfft2(R . rfft2(x))``,
``R`` learned on ``ky`` in ``[0, m) U [H-m, H)`` and ``kx`` in ``[0, m)`` (``m`` =
``model.spectral_modes``, clipped to the level's size).

The physics layer is passed in (it is built by :func:`ptypinn.pinn.networks.build_generator`), so
this module does not import ``networks`` (no import cycle).  Networks never do file I/O.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ptypinn import physics

__all__ = ["SpectralConv2d", "SpectralBlock", "SpectralResNetGenerator", "residual_head",
           "zero_head", "physics_input", "RATIO_CLAMP", "PROBE_FEATURES", "probe_features", "add_probe_channels"]

PROBE_FEATURES = 3
"""Input channels :func:`probe_features` adds to a probe-conditioned generator
(``model.probe_input``)."""


def probe_features(probe: torch.Tensor, batch: int) -> torch.Tensor:
    """The probe as generator input channels, ``(batch, 3, N, N)`` float32.

    Channels: ``sqrt(I) / max sqrt(I)`` with ``I = sum_k |P_k|^2`` (the total intensity's
    amplitude), then ``Re`` and ``Im`` of the strongest mode ``P_0 / max |P_0|``.  All are
    dimensionless in ``[-1, 1]``, independent of the probe's photon scale.

    Parameters
    ----------
    probe : complex ``(N, N)`` or ``(M, N, N)``; the strongest mode is the one of largest power.
    batch : int, B, the batch the channels are repeated over.
    """
    modes = physics.probe_modes(probe).to(torch.complex64)
    power = modes.abs().square().sum(dim=(-2, -1))
    strongest = modes[int(torch.argmax(power.detach()))]
    amp = modes.abs().square().sum(0).sqrt()
    amp = amp / amp.max().clamp_min(1e-30)
    p0 = strongest / strongest.abs().max().clamp_min(1e-30)
    feats = torch.stack([amp, p0.real, p0.imag]).float()
    return feats.unsqueeze(0).expand(batch, -1, -1, -1)


def add_probe_channels(conv: nn.Conv2d, extra: int) -> nn.Conv2d:
    """A copy of ``conv`` with ``extra`` more input channels whose weights are zero (so the
    output is unchanged at initialisation whatever those channels hold)."""
    new = nn.Conv2d(conv.in_channels + extra, conv.out_channels, conv.kernel_size,
                    stride=conv.stride, padding=conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :conv.in_channels] = conv.weight
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new

RATIO_CLAMP = (0.02, 0.98)
"""Clamp of ``|O0| / amplitude_max`` before the logit of the residual head (a finite start); the
head of every generator (:func:`residual_head`)."""


def physics_input(backprop: nn.Module, counts: torch.Tensor, probe: torch.Tensor | None,
                  members: int, probe_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The physics estimate and the network input of a generator, after checking the counts.

    Parameters
    ----------
    backprop : the physics layer (:class:`ptypinn.pinn.networks.BackPropagation`).
    counts : float ``(B, C, N, N)``, ``C = members``, ``N`` the probe's size.
    probe : complex ``(N, N)`` or ``(M, N, N)``, optional runtime probe (required when
        ``probe_input``).
    members : int, C.
    probe_input : bool; append :func:`probe_features` to the input channels.

    Returns
    -------
    o0 : complex ``(B, C, N, N)``, the physics estimate.
    x : float ``(B, 2C [+ 3], N, N)``: ``Re O0``, ``Im O0`` [, the probe's features].
    """
    n = backprop.kernel.shape[-1]
    if counts.ndim != 4 or counts.shape[1] != members:
        raise ValueError(
            f"counts: expected shape (B, {members}, H, W), got {tuple(counts.shape)}")
    if tuple(counts.shape[-2:]) != (n, n):
        raise ValueError(f"pattern size: expected {(n, n)} (the probe's), got "
                         f"{tuple(counts.shape[-2:])}")
    o0 = backprop(counts, probe)
    x = torch.cat([o0.real, o0.imag], dim=1)
    if probe_input:
        if probe is None:
            raise ValueError("probe: expected the runtime probe (model.probe_input), got None")
        x = torch.cat([x, probe_features(probe, x.shape[0]).to(x.device)], dim=1)
    return o0, x


def zero_head(channels: int, members: int) -> nn.Conv2d:
    """The 1x1 convolution ``channels -> 2 * members`` (amplitude and phase corrections for
    :func:`residual_head`), zero-initialised: a new generator returns the physics estimate."""
    head = nn.Conv2d(channels, 2 * members, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def residual_head(o0: torch.Tensor, out: torch.Tensor, amplitude_max: float) -> torch.Tensor:
    """Complex patches from the physics estimate and the network's corrections.

    Parameters
    ----------
    o0 : complex ``(B, C, H, W)``, the physics estimate.
    out : float ``(B, 2C, H, W)``: amplitude logits corrections (first C channels), then phase
        corrections (last C).
    amplitude_max : float, the upper bound of the amplitude.

    Returns
    -------
    complex ``(B, C, H, W)``: ``a_max sigmoid(logit(clamp(|O0|/a_max)) + a)`` with phase
    ``arg O0 + pi tanh(p)``; equal to ``O0`` (amplitude clamped) when ``out`` is 0.
    """
    c = o0.shape[1]
    ratio = (o0.abs() / amplitude_max).clamp(*RATIO_CLAMP)
    amp = amplitude_max * torch.sigmoid(torch.logit(ratio) + out[:, :c])
    phase = torch.angle(o0) + math.pi * torch.tanh(out[:, c:])
    return torch.polar(amp, phase)


class SpectralConv2d(nn.Module):
    """Spectral convolution: ``y = irfft2(R . rfft2(x))`` on the lowest Fourier modes.

    Parameters
    ----------
    c_in, c_out : int, channels.
    size_px : int, the (square) size ``H = W`` of the maps this layer will see.
    modes : int
        ``m``: kept ``ky`` in ``[0, m_y) U [H - m_y, H)`` with ``m_y = min(m, H // 2)`` and
        ``kx`` in ``[0, m_x)`` with ``m_x = min(m, W // 2 + 1)`` (``m >= H // 2 + 1`` keeps every
        mode: then the layer is a circular convolution with a learned kernel per channel pair).

    Shapes: ``(B, c_in, H, W)`` real -> ``(B, c_out, H, W)`` real.  The weights are stored as
    real tensors ``(2, c_in, c_out, m_y, m_x, 2)`` (low / high ``ky`` block, real / imaginary).
    """

    def __init__(self, c_in: int, c_out: int, size_px: int, modes: int):
        super().__init__()
        if modes < 1:
            raise ValueError(f"modes: expected >= 1, got {modes}")
        self.size_px = int(size_px)
        self.modes_y = min(modes, size_px // 2)
        self.modes_x = min(modes, size_px // 2 + 1)
        scale = 1.0 / (c_in * c_out)
        self.weight = nn.Parameter(
            scale * torch.rand(2, c_in, c_out, self.modes_y, self.modes_x, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h != self.size_px or w != self.size_px:
            raise ValueError(f"spectral conv: expected maps of {self.size_px} x {self.size_px}, "
                             f"got {h} x {w}")
        my, mx = self.modes_y, self.modes_x
        spec = torch.fft.rfft2(x.float())
        wt = torch.view_as_complex(self.weight)
        out = torch.zeros(x.shape[0], wt.shape[2], h, w // 2 + 1, dtype=spec.dtype,
                          device=x.device)
        out[..., :my, :mx] = torch.einsum("bixy,ioxy->boxy", spec[..., :my, :mx], wt[0])
        out[..., h - my:, :mx] = torch.einsum("bixy,ioxy->boxy", spec[..., h - my:, :mx], wt[1])
        return torch.fft.irfft2(out, s=(h, w)).to(x.dtype)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.GELU())


class SpectralBlock(nn.Module):
    """Residual block ``x + W_mix GELU(GN(conv3x3(x) + SpectralConv2d(x)))`` (shape-preserving,
    ``(B, c, H, W)``)."""

    def __init__(self, c: int, size_px: int, modes: int):
        super().__init__()
        self.local = nn.Conv2d(c, c, 3, padding=1)
        self.spectral = SpectralConv2d(c, c, size_px, modes)
        self.norm = nn.GroupNorm(min(8, c), c)
        self.mix = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.gelu(self.norm(self.local(x) + self.spectral(x))))


class SpectralResNetGenerator(nn.Module):
    """Residual encoder-decoder with spectral-convolution blocks (see the module docstring).

    Parameters
    ----------
    members : int
        C, the number of patterns per group.
    backprop : module
        The fixed physics layer (:class:`ptypinn.pinn.networks.BackPropagation`): counts
        ``(B, C, N, N)`` -> complex ``O0`` ``(B, C, N, N)``; it must have a ``kernel`` buffer of
        shape ``(N, N)``.
    width : int
        Channels of the first level; level ``k`` has ``width * 2**k``.
    depth : int
        Down-sampling levels (N must be divisible by ``2**depth``).
    amplitude_max : float
        Upper bound of the output amplitude.
    modes : int
        Fourier modes kept per axis by every spectral convolution (clipped to each level's size).
    blocks : int
        Spectral blocks at the bottleneck (>= 0).
    probe_input : bool
        Condition on the probe: the stem takes :data:`PROBE_FEATURES` more channels
        (:func:`probe_features` of the probe given to :meth:`forward`, which is then required),
        with zero-initialised weights.
    """

    def __init__(self, members: int, backprop: nn.Module, width: int = 32, depth: int = 3,
                 amplitude_max: float = 1.5, modes: int = 16, blocks: int = 2,
                 probe_input: bool = False):
        super().__init__()
        n = int(backprop.kernel.shape[-1])
        if n % 2**depth:
            raise ValueError(f"pattern size: expected a multiple of {2**depth} for depth "
                             f"{depth}, got {n}")
        self.members = members
        self.depth = depth
        self.amplitude_max = float(amplitude_max)
        self.backprop = backprop
        chans = [width * 2**k for k in range(depth + 1)]
        sizes = [n // 2**k for k in range(depth + 1)]
        self.stem = nn.Sequential(_conv_block(2 * members, chans[0]),
                                  SpectralBlock(chans[0], sizes[0], modes))
        self.probe_input = bool(probe_input)
        if self.probe_input:
            self.stem[0][0] = add_probe_channels(self.stem[0][0], PROBE_FEATURES)
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chans[k], chans[k + 1], 3, stride=2, padding=1),
                          nn.GroupNorm(min(8, chans[k + 1]), chans[k + 1]), nn.GELU(),
                          SpectralBlock(chans[k + 1], sizes[k + 1], modes))
            for k in range(depth))
        self.bottleneck = nn.Sequential(
            *(SpectralBlock(chans[depth], sizes[depth], modes) for _ in range(blocks)))
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(chans[k + 1], chans[k], 2, stride=2) for k in reversed(range(depth)))
        self.merge = nn.ModuleList(
            nn.Sequential(_conv_block(2 * chans[k], chans[k]),
                          SpectralBlock(chans[k], sizes[k], modes))
            for k in reversed(range(depth)))
        self.head = zero_head(chans[0], members)

    def forward(self, counts: torch.Tensor, probe: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, N, N)`` float counts -> ``(B, C, N, N)`` complex patches.

        ``probe``: complex ``(N, N)`` or ``(M, N, N)``, optional; the physics layer uses it
        (differentiably: a probe being learned) instead of the one given at construction.
        """
        o0, x = physics_input(self.backprop, counts, probe, self.members, self.probe_input)
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = self.bottleneck(skips.pop())
        for up, merge in zip(self.up, self.merge):
            y = merge(torch.cat([up(y), skips.pop()], dim=1))
        return residual_head(o0, self.head(y).float(), self.amplitude_max)
