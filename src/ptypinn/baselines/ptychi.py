r"""Iterative-solver baseline: run pty-chi (``ptychi``) on a :class:`~ptypinn.data.ScanData`.

pty-chi is an optional dependency (``pip install ptypinn[iterative]``, see ``docs/iterative.md``);
nothing here imports it until :func:`ptychi_available` or :func:`reconstruct_ptychi` is called.

This adapter owns every conversion between the two conventions (tested in
``tests/test_iterative.py``):

* **Intensities.**  pty-chi predicts ``|fft2(P * O)|^2`` with an *unnormalized* FFT, whereas
  ``ptypinn.physics`` uses ``norm="ortho"``: ``I_ours = I_unnorm / (H * W)``.  The measured counts
  are passed unchanged (so the Poisson statistics stay intact) and the probe is divided by
  ``sqrt(H * W)`` on the way in and multiplied back on the way out, so the object keeps its
  absolute transmission.
* **Zero frequency.**  Our patterns hold DC at the array centre; pty-chi is told so with
  ``data_options.fft_shift=True`` and shifts them itself.
* **Positions.**  Ours are window centres ``p`` with the window starting at ``p - N/2``.  pty-chi
  maps a position ``q`` to buffer coordinates ``c = q + origin`` and starts the window at
  ``c - (N - 1)/2``.  pty-chi's buffer is our object padded by ``_PAD_PX`` pixels on each side
  (it wants that margin around the outermost windows), so equal starts need
  ``q + origin = p + pad - 1/2``; the origin is set explicitly (``SPECIFIED``) to
  ``floor(padded_shape / 2) - 1/2`` (pty-chi's own centre convention), hence
  ``q = p + pad - floor(padded_shape / 2)``, an exact integer shift.  Columns ``(y, x)`` become
  the separate ``position_y_px`` / ``position_x_px`` vectors.  Sub-pixel parts are applied by
  pty-chi's own (Fourier) interpolation, which agrees with our bilinear one for integer starts.
* **Shapes.**  Object ``(Hy, Wx)`` <-> ``(1 slice, Hy, Wx)``; probe ``(modes, H, W)`` <->
  ``(1 OPR mode, modes, H, W)``; ``bad_pixels`` <-> ``valid_pixel_mask = ~bad_pixels``.
* **Process state.**  Building a pty-chi task sets torch's default device and dtype and seeds the
  global RNGs of torch, numpy and ``random``.  All of these are saved and restored around the run.

Convergence: every run ends with ptypinn's own truth-free fit, the excess data NLL per pixel of
:func:`ptypinn.physics.data_nll` (mean over patterns, with pty-chi's probe when it refined one).
With ``IterativeConfig.until_converged`` the task is built once and advanced in chunks of
``check_every_epochs`` (pty-chi continues from its internal state), the NLL is checked after each
chunk, and the run stops when the NLL improved by less than ``convergence_rel_tol`` of the previous
check's value (or got worse), when it is no longer finite, or at the cap ``iterations``.  The
result carries the history ``(epochs, solver seconds, NLL)`` of every check; the solver time
excludes the checks, so benchmarks can read off "time to reach a given NLL".

torchvision: pty-chi imports ``torchvision.transforms.GaussianBlur`` at module level but only uses
it to smooth random initial guesses (never on the path used here).  When the installed torchvision
cannot be imported (none installed, or a wheel built for another torch, e.g. PyPI's CUDA build next
to a CPU torch), pty-chi is imported with a minimal stand-in ``torchvision.transforms`` module that
exists only for the duration of that import; a warning says so.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import random
import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ptypinn.physics import data_nll
from ptypinn.config import IterativeConfig, require
from ptypinn.metrics import convergence_stop
from ptypinn.data import ScanData

__all__ = [
    "IterativeResult",
    "ptychi_available",
    "reconstruct_ptychi",
    "GaussianBlurStandIn",
]

log = logging.getLogger(__name__)

_DM_CHUNK_LENGTH = 64  # scan points per difference-map exit-wave chunk (1 is very slow on CPU)
_RPIE_STEP_PER_BATCH = 2.0  # default rPIE step = min(1, this / batch_size)
_PAD_PX = 2  # margin pty-chi wants around the outermost windows (it zero-pads otherwise)
_INSTALL_HINT = "see docs/iterative.md (pip install ptypinn[iterative])"


@dataclass(frozen=True)
class IterativeResult:
    """Outcome of :func:`reconstruct_ptychi`, in ptypinn's conventions.

    Attributes
    ----------
    object : complex64 ``(Hy, Wx)``
        Object in the scan's object frame (``scan.object_shape_px``, same positions).  With
        ``until_converged`` it is the state of the lowest-NLL check: an earlier one than the last
        when the NLL got worse or stopped being finite.
    probe : complex64, same shape as ``scan.probe``
        Probe of the same state, in photon units (the input probe when it was not optimised).
    wall_time_s : float
        Solver seconds: building the pty-chi task and running its epochs, *excluding* ptypinn's
        data-NLL checks (those are ``nll_check_time_s``).
    algorithm : str
    iterations : int
        Epochs actually run (``<= cfg.iterations``; fewer when the run stopped early).
    loss_history : list of float
        pty-chi's displayed loss per epoch (its ``MSE_SQRT`` metric on amplitudes).
    nll_history : list of (int, float, float)
        One ``(epochs_done, solver_wall_time_s, nll_per_pixel)`` per check, in order: epochs run
        so far, cumulative solver seconds at that point (counted as ``wall_time_s``), and the
        excess data NLL per pixel (:func:`ptypinn.physics.data_nll`, mean over patterns; NaN when
        the state was not finite).  A fixed-epoch run has one point, at the end.
    converged : bool
        True when an ``until_converged`` run stopped because the NLL stopped improving
        (``stop_reason`` ``"tolerance"`` or ``"worse"``).
    stop_reason : str
        ``"tolerance"`` (improved by less than ``convergence_rel_tol``), ``"worse"`` (NLL rose),
        ``"diverged"`` (NLL not finite), ``"cap"`` (``iterations`` reached) or ``"fixed_epochs"``
        (``until_converged`` off).
    nll_check_time_s : float
        Seconds spent copying the state out of pty-chi and evaluating the data NLL at the checks.
    """

    object: np.ndarray
    probe: np.ndarray
    wall_time_s: float
    algorithm: str
    iterations: int
    loss_history: list[float] = field(default_factory=list)
    nll_history: list[tuple[int, float, float]] = field(default_factory=list)
    converged: bool = False
    stop_reason: str = "fixed_epochs"
    nll_check_time_s: float = 0.0

    @property
    def nll_per_pixel(self) -> float:
        """Excess data NLL per pixel of the returned state (the lowest finite check)."""
        finite = [h[2] for h in self.nll_history if math.isfinite(h[2])]
        return min(finite) if finite else math.nan


# ----------------------------------------------------------------------------------------------
# torchvision stand-in and lazy import


class GaussianBlurStandIn:
    """Minimal replacement for ``torchvision.transforms.GaussianBlur`` on tensors.

    Same semantics as torchvision's tensor path: a separable, normalised Gaussian kernel of
    ``kernel_size = (kx, ky)`` pixels with ``sigma = (sx, sy)``, reflect padding (edge not
    repeated), applied over the last two axes of a ``(..., H, W)`` tensor.
    """

    def __init__(self, kernel_size: int | tuple[int, int],
                 sigma: float | tuple[float, float] = (0.1, 2.0)) -> None:
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        sg = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else tuple(sigma)
        require(len(ks) == 2 and all(k >= 1 and k % 2 == 1 for k in ks), "kernel_size",
                "odd positive integers (kx, ky)", kernel_size)
        require(len(sg) == 2 and all(s > 0 for s in sg), "sigma", "positive values (sx, sy)",
                sigma)
        self.kernel_size = (int(ks[0]), int(ks[1]))
        self.sigma = (float(sg[0]), float(sg[1]))

    @staticmethod
    def _kernel(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        return (k / k.sum()).to(dtype=dtype, device=device)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        require(img.ndim >= 2, "img", "a tensor (..., H, W)", tuple(img.shape))
        shape = img.shape
        x = img.reshape(-1, 1, shape[-2], shape[-1])
        real_dtype = x.real.dtype if x.is_complex() else x.dtype
        kx = self._kernel(self.kernel_size[0], self.sigma[0], real_dtype, x.device)
        ky = self._kernel(self.kernel_size[1], self.sigma[1], real_dtype, x.device)
        px, py = self.kernel_size[0] // 2, self.kernel_size[1] // 2
        x = F.pad(x, (px, px, py, py), mode="reflect")
        x = F.conv2d(x, kx.view(1, 1, 1, -1))
        x = F.conv2d(x, ky.view(1, 1, -1, 1))
        return x.reshape(shape)


def _torchvision_problem() -> str | None:
    """``None`` when ``torchvision.transforms`` imports, else why it does not."""
    try:
        importlib.import_module("torchvision.transforms")
    except Exception as exc:  # a wheel for another torch fails with RuntimeError, not ImportError
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # drop the half-imported package
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


@contextlib.contextmanager
def _stand_in_torchvision() -> Iterator[None]:
    """Register a stand-in ``torchvision.transforms`` for the duration of the block only."""
    package = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlurStandIn  # type: ignore[attr-defined]
    package.transforms = transforms  # type: ignore[attr-defined]
    package.__path__ = []  # a package, so that submodule imports fail cleanly
    sys.modules["torchvision"] = package
    sys.modules["torchvision.transforms"] = transforms
    try:
        yield
    finally:
        for name in ("torchvision.transforms", "torchvision"):
            if sys.modules.get(name) in (package, transforms):
                del sys.modules[name]


def _import_ptychi() -> types.ModuleType:
    """Import and return ``ptychi.api`` (with ``ptychi.api.task`` loaded).

    Raises
    ------
    ImportError
        When ptychi is not installed or cannot be imported.
    """
    if "ptychi.api.task" in sys.modules:
        return sys.modules["ptychi.api"]
    if importlib.util.find_spec("ptychi") is None:
        raise ImportError(f"ptychi is not installed; {_INSTALL_HINT}")
    problem = _torchvision_problem()
    try:
        if problem is None:
            importlib.import_module("ptychi.api.task")
        else:
            log.warning("torchvision unusable (%s); importing ptychi with ptypinn's stand-in "
                        "torchvision.transforms.GaussianBlur (see docs/iterative.md)", problem)
            with _stand_in_torchvision():
                importlib.import_module("ptychi.api.task")
    except Exception as exc:
        raise ImportError(f"ptychi cannot be imported ({type(exc).__name__}: {exc}); "
                          f"{_INSTALL_HINT}") from exc
    return sys.modules["ptychi.api"]


def ptychi_available() -> tuple[bool, str]:
    """Whether pty-chi can be used here; the second item says why not (empty when it can)."""
    try:
        _import_ptychi()
    except ImportError as exc:
        return False, str(exc)
    return True, ""


# ----------------------------------------------------------------------------------------------
# process-state isolation


@contextlib.contextmanager
def _isolated_torch_state() -> Iterator[None]:
    """Restore torch's default dtype/device and the torch/numpy/random RNG states afterwards."""
    dtype = torch.get_default_dtype()
    device = torch.get_default_device()
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        # cpu is torch's built-in default: clear the device context instead of installing one
        torch.set_default_device(None if device.type == "cpu" else device)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)


@contextlib.contextmanager
def _torch_defaults(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Use ``dtype``/``device`` as torch defaults inside the block, then put back the current ones.

    The data-NLL checks run with the caller's defaults (not pty-chi's), so they compute exactly
    what an independent :func:`ptypinn.physics.data_nll` call outside the run would.
    """
    inner_dtype, inner_device = torch.get_default_dtype(), torch.get_default_device()
    torch.set_default_dtype(dtype)
    torch.set_default_device(None if device.type == "cpu" else device)
    try:
        yield
    finally:
        torch.set_default_dtype(inner_dtype)
        torch.set_default_device(inner_device)


# ----------------------------------------------------------------------------------------------
# conversions


def _origin_px(buffer_shape_px: tuple[int, int]) -> np.ndarray:
    """pty-chi position origin (buffer coordinates of position 0) used by this adapter."""
    return np.floor(np.asarray(buffer_shape_px, dtype=np.float64) / 2.0) - 0.5


def to_ptychi_positions(positions_px: np.ndarray, object_shape_px: tuple[int, int],
                        pad_px: int = _PAD_PX) -> np.ndarray:
    """Our window centres ``(n, 2)`` ``(y, x)`` -> pty-chi positions ``(n, 2)`` ``(y, x)``.

    The pty-chi buffer is our object padded by ``pad_px`` on every side, with the origin
    :func:`_origin_px` of the padded shape; ``q = p + pad_px - 1/2 - origin`` makes both codes
    start every window on the same object pixel (see the module docstring).
    """
    padded = (object_shape_px[0] + 2 * pad_px, object_shape_px[1] + 2 * pad_px)
    return np.asarray(positions_px, dtype=np.float64) + pad_px - 0.5 - _origin_px(padded)


def _options(api: types.ModuleType, cfg: IterativeConfig, buffer_shape_px: tuple[int, int],
             use_gpu: bool) -> Any:
    """Build the pty-chi options object for ``cfg``."""
    opts = {"lsqml": api.LSQMLOptions, "epie": api.EPIEOptions, "rpie": api.RPIEOptions,
            "dm": api.DMOptions}[cfg.algorithm]()

    opts.data_options.fft_shift = True
    opts.data_options.save_data_on_device = use_gpu

    oo = opts.object_options
    oo.optimizable = True
    oo.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    oo.position_origin_coords = _origin_px(buffer_shape_px)

    po = opts.probe_options
    po.optimizable = cfg.optimize_probe
    if not cfg.optimize_probe:  # keep the given probe, and the object's absolute scale, intact
        oo.remove_object_probe_ambiguity.enabled = False
        po.orthogonalize_incoherent_modes.enabled = False

    opts.probe_position_options.optimizable = False

    ro = opts.reconstructor_options
    ro.num_epochs = cfg.iterations
    ro.batch_size = cfg.batch_size
    ro.random_seed = cfg.seed
    ro.default_device = api.Devices.GPU if use_gpu else api.Devices.CPU
    ro.default_dtype = api.Dtypes.FLOAT32

    if cfg.algorithm == "lsqml":
        ro.noise_model = (api.NoiseModels.POISSON if cfg.noise_model == "poisson"
                          else api.NoiseModels.GAUSSIAN)
        ro.rescale_probe_intensity_in_first_epoch = False
        if cfg.step_size is not None:
            oo.optimal_step_size_scaler = cfg.step_size
            po.optimal_step_size_scaler = cfg.step_size
    else:
        step = cfg.step_size
        if step is None and cfg.algorithm == "rpie":
            # pty-chi adds the undamped rPIE updates of a whole minibatch: gamma = 1 diverges for
            # batch_size >= ~8 (measured), so scale the step with the batch.
            step = min(1.0, _RPIE_STEP_PER_BATCH / cfg.batch_size)
        if step is not None:
            oo.step_size = step
            po.step_size = step
    if cfg.algorithm == "dm":
        ro.chunk_length = _DM_CHUNK_LENGTH
    return opts


def _use_gpu(device: str) -> bool:
    require(device != "cuda" or torch.cuda.is_available(), "iterative.device",
            "'cpu' or 'auto' (CUDA is not available here)", device)
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def reconstruct_ptychi(scan: ScanData, cfg: IterativeConfig,
                       progress: bool = False) -> IterativeResult:
    """Reconstruct ``scan`` with pty-chi, using the scan's probe and positions.

    With ``cfg.until_converged`` the pty-chi task is built once and run in chunks of
    ``cfg.check_every_epochs`` epochs (``cfg.iterations`` at most in all); after each chunk the
    object (and probe) is read back and the excess data NLL per pixel
    (:func:`ptypinn.physics.data_nll`, mean over patterns, with the refined probe when
    ``cfg.optimize_probe``) is computed.  The run stops when the NLL improved by no more than
    ``cfg.convergence_rel_tol`` times the previous check's value, got worse, is not finite, or
    the cap is reached; the lowest-NLL state seen is returned.  Otherwise all ``cfg.iterations``
    epochs run in one go and the NLL is evaluated once, at the end.

    Parameters
    ----------
    scan : ScanData
        Counts ``(n, H, W)`` (DC at the centre), positions ``(n, 2)`` window centres in object
        pixels, probe ``(H, W)`` or ``(modes, H, W)`` in photon units.  The initial object is
        ``scan.object_guess`` when present, else ones over ``scan.object_shape_px``.
    cfg : IterativeConfig
    progress : bool
        A progress bar of the epochs (with the last checked NLL) on stderr; it advances after
        each chunk of ``check_every_epochs`` (once, at the end, for a fixed-epoch run).

    Returns
    -------
    IterativeResult
        Object ``(Hy, Wx)`` complex64 in the scan's object frame, probe in photon units, the NLL
        history, and ``wall_time_s`` = solver seconds with the NLL checks excluded (those are
        ``nll_check_time_s``).

    Raises
    ------
    ImportError
        When pty-chi is not usable (see :func:`ptychi_available`).
    RuntimeError
        When the returned object would have NaN/Inf values (a fixed-epoch run that diverged, or
        an ``until_converged`` run that diverged before its first check).
    """
    api = _import_ptychi()
    import ptychi.api.task as ptychi_task  # loaded by _import_ptychi

    use_gpu = _use_gpu(cfg.device)
    shape = scan.object_shape_px
    h, w = scan.counts.shape[-2:]
    fft_factor = math.sqrt(h * w)  # |fft2_unnormalized|^2 == H*W * |fft2_ortho|^2

    obj0 = (scan.object_guess if scan.object_guess is not None
            else np.ones(shape, dtype=np.complex64))
    obj0 = np.pad(obj0, _PAD_PX, mode="edge").astype(np.complex64)  # pty-chi's buffer
    probe = (scan.probe_modes / fft_factor).astype(np.complex64)[None]  # (1, modes, H, W)
    q = to_ptychi_positions(scan.positions_px, shape).astype(np.float32)
    mask = None if scan.bad_pixels is None else ~scan.bad_pixels
    nll_device = "cuda" if use_gpu else "cpu"
    outer_dtype, outer_device = torch.get_default_dtype(), torch.get_default_device()
    chunk = cfg.check_every_epochs if cfg.until_converged else cfg.iterations

    if cfg.until_converged:
        log.info("pty-chi %s: %d patterns %dx%d, object %dx%d, until converged (check every %d "
                 "epochs, rel tol %g), at most %d epochs on %s", cfg.algorithm, scan.n_patterns,
                 h, w, shape[0], shape[1], chunk, cfg.convergence_rel_tol, cfg.iterations,
                 nll_device)
    else:
        log.info("pty-chi %s: %d patterns %dx%d, object %dx%d, %d epochs on %s", cfg.algorithm,
                 scan.n_patterns, h, w, shape[0], shape[1], cfg.iterations, nll_device)

    def sync() -> None:
        if use_gpu:
            torch.cuda.synchronize()

    history: list[tuple[int, float, float]] = []
    best: tuple[float, np.ndarray, np.ndarray] | None = None  # (nll, object, probe)
    last: tuple[np.ndarray, np.ndarray] | None = None
    reason = "cap" if cfg.until_converged else "fixed_epochs"
    check_s = 0.0
    done = 0
    bar = tqdm(total=cfg.iterations, desc=f"pty-chi {cfg.algorithm}", unit="epoch",
               disable=not progress, leave=False)
    with _isolated_torch_state(), warnings.catch_warnings(), bar:
        # pty-chi-internal noise that a user cannot act on
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        start = time.perf_counter()
        options = _options(api, cfg, obj0.shape, use_gpu)
        task = ptychi_task.PtychographyTask(
            options,
            diffraction_data=np.asarray(scan.counts),
            object_data=obj0[None],
            probe_data=probe,
            probe_position_x_px=q[:, 1],
            probe_position_y_px=q[:, 0],
            valid_pixel_mask=mask,
        )
        sync()
        solver_s = time.perf_counter() - start
        while done < cfg.iterations:
            n_epochs = min(chunk, cfg.iterations - done)
            t = time.perf_counter()
            task.run(n_epochs=n_epochs)
            sync()
            solver_s += time.perf_counter() - t
            done += n_epochs

            t = time.perf_counter()
            obj = task.get_data_to_cpu("object", as_numpy=True)[0, _PAD_PX:-_PAD_PX,
                                                                 _PAD_PX:-_PAD_PX]
            obj = obj.astype(np.complex64)
            probe_out = task.get_data_to_cpu("probe", as_numpy=True)[0] * fft_factor
            probe_out = probe_out.astype(np.complex64).reshape(scan.probe.shape)
            last = (obj, probe_out)
            nll = math.nan
            if np.isfinite(obj).all() and np.isfinite(probe_out).all():
                own = scan.replace(probe=probe_out) if cfg.optimize_probe else scan
                with _torch_defaults(outer_dtype, outer_device):
                    nll = float(np.mean(data_nll(obj, own, device=nll_device)))
            check_s += time.perf_counter() - t
            history.append((done, solver_s, nll))
            bar.update(n_epochs)
            bar.set_postfix(nll_per_px=f"{nll:.4g}")
            log.info("pty-chi %s: epoch %d, data NLL %.6g per pixel, solver %.2f s",
                     cfg.algorithm, done, nll, solver_s)

            if math.isfinite(nll) and (best is None or nll < best[0]):
                best = (nll, obj, probe_out)
            if cfg.until_converged:
                stop = convergence_stop(nll, history[-2][2] if len(history) > 1 else None,
                                    cfg.convergence_rel_tol)
                if stop is not None:
                    reason = stop
                    break
        losses = [float(v) for v in task.reconstructor.loss_tracker.table["loss"].tolist()]
        del task

    assert last is not None  # iterations >= 1
    obj, probe_out = best[1:] if (cfg.until_converged and best is not None) else last
    if not np.isfinite(obj).all():
        raise RuntimeError(f"pty-chi {cfg.algorithm} diverged: the object has NaN/Inf values "
                           "(try a smaller step_size or the Poisson noise model)")
    if reason in ("worse", "diverged") and best is not None:
        best_epochs = next(e for e, _, v in history if v == best[0])
        log.warning("pty-chi %s: data NLL %s at epoch %d; returning the state of epoch %d "
                    "(NLL %.6g per pixel)", cfg.algorithm,
                    "rose" if reason == "worse" else "not finite", done, best_epochs, best[0])
    log.info("pty-chi %s done: %d epochs (%s), solver %.1f s, NLL checks %.1f s, final loss %.4g",
             cfg.algorithm, done, reason, solver_s, check_s,
             losses[-1] if losses else float("nan"))
    return IterativeResult(object=obj, probe=probe_out, wall_time_s=solver_s,
                           algorithm=cfg.algorithm, iterations=done, loss_history=losses,
                           nll_history=history, converged=reason in ("tolerance", "worse"),
                           stop_reason=reason, nll_check_time_s=check_s)
