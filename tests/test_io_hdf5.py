"""Tests of the HDF5 formats (CXI, ptychodus product) and the tike Siemens-star converter.

Expected values are computed here from first principles (h c / E, the CXI sign convention,
ptychodus's centre/pixel mapping) or written by hand into raw h5py files, never by the code
under test.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import constants
from scipy.spatial import cKDTree

from ptypinn import io as pio
from ptypinn.data import ScanData
from ptypinn.io.hdf5 import (
    TIKE_COPYRIGHT,
    Product,
    describe_hdf5,
    detect_hdf5_kind,
    read_cxi,
    read_product,
    read_tike_siemens_npz_bz2,
    write_cxi,
    write_product,
)

SIEMENS = Path("/work/shared/data/siemens-star-small.npz.bz2")
HC_EV_M = 1.239841984e-6  # h c in eV * m (CODATA 2018, rounded to 10 digits)


def _probe(n: int, modes: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((n, n)) - n / 2
    disk = (yy**2 + xx**2 < (n / 4) ** 2).astype(np.float64)
    p = disk * np.exp(1j * rng.uniform(-1, 1, (modes, n, n)))
    return p.astype(np.complex64) if modes > 1 else p[0].astype(np.complex64)


def _scan(n_px: int = 16, modes: int = 2) -> ScanData:
    rng = np.random.default_rng(1)
    pos = np.array([[10.0, 12.0], [13.25, 20.5], [22.0, 11.75], [19.5, 23.0], [15.0, 15.0]])
    counts = rng.poisson(5.0, (len(pos), n_px, n_px)).astype(np.float32)
    bad = np.zeros((n_px, n_px), bool)
    bad[3, 5] = bad[0, 0] = True
    obj = np.exp(1j * rng.uniform(-1, 1, (34, 36))).astype(np.complex64)
    meta = {"photon_energy_eV": 8000.0, "detector_distance_m": 2.0,
            "detector_pixel_size_m": 75e-6, "seed": 7, "probe_calibrated": True}
    return ScanData(counts=counts, positions_px=pos, probe=_probe(n_px, modes),
                    object_true=obj, bad_pixels=bad, meta=meta)


# ------------------------------------------------------------------------------------------------
# CXI


def test_cxi_round_trip_and_layout(tmp_path: Path) -> None:
    scan = _scan()
    path = tmp_path / "scan.cxi"
    write_cxi(path, scan)
    back = read_cxi(path)
    np.testing.assert_array_equal(back.counts, scan.counts)
    np.testing.assert_allclose(back.positions_px, scan.positions_px, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(back.probe, scan.probe)
    np.testing.assert_array_equal(back.bad_pixels, scan.bad_pixels)
    np.testing.assert_array_equal(back.object_true, scan.object_true)
    assert back.meta["photon_energy_eV"] == pytest.approx(8000.0, rel=1e-12)
    assert back.meta["detector_distance_m"] == 2.0
    assert back.meta["seed"] == 7 and back.meta["probe_calibrated"] is True

    # the file itself: SI units, soft links, sample translations with the documented sign
    ps = HC_EV_M / 8000.0 * 2.0 / (16 * 75e-6)
    with h5py.File(path, "r") as f:
        assert "cxi_version" in f
        assert isinstance(f.get("/entry_1/data_1/data", getlink=True), h5py.SoftLink)
        assert f["/entry_1/data_1/data"].shape == (5, 16, 16)
        assert f["/entry_1/instrument_1/source_1/energy"][()] == pytest.approx(
            8000.0 * constants.e, rel=1e-12)
        t = f["/entry_1/sample_1/geometry_1/translation"][()]
        np.testing.assert_array_equal(f["/entry_1/data_1/translation"][()], t)
        mask = f["/entry_1/instrument_1/detector_1/mask"][()]
    assert t.shape == (5, 3)
    # probe moves +x relative to the sample  <=>  the sample was translated by -x
    dx_px = scan.positions_px[1, 1] - scan.positions_px[0, 1]
    dy_px = scan.positions_px[2, 0] - scan.positions_px[0, 0]
    assert t[1, 0] - t[0, 0] == pytest.approx(-dx_px * ps, rel=1e-6)
    assert t[2, 1] - t[0, 1] == pytest.approx(-dy_px * ps, rel=1e-6)
    assert back.meta["object_pixel_size_m"] == pytest.approx(ps, rel=1e-8)
    assert set(zip(*np.nonzero(mask))) == {(0, 0), (3, 5)}


def _write_foreign_cxi(path: Path, *, layout: str = "sample", energy: str = "J",
                       translations: bool = True, probe_shape: tuple[int, int] = (32, 32),
                       version: bool = True) -> dict:
    """A CXI file as other tools (SHARP/PyNX-style writers) lay it out, with raw h5py."""
    n_px, energy_eV, dist_m, dpx_m = 32, 6200.0, 1.5, 55e-6
    step_m = 0.4e-6
    ty, tx = np.meshgrid(np.arange(3) * step_m, np.arange(4) * step_m, indexing="ij")
    t = np.stack([tx.ravel(), ty.ravel(), np.zeros(tx.size)], axis=1)  # (12, 3) x, y, z
    frames = np.zeros((len(t), n_px, n_px), np.uint32)
    frames[:, n_px // 2, n_px // 2] = 1000  # DC at the centre, as recorded
    frames[:, n_px // 2, n_px // 2 + 3] = np.arange(len(t))  # tag each frame
    mask = np.zeros((n_px, n_px), np.uint32)
    mask[1, 2] = 1
    mask[4, 4] = 2**16
    frames[:, 4, 4] = 2**32 - 1  # a typical sentinel in a bad pixel
    with h5py.File(path, "w") as f:
        if version:
            f["cxi_version"] = 150
        if layout == "sample":
            f["/entry_1/instrument_1/detector_1/data"] = frames
            f["/entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
            if translations:
                f["/entry_1/sample_1/geometry_1/translation"] = t
                f["/entry_1/data_1/translation"] = h5py.SoftLink(
                    "/entry_1/sample_1/geometry_1/translation")
            f["/entry_1/instrument_1/source_1/illumination"] = np.ones(probe_shape, np.complex64)
        else:  # data and translations only under data_1, probe under the detector
            f["/entry_1/data_1/data"] = frames
            if translations:
                f["/entry_1/data_1/translation"] = t
            f["/entry_1/instrument_1/detector_1/probe"] = np.ones(probe_shape, np.complex64)
        if energy == "J":
            f["/entry_1/instrument_1/source_1/energy"] = energy_eV * constants.e
        f["/entry_1/instrument_1/detector_1/distance"] = dist_m
        f["/entry_1/instrument_1/detector_1/x_pixel_size"] = dpx_m
        f["/entry_1/instrument_1/detector_1/y_pixel_size"] = dpx_m
        f["/entry_1/instrument_1/detector_1/mask"] = mask
    ps = HC_EV_M / energy_eV * dist_m / (n_px * dpx_m)
    return {"t": t, "ps": ps, "energy_eV": energy_eV, "n_px": n_px, "frames": frames}


@pytest.mark.parametrize("layout", ["sample", "data_1"])
def test_read_foreign_cxi(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "foreign.cxi"
    ref = _write_foreign_cxi(path, layout=layout)
    scan = read_cxi(path)
    n, ps, t = ref["n_px"], ref["ps"], ref["t"]
    assert scan.counts.shape == (12, n, n)
    assert scan.meta["photon_energy_eV"] == pytest.approx(ref["energy_eV"], rel=1e-9)
    assert scan.meta["object_pixel_size_m"] == pytest.approx(ps, rel=1e-6)
    # sample translation +t  ->  probe centre at -t; columns (y, x) from (t_y, t_x)
    shift = np.asarray(scan.meta["positions_shift_px"])
    np.testing.assert_allclose(scan.positions_px - shift,
                               np.stack([-t[:, 1] / ps, -t[:, 0] / ps], 1), atol=1e-9)
    assert (scan.positions_px - n / 2).min() >= 0
    # frames untouched (DC stays at the centre), frame order kept, bad pixels flagged and zeroed
    assert np.all(scan.counts[:, n // 2, n // 2] == 1000)
    np.testing.assert_array_equal(scan.counts[:, n // 2, n // 2 + 3], np.arange(12))
    assert set(zip(*np.nonzero(scan.bad_pixels))) == {(1, 2), (4, 4)}
    assert np.all(scan.counts[:, 4, 4] == 0)


def test_cxi_given_pixel_size_needs_no_geometry(tmp_path: Path) -> None:
    path = tmp_path / "noenergy.cxi"
    ref = _write_foreign_cxi(path, energy="none")
    scan = read_cxi(path, object_pixel_size_m=1e-7)
    shift = np.asarray(scan.meta["positions_shift_px"])
    np.testing.assert_allclose((scan.positions_px - shift)[:, 1], -ref["t"][:, 0] / 1e-7)
    assert scan.meta["photon_energy_eV"] is None
    with pytest.raises(ValueError, match="/entry_1/instrument_1/source_1/energy"):
        read_cxi(path)


def test_cxi_without_translations(tmp_path: Path) -> None:
    path = tmp_path / "notrans.cxi"
    _write_foreign_cxi(path, translations=False)
    with pytest.raises(ValueError, match="/entry_1/sample_1/geometry_1/translation"):
        read_cxi(path)


def test_cxi_probe_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "probe.cxi"
    _write_foreign_cxi(path, probe_shape=(30, 30))
    where = r"/entry_1/instrument_1/source_1/illumination.*\(30, 30\)"
    with pytest.raises(ValueError, match=where):
        read_cxi(path)


def test_hdf5_that_is_not_cxi(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["/images/frame"] = np.zeros((4, 4))
    assert detect_hdf5_kind(path) == "unknown-hdf5"
    with pytest.raises(ValueError, match="/entry_1/data_1/data"):
        read_cxi(path)
    with pytest.raises(ValueError, match="/probe_position_x_m"):
        read_product(path)
    assert "unknown layout" in describe_hdf5(path)[0]


def test_write_cxi_requires_geometry(tmp_path: Path) -> None:
    scan = _scan().replace(meta={"seed": 1})
    with pytest.raises(ValueError, match=r"meta\['photon_energy_eV'\]"):
        write_cxi(tmp_path / "x.cxi", scan)
    assert not (tmp_path / "x.cxi").exists()


# ------------------------------------------------------------------------------------------------
# ptychodus product


def _product() -> Product:
    rng = np.random.default_rng(3)
    obj = np.exp(1j * rng.uniform(-1, 1, (40, 48))).astype(np.complex64)
    pos = np.array([[12.0, 14.5], [20.25, 30.0], [28.0, 24.0]])
    return Product(positions_px=pos, probe=_probe(16, 2), object=obj, object_pixel_size_m=2e-8,
                   photon_energy_eV=7123.5, loss_history=[3.0, 2.0, 1.5], name="demo",
                   detector_distance_m=1.2)


def test_product_round_trip(tmp_path: Path) -> None:
    prod = _product()
    path = tmp_path / "product.h5"
    write_product(path, prod)
    back = read_product(path)
    np.testing.assert_allclose(back.positions_px, prod.positions_px, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(back.probe, prod.probe)
    np.testing.assert_array_equal(back.object, prod.object)
    assert back.photon_energy_eV == 7123.5
    assert back.object_pixel_size_m == 2e-8
    assert back.loss_history == [3.0, 2.0, 1.5]
    assert back.name == "demo" and back.detector_distance_m == 1.2
    assert detect_hdf5_kind(path) == "product"
    # everything ptychodus's reader requires, both energy names, metres about the object centre
    with h5py.File(path, "r") as f:
        for k in ("name", "comments", "detector_object_distance_m", "probe_energy_eV",
                  "photon_energy_eV", "exposure_time_s"):
            assert k in f.attrs
        assert f.attrs["probe_energy_eV"] == f.attrs["photon_energy_eV"] == 7123.5
        for k in ("probe_position_indexes", "object_layer_spacing_m", "loss_values"):
            assert k in f
        assert {"pixel_width_m", "pixel_height_m"} <= set(f["probe"].attrs)
        x_m, y_m = f["probe_position_x_m"][()], f["probe_position_y_m"][()]
    np.testing.assert_allclose(x_m, (prod.positions_px[:, 1] - 48 / 2) * 2e-8)
    np.testing.assert_allclose(y_m, (prod.positions_px[:, 0] - 40 / 2) * 2e-8)
    assert any("loss history: 3 values" in line for line in describe_hdf5(path))


def test_read_hand_built_product(tmp_path: Path) -> None:
    """A product laid out as ptychodus writes it: 4-D probe, 3-D object, older energy name."""
    path = tmp_path / "ptychodus.h5"
    cx, cy, pw = 1.0e-6, -2.0e-6, 1.0e-8
    x_m = cx + np.array([-5.0, 0.0, 7.5]) * pw
    y_m = cy + np.array([3.0, -4.0, 0.0]) * pw
    probe = _probe(16, 3)[None]  # (1, 3, 16, 16)
    obj = np.ones((1, 64, 80), np.complex128)
    with h5py.File(path, "w") as f:
        for k, v in {"name": "recon", "comments": "", "detector_object_distance_m": 2.0,
                     "probe_energy_eV": 10000.0, "probe_photon_count": 0.0,
                     "exposure_time_s": 0.0}.items():
            f.attrs[k] = v
        f["probe_position_indexes"] = np.arange(3)
        f["probe_position_x_m"] = x_m
        f["probe_position_y_m"] = y_m
        f["probe"] = probe
        f["probe"].attrs["pixel_width_m"] = pw
        f["probe"].attrs["pixel_height_m"] = pw
        f["object"] = obj
        for k, v in {"center_x_m": cx, "center_y_m": cy, "pixel_width_m": pw,
                     "pixel_height_m": pw}.items():
            f["object"].attrs[k] = v
        f["object_layer_spacing_m"] = np.zeros(0)
        f["loss_epochs"] = np.arange(2)
        f["loss_values"] = np.array([0.5, 0.25])
    prod = read_product(path)
    np.testing.assert_allclose(prod.positions_px, [[35.0, 35.0], [28.0, 40.0], [32.0, 47.5]],
                               atol=1e-9)
    assert prod.probe.shape == (3, 16, 16) and prod.probe.dtype == np.complex64
    assert prod.object.shape == (64, 80)
    assert prod.photon_energy_eV == 10000.0 and prod.loss_history == [0.5, 0.25]
    assert prod.name == "recon"


def test_product_positions_outside_object(tmp_path: Path) -> None:
    prod = _product()
    path = tmp_path / "outside.h5"
    write_product(path, prod)
    with h5py.File(path, "r+") as f:
        x = f["probe_position_x_m"][()]
        x[1] = 20 * 2e-8  # centre at 44 px: its 16-px window ends at 52 > 48
        f["probe_position_x_m"][...] = x
    with pytest.raises(ValueError, match="/probe_position_x_m"):
        read_product(path)
    bad = Product(positions_px=[[12.0, 5.0]], probe=prod.probe, object=prod.object,
                  object_pixel_size_m=1e-8)
    with pytest.raises(ValueError, match="positions_px"):
        write_product(tmp_path / "bad.h5", bad)
    assert not (tmp_path / "bad.h5").exists()


def test_ptychodus_npz_export_holds_intensity(tmp_path: Path) -> None:
    """ptychodus's PtychoPINN-style NPZ stores intensity under diff3d: read as counts."""
    rng = np.random.default_rng(5)
    counts = rng.poisson(20.0, (4, 16, 16)).astype(np.float32)
    xs, ys = np.array([10.0, 14.0, 18.0, 22.0]), np.array([12.0, 12.0, 16.0, 16.0])
    path = tmp_path / "ptychodus_export.npz"
    np.savez(path, diff3d=counts, xcoords=xs, ycoords=ys, probeGuess=_probe(16),
             objectGuess=np.ones((40, 40), np.complex64))
    scan = pio.read_reference_npz(path, measurement="counts")
    np.testing.assert_array_equal(scan.counts, counts)  # not squared
    np.testing.assert_array_equal(scan.positions_px, np.stack([ys, xs], 1))


def test_describe_cxi(tmp_path: Path) -> None:
    path = tmp_path / "d.cxi"
    _write_foreign_cxi(path)
    lines = describe_hdf5(path)
    assert detect_hdf5_kind(path) == "cxi"
    assert lines[0].endswith("CXI file (cxi_version 150)")
    assert any("(12, 32, 32)" in line for line in lines)
    assert any("6200" in line for line in lines)


# ------------------------------------------------------------------------------------------------
# the experimental Siemens-star scan


@pytest.fixture(scope="module")
def siemens() -> ScanData:
    if not SIEMENS.is_file():
        pytest.skip(f"{SIEMENS} not available (shared data not mounted)")
    return read_tike_siemens_npz_bz2(SIEMENS)


def test_siemens_shapes_and_counts(siemens: ScanData) -> None:
    assert siemens.counts.shape == (516, 128, 128)
    assert siemens.probe.shape == (128, 128)
    assert siemens.counts.min() >= 0
    assert np.array_equal(siemens.counts, np.round(siemens.counts))
    assert siemens.meta["probe_calibrated"] is False
    assert TIKE_COPYRIGHT in siemens.meta["provenance"]


def test_siemens_zero_frequency_at_centre(siemens: ScanData) -> None:
    # a zone-plate probe with a central stop: the mean pattern is a bright ring around a dark
    # centre (so its brightest pixel is on the ring, not at the centre).  After conversion the
    # ring lies around (64, 64); as stored (DC at the corner) it is split over the corners.
    mean = siemens.counts.mean(0, dtype=np.float64)
    r = np.hypot(*(np.indices(mean.shape) - 64.0))
    inner = mean[r < 48].sum() / mean.sum()
    as_stored = np.fft.ifftshift(mean)
    assert inner > 0.95
    assert as_stored[r < 48].sum() / as_stored.sum() < 0.05
    yy, xx = np.indices(mean.shape)
    centroid = np.array([(mean * yy).sum(), (mean * xx).sum()]) / mean.sum()
    assert np.all(np.abs(centroid - 64.0) < 4.0)


def test_siemens_positions(siemens: ScanData) -> None:
    pos = siemens.positions_px
    hy, wx = siemens.object_shape_px
    assert (pos - 64).min() >= 1.0  # +1 px margin
    assert (pos[:, 0] + 64).max() <= hy and (pos[:, 1] + 64).max() <= wx
    d, _ = cKDTree(pos).query(pos, k=2)
    assert 8.0 < np.median(d[:, 1]) < 10.0


def _curl_over_div(pos: np.ndarray, v: np.ndarray, k: int = 20) -> float:
    """rms curl / rms divergence of a vector field ``v (n, 2) (vy, vx)`` sampled at scattered
    points, from a local least-squares linear fit on each point's ``k`` nearest neighbours."""
    _, nb = cKDTree(pos).query(pos, k=k)
    d = pos[nb] - pos[:, None]  # (n, k, 2) offsets (dy, dx)
    a = np.concatenate([np.ones(nb.shape + (1,)), d], axis=2)  # fit v = c + J d
    coef = np.linalg.solve(np.einsum("nki,nkj->nij", a, a), np.einsum("nki,nkc->nic", a, v[nb]))
    dvy_dy, dvy_dx, dvx_dy, dvx_dx = coef[:, 1, 0], coef[:, 2, 0], coef[:, 1, 1], coef[:, 2, 1]
    curl, div = dvx_dy - dvy_dx, dvy_dy + dvx_dx
    return float(np.sqrt(np.mean(curl**2) / np.mean(div**2)))


def test_siemens_column_order_is_y_x(siemens: ScanData) -> None:
    """Differential phase contrast check of the (y, x) column order.

    The centre of mass of each pattern moves with the local phase gradient of the object, so
    as a function of the true probe position it is a gradient field (curl-free).  Swapping the
    position columns (a reflection of the scan) breaks that; so does mirroring one detector axis.
    """
    rows = siemens.counts.sum(2, dtype=np.float64)  # (n, H) projection onto y
    cols = siemens.counts.sum(1, dtype=np.float64)  # (n, W) projection onto x
    axis = np.arange(rows.shape[1], dtype=np.float64)
    com = np.stack([rows @ axis, cols @ axis], 1) / rows.sum(1, keepdims=True)
    com -= com.mean(0)
    pos = siemens.positions_px
    right = _curl_over_div(pos, com)
    swapped = _curl_over_div(pos[:, ::-1], com)
    mirrored = _curl_over_div(pos, com * [1.0, -1.0])
    assert right < 0.5 * swapped
    assert right < 0.5 * mirrored


def test_cxi_negative_counts_name_the_dataset(tmp_path: Path) -> None:
    path = tmp_path / "neg.cxi"
    _write_foreign_cxi(path, layout="data_1")
    with h5py.File(path, "r+") as f:
        frames = f["/entry_1/data_1/data"][()].astype(np.float32)
        frames[2, 7, 7] = -3.0  # not a masked pixel
        del f["/entry_1/data_1/data"]
        f["/entry_1/data_1/data"] = frames
    with pytest.raises(ValueError, match=r"/entry_1/data_1/data: counts: expected values >= 0"):
        read_cxi(path)


# ------------------------------------------------------------------------------------------------
# lazy frames, compression filters, --flip-positions


def test_cxi_frames_read_lazily_equal_the_whole_read(tmp_path: Path) -> None:
    from ptypinn.data import LazyCounts

    path = tmp_path / "lazy.cxi"
    _write_foreign_cxi(path)
    lazy, whole = read_cxi(path, lazy=True), read_cxi(path, lazy=False)
    assert isinstance(lazy.counts, LazyCounts) and isinstance(whole.counts, np.ndarray)
    np.testing.assert_array_equal(lazy.counts[:], whole.counts)
    np.testing.assert_array_equal(lazy.counts[np.array([7, 2, 7])], whole.counts[[7, 2, 7]])
    assert np.all(lazy.counts[:, 4, 4] == 0)  # the sentinel in a bad pixel, zeroed per batch
    assert lazy.photons_per_pattern == pytest.approx(whole.photons_per_pattern)
    # and written back chunk by chunk from lazy counts
    out = tmp_path / "back.cxi"
    write_cxi(out, lazy.replace(meta={k: v for k, v in lazy.meta.items()
                                      if k != "object_pixel_size_m"}))
    np.testing.assert_array_equal(read_cxi(out).counts[:], whole.counts)


def _unavailable_filter_file(path: Path, filter_id: int = 32008) -> None:
    """Frames compressed with a filter this HDF5 cannot apply (chunks written raw)."""
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 150
        d = f.create_dataset("/entry_1/instrument_1/detector_1/data", shape=(2, 8, 8),
                             dtype="f4", chunks=(1, 8, 8), compression=filter_id,
                             allow_unknown_filter=True)
        for i in range(2):
            d.id.write_direct_chunk((i, 0, 0), np.ones((8, 8), "f4").tobytes())
        f["/entry_1/sample_1/geometry_1/translation"] = np.zeros((2, 3))
        f["/entry_1/instrument_1/source_1/illumination"] = np.ones((8, 8), np.complex64)


@pytest.mark.parametrize("lazy", [True, False])
def test_missing_compression_filter_is_named(tmp_path: Path, lazy: bool) -> None:
    path = tmp_path / "bitshuffle.cxi"
    _unavailable_filter_file(path)
    if pio.register_filters() and h5py.h5z.filter_avail(32008):
        pytest.skip("hdf5plugin is installed: the filter is available")
    with pytest.raises(ValueError, match=r"bitshuffle \(HDF5 filter id 32008\).*hdf5plugin"):
        read_cxi(path, object_pixel_size_m=1e-8, lazy=lazy)


def test_hdf5plugin_is_registered_when_installed(monkeypatch) -> None:
    import builtins
    import sys

    real = builtins.__import__

    def no_plugin(name, *a, **k):
        if name == "hdf5plugin":
            raise ImportError("no hdf5plugin")
        return real(name, *a, **k)

    monkeypatch.delitem(sys.modules, "hdf5plugin", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_plugin)
    assert pio.register_filters() is False
    monkeypatch.setattr(builtins, "__import__", real)
    fake = type(sys)("hdf5plugin")
    monkeypatch.setitem(sys.modules, "hdf5plugin", fake)
    assert pio.register_filters() is True


def test_flip_positions_negates_the_translations(tmp_path: Path) -> None:
    path = tmp_path / "flip.cxi"
    ref = _write_foreign_cxi(path)
    plain, flipped = read_cxi(path), pio.read_scan(path, flip_positions=True)
    s0 = np.asarray(plain.meta["positions_shift_px"])
    s1 = np.asarray(flipped.meta["positions_shift_px"])
    np.testing.assert_allclose(flipped.positions_px - s1, -(plain.positions_px - s0), atol=1e-9)
    t, ps = ref["t"], ref["ps"]  # + t: the translations are taken as beam positions
    np.testing.assert_allclose(flipped.positions_px - s1,
                               np.stack([t[:, 1] / ps, t[:, 0] / ps], 1), atol=1e-9)
    np.testing.assert_array_equal(flipped.counts[:], plain.counts[:])
    # other formats: negated and re-framed the same way
    npz = tmp_path / "s.npz"
    pio.write_scan(npz, plain)
    back = pio.read_scan(npz, flip_positions=True)
    d = back.positions_px + plain.positions_px
    np.testing.assert_allclose(d, d[:1].repeat(len(d), 0), atol=1e-9)  # -p + constant
    assert back.object_true is None and back.meta["positions_flipped"] is True


# ------------------------------------------------------------------------------------------------
# ptychodus standard layout: diffraction.h5 + product-in.h5


def _ptychodus_dir(d: Path, scan: ScanData, plain_h5py: bool = False) -> Product:
    """A ptychodus standard-layout directory for ``scan`` (ours, or written with raw h5py as
    ptychodus's ``save_diffraction_data`` lays it out), patterns stored in reverse index order."""
    d.mkdir()
    prod = Product(positions_px=scan.positions_px, probe=scan.probe, object=scan.object_true,
                   object_pixel_size_m=2e-8, photon_energy_eV=8000.0, detector_distance_m=2.0)
    write_product(d / "product-in.h5", prod)
    if plain_h5py:
        order = np.arange(scan.n_patterns)[::-1]
        with h5py.File(d / "diffraction.h5", "w") as f:
            f.create_dataset("indexes", data=order, compression="lzf")
            p = f.create_dataset("patterns", data=np.asarray(scan.counts)[order].astype(np.uint16),
                                 compression="lzf")
            p.attrs["detector_pixel_width_m"] = 75e-6
            p.attrs["detector_pixel_height_m"] = 75e-6
            f.create_dataset("bad_pixels", data=scan.bad_pixels, compression="lzf")
    else:
        pio.write_ptychodus_diffraction(d / "diffraction.h5", scan)
    return prod


@pytest.mark.parametrize("plain_h5py", [True, False])
@pytest.mark.parametrize("lazy", [True, False])
def test_ptychodus_standard_layout(tmp_path: Path, plain_h5py: bool, lazy: bool) -> None:
    scan = _scan()
    _ptychodus_dir(tmp_path / "run", scan, plain_h5py)
    # file order kept; each pattern gets the position of its index
    order = np.arange(scan.n_patterns)[::-1] if plain_h5py else np.arange(scan.n_patterns)
    for where in (tmp_path / "run", tmp_path / "run" / "diffraction.h5"):
        back = pio.read_scan(where, lazy=lazy)
        np.testing.assert_array_equal(back.counts[:], scan.counts[order])
        np.testing.assert_allclose(back.positions_px, scan.positions_px[order], atol=1e-9)
        np.testing.assert_array_equal(back.bad_pixels, scan.bad_pixels)
        np.testing.assert_array_equal(back.object_guess, scan.object_true)
        assert back.object_true is None and back.meta["photon_energy_eV"] == 8000.0
        assert back.meta["detector_pixel_size_m"] == (75e-6 if plain_h5py else
                                                     scan.meta["detector_pixel_size_m"])


def test_ptychodus_diffraction_layout_with_plain_h5py(tmp_path: Path) -> None:
    scan = _scan()
    pio.write_ptychodus_diffraction(tmp_path / "diffraction.h5", scan)
    with h5py.File(tmp_path / "diffraction.h5", "r") as f:
        assert f["patterns"].shape == scan.counts.shape
        np.testing.assert_array_equal(f["patterns"][()], scan.counts)
        np.testing.assert_array_equal(f["indexes"][()], np.arange(scan.n_patterns))
        np.testing.assert_array_equal(f["bad_pixels"][()], scan.bad_pixels)
        assert f["patterns"].attrs["detector_pixel_width_m"] == 75e-6


def test_ptychodus_layout_errors(tmp_path: Path) -> None:
    scan = _scan()
    d = tmp_path / "run"
    _ptychodus_dir(d, scan)
    (d / "product-in.h5").rename(tmp_path / "elsewhere.h5")
    with pytest.raises(ValueError, match="product.h5 or product-in.h5 or product-out.h5"):
        pio.read_scan(d)
    (tmp_path / "elsewhere.h5").rename(d / "product-in.h5")
    with h5py.File(d / "diffraction.h5", "r+") as f:
        f["indexes"][0] = 99
    with pytest.raises(ValueError, match="no position for pattern index 99"):
        pio.read_scan(d)


def test_info_describes_the_ptychodus_layout(tmp_path: Path, capsys) -> None:
    from ptypinn.cli import main

    _ptychodus_dir(tmp_path / "run", _scan())
    for where in (tmp_path / "run", tmp_path / "run" / "diffraction.h5"):
        assert main(["info", str(where)]) == 0
        out = capsys.readouterr().out
        assert "ptychodus" in out and "patterns: 5" in out
