"""``ptypinn info`` streams the patterns (issue 17 item 6): same numbers, bounded memory."""

from __future__ import annotations

import io as stdio
import tracemalloc
import zipfile

import numpy as np
import pytest

from ptypinn import io
from ptypinn.cli import main
from ptypinn.config import SimulationConfig
from ptypinn.data import ScanSummary, count_statistics, iter_chunks
from ptypinn.simulate import simulate_scan
from ptypinn.workflows.describe import describe_path, describe_scan, describe_summary


@pytest.fixture(scope="module")
def scan():
    cfg = SimulationConfig(object_kind="lines", object_size_px=48, probe_size_px=32,
                           probe_radius_px=8.0, scan_step_px=4.0, photons_per_pattern=1e6, seed=3)
    return simulate_scan(cfg)


def _canonical(scan, path, compress):
    (np.savez_compressed if compress else np.savez)(
        path, counts=scan.counts, positions_px=scan.positions_px, probe=scan.probe,
        object_true=scan.object_true, meta=np.array("{}"), format=np.array(io.SCAN_FORMAT))


def _reference(scan, path, compress, amplitude, label):
    diff = np.sqrt(scan.counts) if amplitude else np.round(scan.counts)
    arrays = {"diffraction": diff, "xcoords": scan.positions_px[:, 1],
              "ycoords": scan.positions_px[:, 0], "probeGuess": scan.probe}
    if label:
        arrays["measurement"] = np.array("amplitude" if amplitude else "counts")
    (np.savez_compressed if compress else np.savez)(path, **arrays)


def _same(path, measurement=None):
    """Streamed summary (odd chunk size) == summary of the whole scan read by read_scan."""
    whole = io.read_scan(path, measurement=measurement)
    streamed = io.read_scan_summary(path, measurement=measurement, patterns=7)
    assert streamed.counts.shape == whole.counts.shape
    np.testing.assert_array_equal(streamed.counts.totals,
                                  whole.counts.sum(axis=(1, 2), dtype=np.float64))
    assert streamed.counts.photons_per_pattern == pytest.approx(whole.photons_per_pattern,
                                                                rel=1e-12)
    np.testing.assert_array_equal(streamed.positions_px, whole.positions_px)
    assert streamed.meta == whole.meta
    assert describe_summary(streamed) == describe_scan(whole)
    return streamed


@pytest.mark.parametrize("compress", [False, True])
def test_canonical_npz_streamed_equals_whole(scan, tmp_path, compress):
    p = tmp_path / "scan.npz"
    _canonical(scan, p, compress)
    s = _same(p)
    assert s.counts.shape[0] == scan.n_patterns > 7
    np.testing.assert_array_equal(s.object_true, scan.object_true)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("amplitude,label", [(True, False), (True, True), (False, False)])
def test_reference_npz_streamed_equals_whole(scan, tmp_path, compress, amplitude, label):
    p = tmp_path / "ref.npz"
    _reference(scan, p, compress, amplitude, label)
    s = _same(p)
    assert s.meta["measurement"] == ("amplitude" if amplitude else "counts")
    _same(p, measurement="counts")


def test_cxi_statistics_streamed_equal_whole(scan, tmp_path):
    """``info`` on a CXI file reads the frames by slices; same numbers as the whole scan."""
    geo = scan.replace(meta={**scan.meta, "photon_energy_eV": 8000.0,
                             "detector_distance_m": 2.0, "detector_pixel_size_m": 75e-6})
    p = tmp_path / "scan.cxi"
    io.write_cxi(p, geo)
    whole = io.read_scan(p)
    _same(p)
    lines = describe_path(p)
    expected = ScanSummary.from_scan(whole).counts
    line = next(ln for ln in lines if ln.startswith("photons per pattern"))
    assert line.startswith(f"photons per pattern: {expected.photons_per_pattern:.4g} measured "
                           f"(min {expected.totals.min():.4g}, max "
                           f"{expected.totals.max():.4g})"), line


def test_count_statistics_chunking_does_not_change_numbers(scan):
    one = count_statistics([scan.counts])
    for k in (1, 5, 64, 1000):
        other = count_statistics(iter_chunks(scan.counts, k))
        np.testing.assert_array_equal(other.totals, one.totals)
        assert other.integer_valued == one.integer_valued
        assert other.shape == one.shape == scan.counts.shape
    np.testing.assert_allclose(one.totals, scan.counts.astype(np.float64).sum(axis=(1, 2)),
                               rtol=1e-12)
    assert ScanSummary.from_scan(scan).counts.photons_per_pattern == pytest.approx(
        scan.photons_per_pattern, rel=1e-12)


@pytest.mark.parametrize("compress", [False, True])
def test_streaming_memory_is_bounded(tmp_path, compress):
    """A 32 MB deflated file of zeros is summarized with a few MB of allocations at most,
    while reading it whole needs all 32 MB."""
    n, size = 2048, 64
    pos = np.stack(np.meshgrid(np.arange(45) * 2.0 + 40, np.arange(46) * 2.0 + 40),
                   -1).reshape(-1, 2)[:n]
    probe = np.ones((size, size), np.complex64)
    p = tmp_path / "zeros.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        with zf.open("counts.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<f4", "fortran_order": False, "shape": (n, size, size)})
            block = np.zeros((256, size, size), np.float32).tobytes()
            for _ in range(n // 256):
                fh.write(block)
        for k, v in (("positions_px", pos), ("probe", probe)):
            b = stdio.BytesIO()
            np.save(b, v)
            zf.writestr(f"{k}.npy", b.getvalue())
    array_bytes = n * size * size * 4
    tracemalloc.start()
    try:
        s = io.read_scan_summary(p, patterns=64)
        streamed_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        io.read_scan(p)
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert s.counts.shape == (n, size, size) and s.counts.photons_per_pattern == 0.0
    assert streamed_peak < array_bytes / 8, (streamed_peak, array_bytes)
    assert whole_peak > array_bytes, (whole_peak, array_bytes)


def test_truncated_streamed_member_is_one_line(scan, tmp_path, capsys):
    """A counts member that declares more patterns than it holds: exit 2, one line."""
    p = tmp_path / "short.npz"
    _canonical(scan, p, compress=True)
    with zipfile.ZipFile(p) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    body = members["counts.npy"]
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, v in members.items():
            zf.writestr(k, v[: len(v) - 4096] if k == "counts.npy" else v)
    assert len(body) > 4096
    rc = main(["info", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "short.npz" in lines[0] and "counts" in lines[0], err
    assert "truncated" in lines[0]
    with pytest.raises(ValueError, match="truncated"):
        describe_path(p)


@pytest.mark.parametrize("fmt", ["canonical", "reference"])
def test_declared_size_over_memory_still_refused(scan, tmp_path, capsys, monkeypatch, fmt):
    """Streaming does not bypass the check of the declared sizes against the memory."""
    p = tmp_path / f"{fmt}.npz"
    if fmt == "canonical":
        _canonical(scan, p, compress=True)
    else:
        _reference(scan, p, compress=True, amplitude=True, label=True)
    assert main(["info", str(p)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("ptypinn.io.files.available_memory_bytes", lambda: 1000)
    rc = main(["info", str(p)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2 and len(lines) == 1 and "memory" in lines[0] and p.name in lines[0], err
