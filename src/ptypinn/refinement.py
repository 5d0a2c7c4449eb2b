r"""Poisson maximum-likelihood refinement on the project's forward model (SPEC §5 "Refinement").

:func:`refine` minimizes the Poisson negative log-likelihood of the measured counts,
``L = sum_patterns sum_pixels (I - n log(I + eps))`` over the valid detector pixels
(``scan.bad_pixels`` excluded), with ``I`` the measurement model :func:`ptypinn.physics.scan_intensity` (exact sub-pixel positions:
the integer window under the Fourier-shifted probe, as in pty-chi), over

* the object ``O`` (always), starting from a given object -- e.g. a PINN's stitched object with
  its uncovered pixels set to 1 -- or from a flat object (ones), where it is a complete iterative
  solver;
* optionally the probe modes ``P_k`` (``refine.refine_probe``), kept orthogonal after every
  update (:func:`orthogonalize_modes`, an SVD of the flattened modes; it changes neither the
  total power nor any predicted intensity);
* optionally one offset per position (``refine.refine_positions``), each coordinate clamped to
  ``refine.max_position_shift_px`` and to the object frame.

It is minibatched and streaming: object and probe live on the chosen device, the counts stay on
the CPU and each minibatch (``refine.batch_size`` patterns, a seeded random order per epoch) is
moved there, so memory is O(canvas + batch).

Data-parallel: called in every rank of an initialized ``torch.distributed`` process group (e.g.
under ``torchrun`` with Lightning Fabric, as inference; :mod:`ptypinn.parallel`), each rank owns
a contiguous shard of the patterns and reads only their counts.  Every rank draws the same
minibatch order; for each minibatch it computes the gradients and curvature bounds of its own
members, and one all-reduce sums them, so every rank takes the step a single process takes on
the whole minibatch (same result to float rounding, independent of the number of ranks).  The
NLL checks sum each rank's patterns the same way; the positions of every rank's patterns are
gathered into the returned state.  Every ``refine.check_every_epochs`` epochs the
excess data NLL per pixel (:func:`ptypinn.physics.excess_nll_per_pixel`, mean over patterns; 0.5
is the noise floor at high counts) is computed and logged; the run stops when it improved by no
more than ``refine.convergence_rel_tol`` of the previous value, got worse, stopped being finite,
or ``refine.epochs`` is reached, and the lowest-NLL state is returned.  ``wall_time_s`` counts
the updates only; the checks are ``nll_check_time_s`` (as for the pty-chi arm).

Update rules (``refine.optimizer``)
-----------------------------------
Gradients are exact (autograd of :func:`refinement_loss`); torch's gradient of a real loss with
respect to a complex tensor ``z`` is ``dL/dRe z + i dL/dIm z``.

``normalized`` (default): the gradient divided by a diagonal bound of the curvature.  Near the
optimum the NLL of one detector pixel, as a function of the far-field amplitude, has curvature 4
(``L(r) = r^2 - n log r^2``, ``L'' = 2 + 2n/r^2 = 4`` at ``r^2 = n``), so by Parseval a unit
change of ``O`` at one pixel costs at most ``4 sum_k |P_k|^2`` summed over the batch's windows::

    O <- O - step * g_O / (4 (S_P + a max S_P)),    S_P = A^T sum_k |P_k|^2  (batch windows)
    P <- P - step * g_P / (4 (S_O + a max S_O)),    S_O = sum_b |A_b O|^2
    r <- r - 2 g_r / (4 sum_k sum |P_k d(A_r O)/dr|^2 + a mean)   (each coordinate, <= 0.5 px)

with ``a = 0.1`` (the rPIE-like floor for weakly lit pixels) and ``d(A_r O)/dr`` the difference
of the patches at ``r +- 0.5 px``.  ``step = 1`` is a Newton step of the amplitude, what ePIE
does with ``alpha = 1``.  In the first ``NEWTON_WARMUP_EPOCHS`` (2) epochs, ``dL/dI = 1 - n/I``
is scaled in the backward pass by ``2I/(I + n)`` per detector pixel (:func:`refinement_loss`'s
``newton_weights``): the per-pixel Newton step of the amplitude, ``-r (I - n)/(I + n)``, which
stays bounded where the model is much darker than the data, as a flat start is.  After that the
plain Poisson gradient is used: the weighted gradient's fixed point is not the maximum of the
likelihood (on the demo test scan at 1e4 photons it stalled at 0.122 NLL/px from a flat start,
where pty-chi's LSQML reaches 0.089 and the plain gradient 0.086).  A check that is worse than the
best, or improves by less than ``convergence_rel_tol``, restores the best state and halves the
step (``step_halvings`` times) before the run stops: minibatch updates at a fixed step stall at
a noise level set by the step.  Positions take the same gradient with the normalized step
under either rule (their step is 2, the bound being about twice the expected curvature).

``adam``: :class:`torch.optim.Adam` on object and probe, learning rate ``step`` times the
initial largest amplitude of each.

L-BFGS polish (``refine.lbfgs_iterations``; automatic: 200 with position correction, else 0)
--------------------------------------------------------------------------------------------
After the minibatch phase stops, :class:`torch.optim.LBFGS` (strong-Wolfe line search, 20
correction pairs) runs on the same unknowns over the whole scan, from the best state, in
coordinates scaled by the square roots of the curvature bounds above (taken over all patterns),
checked every 10 iterations with ``convergence_rel_tol``.  Each function evaluation is one pass
over all patterns (counted in ``epochs``).  Why: position correction's slow modes -- a global
scale/shear of the positions that the object follows, and border positions lit by few
neighbours -- are low-curvature directions that minibatch steps with a diagonal bound crawl
along (heavy-ball momentum, a full 2x2 position step, more position steps per epoch and a grid
search were tried and did not help; ``docs/benchmarks.md``), while a quasi-Newton method builds
their curvature from a few gradients.  Measured on ``bench/positions.py``'s seed 0 (1e6
photons, 1-2 px errors, flat start, one CPU thread): after the minibatch phase (115 epochs,
32 s) rms error 0.359 px, data NLL 0.2561/px; after 50 / 100 L-BFGS iterations 0.172 / 0.150
px, NLL 0.2440 / 0.2430 (12 / 23 s more).  Its memory is about 40 copies of the unknowns (for
an object of 4000^2 pixels: 5 GB), so it is off unless positions are refined or asked for.

Measurement (``PYTHONPATH=src python bench/refine_choice.py --size 64 --epochs 40``, and
``--size 32``; 2026-12-02, one CPU thread on a core shared with other jobs, so the seconds are
noisy and not compared; 'lines' test scan of ``simulate_train_test``, 256 patterns, 1e6 photons
per pattern, flat start, batch 32, default checks every 5 epochs with step halving, at most 40
epochs; excess data NLL per pixel of the state held after 5/10/20/40 epochs)::

    64x64 patterns (truth 0.242)          @5      @10     @20     @40
    normalized 1,  warm-up 2 (default)   0.446   0.336   0.279   0.259
    normalized 0.5, warm-up 2            1.008   0.443   0.285   0.248
    normalized 2,  warm-up 2            50.3     4.84    0.454   0.282
    normalized 1,  plain gradient        0.633   0.326   0.271   0.241
    normalized 1,  weighted throughout   0.466   0.333   0.300   0.292
    adam 0.01                          298.9    60.2     2.30    0.321
    adam 0.03                           10.4     0.834   0.272   0.236

    32x32 patterns (truth 0.295)          @5      @10     @20     @40
    normalized 1,  warm-up 2 (default)   1.544   0.732   0.489   0.400
    normalized 0.5, warm-up 2            4.23    1.58    0.731   0.475
    normalized 2,  warm-up 2           145.2   120.0     0.895   0.451
    normalized 1,  plain gradient        1.870   0.811   0.597   0.437
    normalized 1,  weighted throughout   1.548   0.749   0.506   0.411
    adam 0.01                         1480     313       7.89    0.567
    adam 0.03                           38.96    2.82    0.547   0.308

Every rule costs the same per epoch, so NLL per epoch is NLL per second.  Default: ``normalized``
with ``step = 1`` and the 2-epoch warm-up: lowest NLL after 5 epochs on both scans (what a
refinement from a PINN start needs first), and needs no per-scan tuning.  The plain gradient ends
lower on the 64x64 scan and higher on the 32x32 one.  Adam at 0.03 ends lowest on both after 40
epochs but is 20-25x worse after 5, and its learning rate needs tuning per scan (0.01 is far
behind); it stays available as ``refine.optimizer=adam``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any


import numpy as np
import torch
from tqdm.auto import tqdm

from ptypinn.config import RefineConfig, require
from ptypinn.data import ScanData, torch_counts
from ptypinn.metrics import convergence_stop
from ptypinn.parallel import all_reduce_sum, process_group, shard_bounds
from ptypinn.physics import (excess_nll_per_pixel, extract_patches, place_patches,
                             poisson_nll, probe_modes, scan_intensity)

__all__ = ["RefineResult", "refinement_loss", "loss_and_gradients", "orthogonalize_modes",
           "refine"]

log = logging.getLogger(__name__)

POISSON_EPS = 1e-6
"""``eps`` inside the log of the likelihood (as ``model.poisson_eps``' default)."""
NEWTON_WARMUP_EPOCHS = 2
"""Epochs at the start of a ``normalized`` run that use the Newton weights (see the module
docstring); the later epochs use the plain Poisson gradient, whose fixed point is the maximum
likelihood (the weighted one's is not)."""
_FLOOR = 0.1
"""Relative floor ``a`` of the curvature bounds (rPIE-like), see the module docstring."""
_POSITION_STEP = 2.0
"""Step of the position updates in units of the curvature bound (which is about twice the
expected curvature: measured, rms error 1.14 -> 0.15 px in 30 epochs instead of 0.26 px with 1)."""
_MAX_POSITION_STEP_PX = 0.5
"""Largest change of one position coordinate in one update (px)."""


@dataclass(frozen=True)
class RefineResult:
    """Outcome of :func:`refine`, in the scan's object frame.

    Attributes
    ----------
    object : complex64 ``(Hy, Wx)``
        Refined object (the lowest-NLL check's state).
    probe : complex64, shape of the initial probe (``(H, W)`` or ``(M, H, W)``)
        Probe of that state in photon units (the initial probe when it was not refined).
    positions_px : float64 ``(n, 2)``
        Window centres ``(y, x)`` of that state (the scan's when positions were not refined).
    nll_history : list of (int, float, float)
        ``(epochs_done, wall_time_s, nll_per_pixel)`` per check, the first at epoch 0 (the
        start): epochs run, cumulative update seconds, excess data NLL per pixel (mean over
        patterns; NaN when not finite).
    epochs : int
        Epochs run.
    wall_time_s : float
        Update seconds (excluding the NLL checks).
    stop_reason : str
        ``"tolerance"``, ``"worse"``, ``"diverged"``, ``"cap"`` (``epochs`` reached) or ``"off"``
        (``epochs == 0``).
    nll_check_time_s : float
        Seconds spent in the NLL checks.
    lbfgs_iterations : int
        L-BFGS iterations run after the minibatch phase (``refine.lbfgs_iterations``); their
        function evaluations are counted in ``epochs`` (one pass over all patterns each), and
        ``stop_reason`` is the minibatch phase's.
    """

    object: np.ndarray
    probe: np.ndarray
    positions_px: np.ndarray
    nll_history: list[tuple[int, float, float]] = field(default_factory=list)
    epochs: int = 0
    wall_time_s: float = 0.0
    stop_reason: str = "off"
    nll_check_time_s: float = 0.0
    lbfgs_iterations: int = 0

    @property
    def nll_per_pixel(self) -> float:
        """Excess data NLL per pixel of the returned state (lowest finite check)."""
        finite = [h[2] for h in self.nll_history if math.isfinite(h[2])]
        return min(finite) if finite else math.nan


# ------------------------------------------------------------------------------------------------
# the loss and its gradients


def refinement_loss(obj: torch.Tensor, probe: torch.Tensor, positions_px: torch.Tensor,
                    counts: torch.Tensor, bad_pixels: torch.Tensor | None = None,
                    eps: float = POISSON_EPS, newton_weights: bool = False) -> torch.Tensor:
    """Poisson NLL of a batch of patterns, summed: the objective of :func:`refine`.

    Parameters
    ----------
    obj : complex ``(Hy, Wx)``
        Object in the scan's frame.
    probe : complex ``(H, W)`` or ``(M, H, W)``
        Probe (modes) in photon units.
    positions_px : float ``(B, 2)``
        Window centres ``(y, x)`` (px); differentiable (bilinear interpolation).
    counts : real ``(B, H, W)``
        Measured counts.
    bad_pixels : bool ``(H, W)``, optional
        Excluded detector pixels (True = bad).
    eps : float
        Regulariser inside the log.
    newton_weights : bool
        Leave the value unchanged but scale ``dL/dI`` by ``2 I / (I + n)`` in the backward pass
        (see the module docstring: the ``normalized`` rule's per-pixel Newton scaling, which
        bounds ``(1 - n/I)`` where the model is much darker than the data).

    Returns
    -------
    float64 scalar
        ``sum_b poisson_nll(I_b, n_b)`` (``log n!`` omitted).
    """
    intensity = scan_intensity(obj, probe, positions_px, counts.shape[-1])
    if newton_weights and intensity.requires_grad:
        weight = (2 * intensity / (intensity + counts + eps)).detach()
        intensity.register_hook(lambda grad: grad * weight)
    return poisson_nll(intensity, counts, eps, bad_pixels).sum()


def loss_and_gradients(obj: torch.Tensor, probe: torch.Tensor, positions_px: torch.Tensor,
                       counts: np.ndarray | torch.Tensor, bad_pixels: torch.Tensor | None = None,
                       batch_size: int = 64, eps: float = POISSON_EPS
                       ) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients over all patterns, accumulated chunk by chunk (O(canvas + batch)).

    Parameters
    ----------
    obj, probe : complex tensors on the compute device (see :func:`refinement_loss`).
    positions_px : float ``(n, 2)`` on the compute device.
    counts : ``(n, H, W)`` on the CPU (numpy or torch); chunks are moved to ``obj.device``.
    bad_pixels : bool ``(H, W)`` on the compute device, optional.
    batch_size : int
        Patterns per chunk.

    Returns
    -------
    (loss, g_obj, g_probe, g_positions)
        Loss (float) and its gradients ``dL/dRe + i dL/dIm`` for object and probe, ``dL/dr``
        ``(n, 2)`` for the positions.
    """
    counts = torch.as_tensor(counts)
    o = obj.detach().requires_grad_(True)
    p = probe.detach().requires_grad_(True)
    g_pos = torch.zeros_like(positions_px)
    total = 0.0
    for s in range(0, counts.shape[0], batch_size):
        r = positions_px[s:s + batch_size].detach().requires_grad_(True)
        loss = refinement_loss(o, p, r, counts[s:s + batch_size].to(obj.device), bad_pixels, eps)
        loss.backward()
        total += float(loss.detach())
        g_pos[s:s + batch_size] = r.grad
    return total, o.grad, p.grad, g_pos


def orthogonalize_modes(probe: torch.Tensor) -> torch.Tensor:
    """Orthogonal probe modes spanning the same incoherent sum, strongest first.

    An SVD of the flattened modes ``(M, H*W) = U S V^H`` gives the modes ``S V^H``: a unitary
    mix of the old ones, so ``sum_k |F(P_k O)|^2`` and the total power ``sum |P|^2`` are
    unchanged.

    Parameters
    ----------
    probe : complex ``(M, H, W)``

    Returns
    -------
    complex ``(M, H, W)``, mutually orthogonal, sorted by decreasing power.
    """
    m = probe.shape[0]
    if m == 1:
        return probe
    flat = probe.reshape(m, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return (s[:, None].to(vh.dtype) * vh).reshape(probe.shape)


# ------------------------------------------------------------------------------------------------
# the solver


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require(not name.startswith("cuda") or torch.cuda.is_available(), "refine.device",
            "'cpu' or 'auto' (CUDA is not available here)", name)
    return torch.device(name)


class _State:
    """Object, probe modes and position offsets on the device, and one update rule."""

    def __init__(self, scan: ScanData, cfg: RefineConfig, obj: np.ndarray, probe: np.ndarray,
                 device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.n = scan.pattern_size
        self.shape = scan.object_shape_px
        self.obj = torch.from_numpy(np.array(obj, dtype=np.complex64)).to(device)
        self.probe_shape = np.shape(probe)
        self.probe = probe_modes(torch.from_numpy(np.array(probe, dtype=np.complex64))).to(device)
        self.base = torch.from_numpy(scan.positions_px.astype(np.float64)).to(device)
        self.offsets = torch.zeros_like(self.base)
        self.bad = (torch.from_numpy(scan.bad_pixels).to(device)
                    if scan.bad_pixels is not None else None)
        # corrected windows stay inside the frame: start >= 0, start + N <= shape (a fractional
        # start below shape - N still has its bilinear neighbour pixel inside)
        half = self.n / 2
        self.lo = torch.tensor([half, half], dtype=torch.float64, device=device)
        self.hi = torch.tensor([self.shape[0] - half, self.shape[1] - half],
                               dtype=torch.float64, device=device)
        self.n_patterns = scan.n_patterns
        self.rank, self.world = process_group()
        bounds = shard_bounds(scan.n_patterns, self.world)
        self.rows_lo, self.rows_hi = int(bounds[self.rank]), int(bounds[self.rank + 1])
        self.step_scale = 1.0
        self.adam = None
        if cfg.optimizer == "adam":
            self.obj.requires_grad_(True)
            groups = [{"params": [self.obj],
                       "lr": cfg.step * max(float(self.obj.detach().abs().max()), 1e-12)}]
            if cfg.refine_probe:
                self.probe.requires_grad_(True)
                groups.append({"params": [self.probe],
                               "lr": cfg.step * float(self.probe.detach().abs().max())})
            self.adam = torch.optim.Adam(groups)

    def positions(self) -> torch.Tensor:
        return self.base + self.offsets

    def restore(self, saved: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Go back to a :meth:`snapshot` (the optimizer state of ``adam`` is kept)."""
        obj, probe, positions = saved
        with torch.no_grad():
            self.obj.copy_(torch.from_numpy(obj).to(self.device))
            self.probe.copy_(probe_modes(torch.from_numpy(probe)).to(self.device))
            self.offsets.copy_(torch.from_numpy(positions).to(self.device) - self.base)

    def scale_step(self, factor: float) -> None:
        """Multiply the step of every update by ``factor``."""
        self.step_scale *= factor
        if self.adam is not None:
            for group in self.adam.param_groups:
                group["lr"] *= factor

    def owned(self, rows: torch.Tensor) -> torch.Tensor:
        """The members of ``rows`` that this rank owns (all of them outside a process group)."""
        if self.world == 1:
            return rows
        return rows[(rows >= self.rows_lo) & (rows < self.rows_hi)]

    def update(self, rows: torch.Tensor, counts: torch.Tensor, newton: bool = False) -> None:
        """One minibatch update from the patterns ``rows`` with measured ``counts`` (``newton``:
        scale the intensity gradient by the Newton weights, ``normalized`` rule only).

        Data-parallel: ``rows`` are this rank's members of the minibatch (possibly none); the
        gradients and curvature bounds, sums over patterns, are summed over the ranks, so every
        rank takes the step that one process would take on the whole minibatch."""
        cfg = self.cfg
        o = self.obj if self.adam is not None else self.obj.detach().requires_grad_(True)
        p = (self.probe if self.adam is not None else
             self.probe.detach().requires_grad_(cfg.refine_probe))
        r = self.positions()[rows].detach().requires_grad_(cfg.refine_positions)
        if self.adam is not None:
            self.adam.zero_grad(set_to_none=True)
        if rows.numel():
            loss = refinement_loss(o, p, r, counts, self.bad,
                                   newton_weights=self.adam is None and newton)
            loss.backward()
        with torch.no_grad():
            if o.grad is None:
                o.grad = torch.zeros_like(o)
            if cfg.refine_probe and p.grad is None:
                p.grad = torch.zeros_like(p)
            g_pos = r.grad if r.grad is not None else torch.zeros_like(r)
            sums = [o.grad] + ([p.grad] if cfg.refine_probe else [])
            bounds = self._curvature_bounds(r.detach()) if self.adam is None else []
            h = self._position_curvature(r.detach()) if cfg.refine_positions else None
            h_total = (torch.stack([h.sum(), torch.tensor(float(h.numel()), dtype=h.dtype,
                                                          device=h.device)])
                       if h is not None else None)
            all_reduce_sum(*sums, *bounds, *([h_total] if h_total is not None else []))
            if h is not None:
                self._step_positions(rows, r.detach(), g_pos, h, h_total[0] / h_total[1])
            if self.adam is not None:
                self.adam.step()
            else:
                self._step_normalized(o.grad, p.grad if cfg.refine_probe else None, *bounds)
            if cfg.refine_probe:
                self.probe.copy_(orthogonalize_modes(self.probe))

    def _curvature_bounds(self, r: torch.Tensor) -> list[torch.Tensor]:
        """This rank's terms of the ``normalized`` rule's bounds (sums over the batch):
        ``[S_P]`` and, when the probe is refined, ``S_O`` (module docstring)."""
        b = r.shape[0]
        illum = torch.zeros(self.shape, dtype=self.probe.real.dtype, device=self.device)
        out = [illum]
        if self.cfg.refine_probe:
            out.append(torch.zeros((self.n, self.n), dtype=illum.dtype, device=self.device))
        if b == 0:
            return out
        power = (self.probe.real.square() + self.probe.imag.square()).sum(0)  # (H, W)
        illum += place_patches(power.expand(1, b, self.n, self.n), r[None], self.shape)[0]
        if self.cfg.refine_probe:
            patches = extract_patches(self.obj.detach()[None], r[None], self.n)[0]
            out[1] += (patches.real.square() + patches.imag.square()).sum(0)
        return out

    def _step_normalized(self, g_obj: torch.Tensor, g_probe: torch.Tensor | None,
                         illum: torch.Tensor, s_o: torch.Tensor | None = None) -> None:
        step = self.cfg.step * self.step_scale
        if g_probe is not None and s_o is not None:
            self.probe -= step * g_probe / (4 * (s_o + _FLOOR * s_o.max()))
        self.obj -= step * g_obj / (4 * (illum + _FLOOR * illum.max()))

    def _position_curvature(self, r: torch.Tensor) -> torch.Tensor:
        """Gauss-Newton curvature ``(B, 2)`` float64 of each position coordinate."""
        if r.shape[0] == 0:
            return torch.zeros((0, 2), dtype=torch.float64, device=self.device)
        power = (self.probe.real.square() + self.probe.imag.square()).sum(0)
        curv = []
        for axis in (0, 1):
            e = torch.zeros(2, dtype=r.dtype, device=r.device)
            e[axis] = 0.5
            d = (extract_patches(self.obj.detach()[None], (r + e)[None], self.n)[0]
                 - extract_patches(self.obj.detach()[None], (r - e)[None], self.n)[0])
            curv.append(4 * ((d.real.square() + d.imag.square()) * power).sum(dim=(-2, -1)))
        return torch.stack(curv, dim=-1).to(torch.float64)

    def _step_positions(self, rows: torch.Tensor, r: torch.Tensor, g: torch.Tensor,
                        h: torch.Tensor, h_mean: torch.Tensor) -> None:
        """Gauss-Newton step of each position coordinate, clamped (see the module docstring);
        ``h_mean``: the mean curvature over the whole minibatch (all ranks)."""
        if rows.numel() == 0:
            return
        h = h + _FLOOR * h_mean + 1e-30
        delta = (-_POSITION_STEP * self.step_scale * g / h).clamp(-_MAX_POSITION_STEP_PX,
                                                                   _MAX_POSITION_STEP_PX)
        lim = self.cfg.max_position_shift_px
        off = (self.offsets[rows] + delta).clamp(-lim, lim)
        # the corrected window must stay inside the frame
        off = torch.maximum(torch.minimum(self.base[rows] + off, self.hi), self.lo) \
            - self.base[rows]
        self.offsets[rows] = off

    # -- the full-batch L-BFGS phase (module docstring, "L-BFGS polish")

    def full_gradients(self, counts: Any, batch_size: int
                       ) -> tuple[float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Loss and gradients over all patterns at the current state, each rank summing its own
        rows and the sums added over the ranks: ``(loss, g_obj, g_probe, g_offsets)`` (probe and
        offsets None when not refined; ``g_offsets (n, 2)``)."""
        cfg = self.cfg
        o = self.obj.detach().requires_grad_(True)
        p = self.probe.detach().requires_grad_(cfg.refine_probe)
        g_r = torch.zeros_like(self.offsets)
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        pos = self.positions()
        for s in range(self.rows_lo, self.rows_hi, batch_size):
            e = min(s + batch_size, self.rows_hi)
            r = pos[s:e].detach().requires_grad_(cfg.refine_positions)
            part = refinement_loss(o, p, r, counts[s:e].to(self.device), self.bad)
            part.backward()
            loss += part.detach().double()
            if cfg.refine_positions:
                g_r[s:e] = r.grad
        g_o = o.grad if o.grad is not None else torch.zeros_like(o)
        g_p = (p.grad if p.grad is not None else torch.zeros_like(p)) if cfg.refine_probe else None
        all_reduce_sum(loss, g_o, *([g_p] if g_p is not None else []),
                       *([g_r] if cfg.refine_positions else []))
        return float(loss), g_o, g_p, (g_r if cfg.refine_positions else None)

    def preconditioners(self, batch_size: int) -> list[torch.Tensor]:
        """Square roots of the curvature bounds over all patterns (all ranks), one per refined
        unknown: object ``(Hy, Wx)``, probe ``(H, W)`` when refined, offsets ``(n, 2)`` when
        refined (the ``normalized`` rule's bounds with the whole scan as the batch)."""
        illum = torch.zeros(self.shape, dtype=self.probe.real.dtype, device=self.device)
        s_o = torch.zeros((self.n, self.n), dtype=illum.dtype, device=self.device)
        h = torch.zeros_like(self.offsets)
        pos = self.positions()
        for s in range(self.rows_lo, self.rows_hi, batch_size):
            e = min(s + batch_size, self.rows_hi)
            with torch.no_grad():
                illum_part, *s_o_part = self._curvature_bounds(pos[s:e])
                illum += illum_part
                if self.cfg.refine_probe:
                    s_o += s_o_part[0]
                if self.cfg.refine_positions:
                    h[s:e] = self._position_curvature(pos[s:e])
        all_reduce_sum(illum, s_o, h)
        out = [(4 * (illum + _FLOOR * illum.max())).sqrt()]
        if self.cfg.refine_probe:
            out.append((4 * (s_o + _FLOOR * s_o.max())).sqrt())
        if self.cfg.refine_positions:
            out.append((_POSITION_STEP ** -1 * (h + _FLOOR * h.mean()) + 1e-30).sqrt())
        return out

    def clamp_offsets(self) -> None:
        """Hold every offset within ``max_position_shift_px`` and its window inside the frame."""
        lim = self.cfg.max_position_shift_px
        off = self.offsets.clamp(-lim, lim)
        self.offsets.copy_(torch.maximum(torch.minimum(self.base + off, self.hi), self.lo)
                           - self.base)

    def nll(self, counts: torch.Tensor, batch_size: int) -> float:
        """Mean excess NLL per pixel over all patterns (no gradient; each rank sums its own
        rows, and the sums are added over the ranks)."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        pos = self.positions()
        with torch.no_grad():
            obj = self.obj.detach()
            for s in range(self.rows_lo, self.rows_hi, batch_size):
                e = min(s + batch_size, self.rows_hi)
                c = counts[s:e].to(self.device)
                pred = scan_intensity(obj, self.probe.detach(), pos[s:e], self.n)
                total += excess_nll_per_pixel(pred, c, POISSON_EPS, self.bad).sum().double()
        all_reduce_sum(total)
        return float(total) / self.n_patterns

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Object, probe and positions of every pattern (each rank's own offsets gathered)."""
        offsets = self.offsets
        if self.world > 1:
            offsets = torch.zeros_like(self.offsets)
            offsets[self.rows_lo:self.rows_hi] = self.offsets[self.rows_lo:self.rows_hi]
            all_reduce_sum(offsets)
        return (self.obj.detach().cpu().numpy().astype(np.complex64),
                self.probe.detach().cpu().numpy().astype(np.complex64).reshape(self.probe_shape),
                (self.base + offsets).cpu().numpy().astype(np.float64))


_LBFGS_CHECK_ITERATIONS = 10
"""L-BFGS iterations between two data-NLL checks of the polish."""
_LBFGS_HISTORY = 20
"""Correction pairs kept by L-BFGS (its memory: about twice this many copies of the unknowns)."""


class _LBFGSPolish:
    """Full-batch L-BFGS (torch's, strong-Wolfe line search) on the unknowns of a
    :class:`_State`, in preconditioned coordinates ``y = scale * (x - x_start)`` with ``scale``
    the square roots of the curvature bounds (:meth:`_State.preconditioners`), so that one
    unit of ``y`` costs about one unit of NLL in every unknown."""

    def __init__(self, state: _State, counts: Any, batch_size: int) -> None:
        self.state, self.counts, self.batch_size = state, counts, batch_size
        cfg = state.cfg
        scales = state.preconditioners(batch_size)
        self.parts: list[tuple[str, torch.Tensor, torch.Tensor]] = [
            ("obj", state.obj.detach().clone(), scales.pop(0))]
        if cfg.refine_probe:
            self.parts.append(("probe", state.probe.detach().clone(), scales.pop(0)))
        if cfg.refine_positions:
            self.parts.append(("offsets", state.offsets.clone(), scales.pop(0)))
        size = sum(torch.view_as_real(x).numel() if x.is_complex() else x.numel()
                   for _, x, _ in self.parts)
        self.y = torch.zeros(size, dtype=torch.float32, device=state.device, requires_grad=True)
        self.opt = torch.optim.LBFGS([self.y], lr=1.0, history_size=_LBFGS_HISTORY,
                                     tolerance_grad=0.0, tolerance_change=0.0,
                                     line_search_fn="strong_wolfe")
        self.evaluations = 0

    @torch.no_grad()
    def _set_state(self, y: torch.Tensor) -> None:
        """Write ``x_start + y / scale`` into the state (offsets clamped to their limits)."""
        start = 0
        for name, x0, scale in self.parts:
            shape = torch.view_as_real(x0).shape if x0.is_complex() else x0.shape
            k = math.prod(shape)
            piece = y[start:start + k].view(shape)
            start += k
            if x0.is_complex():
                value = x0 + torch.view_as_complex(piece.contiguous()).to(x0.dtype) / scale
            else:
                value = x0 + piece.to(x0.dtype) / scale
            getattr(self.state, name).copy_(value)
        if self.state.cfg.refine_positions:
            self.state.clamp_offsets()

    def _closure(self) -> torch.Tensor:
        self._set_state(self.y.detach())
        loss, g_o, g_p, g_r = self.state.full_gradients(self.counts, self.batch_size)
        grads = {"obj": g_o, "probe": g_p, "offsets": g_r}
        flat = []
        for name, _, scale in self.parts:
            g = grads[name] / scale
            flat.append((torch.view_as_real(g) if g.is_complex() else g).reshape(-1))
        self.y.grad = torch.cat([f.to(torch.float32) for f in flat])
        self.evaluations += 1
        return torch.tensor(loss, dtype=torch.float64)

    def run(self, iterations: int) -> int:
        """At most ``iterations`` L-BFGS iterations; the state is left at the result.  Returns
        the function evaluations (each one pass over all patterns)."""
        before = self.evaluations
        group = self.opt.param_groups[0]
        group["max_iter"] = iterations
        group["max_eval"] = iterations * 5 // 4 + 1
        self.opt.step(self._closure)
        self._set_state(self.y.detach())
        return self.evaluations - before


def refine(scan: ScanData, cfg: RefineConfig, object_init: np.ndarray | None = None,
           probe_init: np.ndarray | None = None, progress: bool = False) -> RefineResult:
    """Refine an object (and optionally probe and positions) by Poisson maximum likelihood.

    Parameters
    ----------
    scan : ScanData
        Counts ``(n, H, W)``, positions ``(n, 2)``, probe, bad pixels; the object frame is
        ``scan.object_shape_px``.
    cfg : RefineConfig
        ``epochs`` (cap; 0 returns the start unchanged), batch size, update rule, what to refine,
        convergence checks, device, seed.
    object_init : complex ``(Hy, Wx)``, optional
        Starting object (e.g. a PINN's stitched object with uncovered pixels set to 1); None: a
        flat object (ones).
    probe_init : complex ``(H, W)`` or ``(M, H, W)``, optional
        Starting probe in photon units; None: ``scan.probe``.
    progress : bool
        Show a progress bar of the epochs (with the last checked NLL) on stderr (rank 0 only).

    Returns
    -------
    RefineResult
        The lowest-NLL state seen at the checks, its NLL history and the timings.  In a
        ``torch.distributed`` process group the patterns are sharded over the ranks (module
        docstring) and every rank returns the same result.

    Raises
    ------
    ValueError
        On an initial object or probe of the wrong shape or with NaN/Inf values.
    """
    shape = scan.object_shape_px
    obj0 = np.ones(shape, np.complex64) if object_init is None else np.asarray(object_init)
    require(obj0.shape == shape, "object_init", f"shape {shape} (the scan's object frame)",
            obj0.shape)
    require(bool(np.isfinite(obj0).all()), "object_init", "finite values", "NaN/Inf")
    probe0 = scan.probe if probe_init is None else np.asarray(probe_init)
    require(probe0.shape[-2:] == scan.probe.shape[-2:] and probe0.ndim in (2, 3), "probe_init",
            f"shape (H, W) or (M, H, W) with H = W = {scan.pattern_size}", probe0.shape)
    require(bool(np.isfinite(probe0).all()), "probe_init", "finite values", "NaN/Inf")
    device = _device(cfg.device)
    state = _State(scan, cfg, obj0, probe0, device)
    counts = torch_counts(scan.counts)  # stays on the CPU (or in its file); batches are moved
    n = scan.n_patterns
    check_batch = max(cfg.batch_size, 256)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t = time.perf_counter()
    nll = state.nll(counts, check_batch)
    check_s = time.perf_counter() - t
    history: list[tuple[int, float, float]] = [(0, 0.0, nll)]
    reference = nll  # what the next check is compared with
    best = (nll, state.snapshot()) if math.isfinite(nll) else None
    log.info("refine: %d patterns %dx%d, object %dx%d, %s step %g, probe %s, positions %s, "
             "at most %d epochs on %s; start: data NLL %.6g per pixel", n, scan.pattern_size,
             scan.pattern_size, shape[0], shape[1], cfg.optimizer, cfg.step,
             "refined" if cfg.refine_probe else "fixed",
             "refined" if cfg.refine_positions else "fixed", cfg.epochs, device, nll)
    gen = torch.Generator().manual_seed(cfg.seed)
    reason = "off" if cfg.epochs == 0 else "cap"
    solver_s = 0.0
    done = halvings = 0
    bar = tqdm(total=cfg.epochs, desc="refinement", unit="epoch",
               disable=not progress or state.rank != 0, leave=False)
    while done < cfg.epochs:
        t = time.perf_counter()
        for _ in range(min(cfg.check_every_epochs, cfg.epochs - done)):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.batch_size):
                rows = state.owned(order[s:s + cfg.batch_size])
                state.update(rows.to(device), counts[rows].to(device, non_blocking=True),
                             newton=done < NEWTON_WARMUP_EPOCHS)
            done += 1
            bar.update(1)
        sync()
        solver_s += time.perf_counter() - t
        t = time.perf_counter()
        nll = state.nll(counts, check_batch)
        check_s += time.perf_counter() - t
        previous = reference
        reference = nll
        history.append((done, solver_s, nll))
        bar.set_postfix(nll_per_px=f"{nll:.4g}")
        log.info("refine: epoch %d, data NLL %.6g per pixel, %.2f s", done, nll, solver_s)
        improved = math.isfinite(nll) and (best is None or nll < best[0])
        if improved:
            best = (nll, state.snapshot())
        stop = convergence_stop(nll, previous if math.isfinite(previous) else None,
                                cfg.convergence_rel_tol)
        if stop is not None and halvings < cfg.step_halvings and best is not None:
            halvings += 1
            if not improved:  # go on from the best state
                state.restore(best[1])
                reference = best[0]
            state.scale_step(0.5)
            log.info("refine: %s at epoch %d; step halved to %g", stop, done,
                     cfg.step * state.step_scale)
            continue
        if stop is not None:
            reason = stop
            break
    bar.close()
    lbfgs_done = 0
    iterations = cfg.lbfgs_iterations_resolved
    if iterations and cfg.epochs > 0 and best is not None and reason != "diverged":
        # full-batch L-BFGS from the best state: it converges the modes the minibatch steps
        # leave slow (position correction's global scale/shear and border positions)
        state.restore(best[1])
        t = time.perf_counter()
        polish = _LBFGSPolish(state, counts, check_batch)
        reference = best[0]
        bar = tqdm(total=iterations, desc="refinement, L-BFGS", unit="iteration",
                   disable=not progress or state.rank != 0, leave=False)
        while lbfgs_done < iterations:
            k = min(_LBFGS_CHECK_ITERATIONS, iterations - lbfgs_done)
            done += polish.run(k)  # each evaluation: one pass over all patterns
            lbfgs_done += k
            bar.update(k)
            sync()
            solver_s += time.perf_counter() - t
            t = time.perf_counter()
            nll = state.nll(counts, check_batch)
            check_s += time.perf_counter() - t
            history.append((done, solver_s, nll))
            bar.set_postfix(nll_per_px=f"{nll:.4g}")
            log.info("refine: L-BFGS iteration %d (%d passes in all), data NLL %.6g per pixel, "
                     "%.2f s", lbfgs_done, done, nll, solver_s)
            if math.isfinite(nll) and nll < best[0]:
                if cfg.refine_probe:
                    with torch.no_grad():
                        state.probe.copy_(orthogonalize_modes(state.probe))
                best = (nll, state.snapshot())
            if convergence_stop(nll, reference if math.isfinite(reference) else None,
                                cfg.convergence_rel_tol) is not None:
                break
            reference = nll
            t = time.perf_counter()
        bar.close()
    if best is None:
        raise RuntimeError("refine: the data NLL was never finite (NaN/Inf in the start or the "
                           "updates); try a smaller refine.step")
    obj, probe, positions = best[1]
    log.info("refine done: %d epochs (%s), %.2f s, NLL checks %.2f s, data NLL %.6g per pixel",
             done, reason, solver_s, check_s, best[0])
    return RefineResult(object=obj, probe=probe, positions_px=positions, nll_history=history,
                        epochs=done, wall_time_s=solver_s, stop_reason=reason,
                        nll_check_time_s=check_s, lbfgs_iterations=lbfgs_done)
