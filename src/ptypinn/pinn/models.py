"""Models: the physics-informed PINN and the supervised (PtychoNN-style) baseline.

PINN forward pass (one group of C patterns, SPEC §5)::

    measured counts (B,C,H,W) --generator--> patches O_c (B,C,H,W) complex
             (the generator back-propagates each pattern with the probe's far-field phase
              and refines that real-space estimate with a U-Net; see ``networks``)
      C > 1: merge the C patches into one region at their group-relative offsets
             (shift-and-add, weights w = |P| / max|P| in numerator AND denominator),
             then re-extract each member's patch from it          (overlap constraint)
      --> I_c = exp(t) * sum_k |F(P_k O_c)|^2                      (predicted counts)
      --> Poisson NLL against the measured counts

With ``model.probe_input`` the probe is a runtime input (each batch's or scan's own probe; the
buffer is only the default).  Otherwise ``P`` is a fixed buffer, or with ``model.learn_probe`` a
trained parameter (modes kept orthogonal and the total power fixed by
:meth:`PINN.constrain_probe` after every step; the generator's physics layer is fed the current
probe; see docs/conventions.md, "Probe learning").

``t`` is the log of an optional trainable intensity correction (0 and frozen by default: the probe
is in photon units, see ``data``).  The reported loss is
:func:`ptypinn.physics.excess_nll_per_pixel`: the Poisson NLL per pixel minus that of the
saturated model (``I = n``), so a perfect fit scores about 0.5 per pixel; the offset is a
constant and does not change gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ptypinn import physics
from ptypinn.config import ModelConfig
from ptypinn.pinn.networks import BackPropagation, build_generator
from ptypinn.refinement import orthogonalize_modes

__all__ = ["merge_window", "overlap_constraint", "PINN", "SupervisedBaseline", "build_model",
           "AMPLITUDE_MAX_FLOOR", "derive_amplitude_max", "EXTRA_MODE_POWER",
           "initial_probe_modes"]

AMPLITUDE_MAX_FLOOR = 1.5
"""The amplitude cap of a scan in photon units whose object transmits at most 1 (the fixed cap
before it was derived from the data), and the floor of :func:`derive_amplitude_max`."""


def derive_amplitude_max(probe: torch.Tensor | np.ndarray, counts: np.ndarray,
                         bad_pixels: np.ndarray | None = None, sample: int = 512) -> float:
    """``model.amplitude_max`` from the data: ``max(1.5, 2 q)``.

    ``q`` is the 99.9th percentile of the physics layer's amplitude ``|O0|``
    (:class:`~ptypinn.pinn.networks.BackPropagation`) over the probe's core (``|P|^2 >= 0.5
    max``) for up to ``sample`` evenly spaced patterns; ``|O0|`` smooths the object's peaks
    (measured: q ~ 0.7 of the true peak on "lines"), hence the factor 2.  For the simulated
    "lines" scans in photon units this is the old fixed cap 1.5; a brighter object (or a scale
    that the data fix above 1) raises it, so the network's output does not saturate.

    Parameters
    ----------
    probe : complex ``(H, W)`` or ``(M, H, W)`` in photon units.
    counts : float ``(n, H, W)`` photon counts.
    bad_pixels : bool ``(H, W)``, optional; zeroed, as in the network input.
    """
    probe = torch.as_tensor(probe)
    pick = np.unique(np.linspace(0, counts.shape[0] - 1, min(sample, counts.shape[0])).astype(int))
    c = torch.from_numpy(np.asarray(counts[pick], dtype=np.float32))
    if bad_pixels is not None:
        c = c.masked_fill(torch.from_numpy(np.asarray(bad_pixels, dtype=bool)), 0.0)
    with torch.no_grad():
        o0 = BackPropagation(probe)(c[:, None])[:, 0].abs()
    i2 = physics.probe_modes(probe).abs().square().sum(0)
    core = (i2 >= 0.5 * i2.max()).expand_as(o0)
    q = float(np.quantile(o0[core].numpy(), 0.999)) if core.any() else 0.0
    return max(AMPLITUDE_MAX_FLOOR, 2.0 * q)


def merge_window(probe: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """Merge weights ``(H, W)`` from the probe: ``|P| / max |P|`` (modes summed), floored."""
    amp = physics.probe_modes(probe).abs().square().sum(0).sqrt()
    return (amp / amp.max()).clamp_min(floor)


def overlap_constraint(
    patches: torch.Tensor, offsets_px: torch.Tensor, window: torch.Tensor,
    members: int | None = None,
) -> torch.Tensor:
    """Merge the C patches of each group into one region and re-extract them.

    Parameters
    ----------
    patches : complex ``(B, C, N, N)``
    offsets_px : float ``(B, C, 2)``
        Member centre minus group centroid ``(y, x)`` in pixels.
    window : real ``(N, N)``
        Merge weights, identical in numerator and denominator.
    members : int, optional
        Re-extract only the first ``members`` members (inference needs only the seed's patch:
        the merge still uses all C); None: all.

    Returns
    -------
    complex ``(B, C', N, N)``: each member's view of the merged region (``C' = members`` or C).
    """
    n = patches.shape[-1]
    margin = int(math.ceil(float(offsets_px.detach().abs().max()))) + 1
    size = n + 2 * margin
    pos = offsets_px.to(torch.float32) + size / 2.0
    w = window.to(patches.real.dtype).expand(patches.shape)
    num = physics.place_patches(patches * w, pos, (size, size))
    den = physics.place_patches(w, pos, (size, size))
    merged = num / (den + 1e-6)
    return physics.extract_patches(merged, pos if members is None else pos[:, :members], n)


def total_variation(patches: torch.Tensor) -> torch.Tensor:
    """Mean absolute finite difference of complex patches ``(..., H, W)`` (both axes)."""
    dy = (patches[..., 1:, :] - patches[..., :-1, :]).abs().mean()
    dx = (patches[..., :, 1:] - patches[..., :, :-1]).abs().mean()
    return dy + dx


EXTRA_MODE_POWER = 0.05
"""Power fraction of each probe mode that :func:`initial_probe_modes` adds to a scan's probe."""


def initial_probe_modes(probe: torch.Tensor, modes: int | None = None) -> torch.Tensor:
    """The start of a learned probe: ``modes`` orthogonal modes with the power of ``probe``.

    Parameters
    ----------
    probe : complex ``(N, N)`` or ``(M, N, N)`` in photon units.
    modes : int, optional
        K, the number of modes to learn; None keeps M.  ``K < M`` keeps the K strongest
        orthogonal modes; ``K > M`` adds ``K - M`` modes, each the strongest mode times a
        low-order polynomial of the position (``y``, ``x``, ``xy``, ``x^2 - y^2``, ...), with
        :data:`EXTRA_MODE_POWER` of the power each.

    Returns
    -------
    complex64 ``(K, N, N)``: mutually orthogonal (:func:`ptypinn.refinement.orthogonalize_modes`),
    strongest first, total power ``sum |P|^2`` equal to the input's.
    """
    given = orthogonalize_modes(physics.probe_modes(torch.as_tensor(probe)).to(torch.complex64))
    total = given.abs().square().sum()
    m = given.shape[0]
    k = m if modes is None else int(modes)
    if k < 1:
        raise ValueError(f"modes: expected >= 1, got {k}")
    if k <= m:
        out = given[:k]
    else:
        n = given.shape[-1]
        ar = (torch.arange(n, dtype=torch.float32) - n // 2) / (n / 4)
        y, x = ar[:, None].expand(n, n), ar[None, :].expand(n, n)
        shapes = [y, x, x * y, x * x - y * y, x * x + y * y - 1, y * y * x, x * x * y]
        extra = []
        for j in range(k - m):
            e = given[0] * shapes[j % len(shapes)]
            extra.append(e * torch.sqrt(EXTRA_MODE_POWER * total / e.abs().square().sum()))
        out = orthogonalize_modes(torch.cat([given, torch.stack(extra)]))
    out = out * torch.sqrt(total / out.abs().square().sum())
    return out.contiguous()


class _PatchModel(nn.Module):
    """What every model carries: the generator, its config and the probe (photon units): a
    buffer, or a trained parameter when ``cfg.learn_probe``."""

    def __init__(self, generator: nn.Module, probe: torch.Tensor, cfg: ModelConfig):
        super().__init__()
        self.generator = generator
        self.cfg = cfg
        if cfg.learn_probe:
            self.probe = nn.Parameter(initial_probe_modes(probe, cfg.probe_modes))
        else:
            self.register_buffer("probe", physics.probe_modes(probe).to(torch.complex64).clone())

    @property
    def learns_probe(self) -> bool:
        """Whether the probe is a trained parameter (``model.learn_probe``)."""
        return isinstance(self.probe, nn.Parameter)


class PINN(_PatchModel):
    """Physics-informed model: generator + overlap constraint + far-field Poisson likelihood.

    Parameters
    ----------
    generator : module mapping ``(B, C, H, W)`` counts to ``(B, C, H, W)`` complex patches.
    probe : complex ``(H, W)`` or ``(M, H, W)`` in photon units.
    cfg : ModelConfig
    """

    def __init__(self, generator: nn.Module, probe: torch.Tensor, cfg: ModelConfig):
        super().__init__(generator, probe, cfg)
        self.register_buffer("window", merge_window(self.probe.detach()), persistent=False)
        # the total power a learned probe is held at (photons per pattern in free space)
        self.register_buffer("probe_power", self.probe.detach().abs().square().sum().double(),
                             persistent=False)
        self.log_intensity_scale = nn.Parameter(
            torch.zeros(()), requires_grad=cfg.trainable_intensity_scale
        )

    @property
    def probe_input(self) -> bool:
        """Whether the probe is a runtime input (``model.probe_input``)."""
        return self.cfg.probe_input

    def forward(self, counts: torch.Tensor, offsets_px: torch.Tensor,
                probe: torch.Tensor | None = None, seed_only: bool = False) -> torch.Tensor:
        """Object patches ``(B, C, H, W)`` complex from counts ``(B, C, H, W)``, after the overlap
        constraint when C > 1 (``seed_only``: only the first member's, ``(B, 1, H, W)``, what
        inference stitches; the constraint still merges all C).  A learned probe feeds the generator's physics layer at every
        call (so the layer always matches it, in training and after loading).

        ``probe``: complex ``(N, N)`` or ``(M, N, N)`` in photon units, the probe of these
        patterns (``model.probe_input`` only; None: the bundle's probe).  It feeds the physics
        layer, the generator's probe channels and the merge window.
        """
        if probe is not None and not self.probe_input:
            raise ValueError("probe: a runtime probe needs model.probe_input=true (this model's "
                             "probe is fixed)")
        if self.probe_input:
            probe = self.probe if probe is None else probe.to(self.probe.device)
            patches = self.generator(counts, probe=probe)
            window = merge_window(probe) if probe is not self.probe else self.window
        elif self.learns_probe:
            patches = self.generator(counts, probe=self.probe)
            window = merge_window(self.probe.detach())
        else:
            patches = self.generator(counts)
            window = self.window
        if patches.shape[1] > 1:
            patches = overlap_constraint(patches, offsets_px, window, 1 if seed_only else None)
        return patches

    @torch.no_grad()
    def constrain_probe(self) -> None:
        """Project a learned probe back onto its constraints (after an optimizer step):
        orthogonal modes, strongest first (:func:`ptypinn.refinement.orthogonalize_modes`), and
        the total power it started with.  A no-op for a fixed probe."""
        if not self.learns_probe:
            return
        p = orthogonalize_modes(self.probe.detach())
        power = p.abs().square().sum().double()
        if torch.isfinite(power) and float(power) > 0:
            p = p * torch.sqrt(self.probe_power / power).to(p.real.dtype)
        self.probe.copy_(p)

    def predicted_counts(self, patches: torch.Tensor, probe: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Expected counts ``(B, C, H, W)`` of object patches under ``probe`` (complex ``(N, N)``
        or ``(M, N, N)``, photon units; None: this model's probe)."""
        probe = self.probe if probe is None else probe
        return physics.predicted_intensity(probe, patches) * self.log_intensity_scale.exp()

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Poisson NLL per pixel (minus the saturated model's) averaged over patterns, + TV.

        ``batch``: ``counts`` ``(B, C, H, W)`` (bad pixels already zeroed), ``offsets_px``, and
        optionally ``bad_pixels`` bool ``(B, H, W)`` (one scan's mask, the same in every item):
        those pixels are left out of the likelihood; and with ``model.probe_input`` optionally
        ``probe`` complex ``(B, M, N, N)`` (one scan's probe in photon units, the same in every
        item: a batch holds one scan) for the generator and the predicted counts.
        """
        counts = batch["counts"]
        bad = batch.get("bad_pixels")
        if bad is not None:
            bad = bad.reshape(-1, *bad.shape[-2:])[0]
            counts = counts.masked_fill(bad, 0.0)
        probe = batch.get("probe")
        if probe is not None:
            probe = probe.reshape(-1, *probe.shape[-3:])[0]
        patches = self(counts, batch["offsets_px"], probe)
        pred = self.predicted_counts(patches, probe)
        data_term = physics.excess_nll_per_pixel(pred, counts, self.cfg.poisson_eps,
                                                 bad).mean().float()
        logs = {"nll": data_term.detach()}
        loss = data_term
        if self.cfg.tv_weight > 0:
            tv = total_variation(patches)
            loss = loss + self.cfg.tv_weight * tv
            logs["tv"] = tv.detach()
        return loss, logs


class SupervisedBaseline(_PatchModel):
    """PtychoNN-style baseline: the same generator trained with L1 on true amplitude and phase.

    The generator is the PINN's, including its fixed probe-dependent back-propagation input
    layer, so the comparison isolates the loss (physics versus supervised), not the architecture.
    """

    def forward(self, counts: torch.Tensor, offsets_px: torch.Tensor,
                seed_only: bool = False) -> torch.Tensor:
        patches = self.generator(counts)
        return patches[:, :1] if seed_only else patches

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "truth" not in batch:
            raise ValueError("model.kind='baseline': expected ground-truth patches, got none")
        pred = self(batch["counts"], batch["offsets_px"])
        truth = batch["truth"]
        # weight the loss where the probe illuminates: outside it the data say nothing
        w = merge_window(self.probe).to(pred.real.dtype)
        l_amp = (w * (pred.abs() - truth.abs()).abs()).mean()
        dphi = torch.angle(pred * truth.conj())
        l_phase = (w * dphi.abs()).mean()
        loss = l_amp + l_phase
        return loss, {"l1_amplitude": l_amp.detach(), "l1_phase": l_phase.detach()}


def build_model(cfg: ModelConfig, probe: torch.Tensor, group_size: int) -> nn.Module:
    """Build the model named by ``cfg.kind`` with a fresh generator.

    Parameters
    ----------
    cfg : ModelConfig
        ``amplitude_max`` None means :data:`AMPLITUDE_MAX_FLOOR` here; :func:`train_model
        <ptypinn.pinn.train.train_model>` resolves it from the data first.
    probe : complex ``(H, W)`` or ``(M, H, W)`` in photon units.
    group_size : int; C = ``grouping.gridsize ** 2``.
    """
    probe = torch.as_tensor(probe)
    amplitude_max = AMPLITUDE_MAX_FLOOR if cfg.amplitude_max is None else cfg.amplitude_max
    gen = build_generator(cfg.generator, group_size, cfg.width, cfg.depth, amplitude_max, probe,
                          spectral_modes=cfg.spectral_modes, spectral_blocks=cfg.spectral_blocks,
                          probe_input=cfg.probe_input)
    cls = PINN if cfg.kind == "pinn" else SupervisedBaseline
    return cls(gen, probe, cfg)
