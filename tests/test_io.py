"""io: canonical NPZ round trip, the reference NPZ contract, and bad files."""

import logging

import numpy as np
import pytest

from ptypinn import io
from ptypinn.data import ScanData


@pytest.fixture
def scan():
    g = np.random.default_rng(0)
    obj = (g.uniform(0.5, 1, (24, 24)) * np.exp(1j * g.uniform(-1, 1, (24, 24)))).astype(np.complex64)
    return ScanData(counts=g.poisson(50, (4, 8, 8)).astype(np.float32),
                    positions_px=np.array([[6.0, 6.0], [10.5, 7.25], [12, 14], [16, 16]]),
                    probe=(g.normal(size=(2, 8, 8)) + 1j).astype(np.complex64),
                    object_true=obj, bad_pixels=np.eye(8, dtype=bool),
                    meta={"seed": 3, "photons_per_pattern": 3200.0})


def test_canonical_round_trip(tmp_path, scan):
    p = tmp_path / "s.npz"
    io.write_scan(p, scan)
    back = io.read_scan(p)
    for k in ("counts", "positions_px", "probe", "object_true", "bad_pixels"):
        np.testing.assert_array_equal(getattr(back, k), getattr(scan, k))
    assert back.meta == scan.meta
    assert back.object_guess is None
    assert list(tmp_path.iterdir()) == [p]  # no temporary files left


def _reference(tmp_path, scan, amplitude=True, layout="nhw", name="ref.npz", **extra):
    d = np.sqrt(scan.counts) if amplitude else scan.counts
    if layout == "hwn":
        d = np.moveaxis(d, 0, -1)
    np.savez(tmp_path / name, diffraction=d, xcoords=scan.positions_px[:, 1],
             ycoords=scan.positions_px[:, 0], probeGuess=scan.probe[0],
             objectGuess=scan.object_true, **extra)
    return tmp_path / name


def test_reference_npz_amplitude_explicit(tmp_path, scan):
    p = _reference(tmp_path, scan)
    s = io.read_scan(p, measurement="amplitude")
    np.testing.assert_allclose(s.counts, scan.counts, rtol=1e-5)
    np.testing.assert_array_equal(s.positions_px, scan.positions_px)
    assert s.object_guess.shape == (24, 24) and s.meta["measurement"] == "amplitude"


def test_reference_npz_heuristic_warns(tmp_path, scan, caplog):
    with caplog.at_level(logging.WARNING, logger="ptypinn"):
        s = io.read_scan(_reference(tmp_path, scan, amplitude=False, name="i.npz"))
    assert s.meta["measurement"] == "counts" and "treating it as counts" in caplog.text
    np.testing.assert_array_equal(s.counts, scan.counts)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ptypinn"):
        s = io.read_scan(_reference(tmp_path, scan, amplitude=True, name="a.npz"))
    assert s.meta["measurement"] == "amplitude" and "treating it as amplitude" in caplog.text


def test_reference_npz_legacy_layout_transposed(tmp_path, scan, caplog):
    with caplog.at_level(logging.WARNING, logger="ptypinn"):
        s = io.read_scan(_reference(tmp_path, scan, layout="hwn"), measurement="amplitude")
    assert s.counts.shape == (4, 8, 8) and "legacy layout" in caplog.text
    np.testing.assert_allclose(s.counts, scan.counts, rtol=1e-5)


def test_reference_npz_label_in_file(tmp_path, scan):
    p = _reference(tmp_path, scan, amplitude=False, measurement=np.array("counts"))
    assert io.read_scan(p).meta["measurement"] == "counts"


def test_truncated_and_corrupt_npz(tmp_path, scan):
    p = tmp_path / "s.npz"
    io.write_scan(p, scan)
    data = p.read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t.npz"):
        io.read_scan(tmp_path / "t.npz")
    (tmp_path / "c.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="c.npz"):
        io.read_scan(tmp_path / "c.npz")
    with pytest.raises(FileNotFoundError):
        io.read_scan(tmp_path / "missing.npz")


def test_pickled_object_array_refused(tmp_path, scan):
    p = tmp_path / "evil.npz"
    np.savez(p, counts=scan.counts, positions_px=scan.positions_px, probe=scan.probe,
             meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="key 'meta' holds pickled"):
        io.read_scan(p)
    with pytest.raises(ValueError, match="object array"):
        io.save_npz(tmp_path / "x.npz", {"a": np.array([{}], dtype=object)})
    assert not (tmp_path / "x.npz").exists()


def test_missing_key_and_bad_values_name_them(tmp_path, scan):
    p = tmp_path / "m.npz"
    np.savez(p, counts=scan.counts, probe=scan.probe)
    with pytest.raises(ValueError, match="positions_px"):
        io.read_scan(p)
    np.savez(p, counts=-scan.counts, positions_px=scan.positions_px, probe=scan.probe)
    with pytest.raises(ValueError, match="m.npz: counts: expected values >= 0"):
        io.read_scan(p)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# lazy NPZ counts, ground truth and bad pixels of reference files


def test_stored_npz_counts_read_lazily(tmp_path, scan):
    from ptypinn.data import LazyCounts

    p = tmp_path / "s.npz"
    io.write_scan(p, scan)
    lazy, whole = io.read_scan(p, lazy=True), io.read_scan(p, lazy=False)
    assert isinstance(lazy.counts, LazyCounts) and isinstance(whole.counts, np.ndarray)
    np.testing.assert_array_equal(lazy.counts[:], scan.counts)
    np.testing.assert_array_equal(lazy.counts[np.array([3, 0, 3])], scan.counts[[3, 0, 3]])
    assert io.read_scan(p).counts.__class__ is np.ndarray  # small: read whole by default
    z = tmp_path / "deflated.npz"
    io.save_npz(z, {"format": np.array(io.SCAN_FORMAT), "counts": scan.counts,
                    "positions_px": scan.positions_px, "probe": scan.probe}, compress=True)
    assert isinstance(io.read_scan(z, lazy=True).counts, np.ndarray)  # cannot be mapped


def _ref_file(path, amplitude, obj, **extra):
    g = np.random.default_rng(2)
    counts = g.poisson(30, (5, 8, 8)).astype(np.float32)
    diff = np.sqrt(counts) if amplitude else counts
    np.savez(path, diff3d=diff.astype(np.float32), xcoords=np.linspace(6, 14, 5),
             ycoords=np.linspace(7, 12, 5), probeGuess=np.ones((8, 8), np.complex64),
             objectGuess=obj, **extra)
    return counts


@pytest.mark.parametrize("amplitude", [True, False])
@pytest.mark.parametrize("labelled", [True, False])
def test_reference_npz_lazy_equals_whole(tmp_path, amplitude, labelled):
    obj = np.ones((24, 24), np.complex64)
    p = tmp_path / "ref.npz"
    counts = _ref_file(p, amplitude, obj)
    m = ("amplitude" if amplitude else "counts") if labelled else None
    lazy = io.read_scan(p, measurement=m, lazy=True)
    whole = io.read_scan(p, measurement=m, lazy=False)
    assert lazy.meta["measurement"] == whole.meta["measurement"]
    assert whole.counts.dtype == np.float32
    np.testing.assert_array_equal(lazy.counts[:], whole.counts)
    np.testing.assert_allclose(whole.counts, counts, rtol=1e-6)


def test_reference_npz_negative_amplitude_named_when_lazy(tmp_path):
    p = tmp_path / "neg.npz"
    diff = np.ones((5, 8, 8), np.float32)
    diff[3, 1, 1] = -2
    np.savez(p, diff3d=diff, xcoords=np.linspace(6, 14, 5), ycoords=np.linspace(7, 12, 5),
             probeGuess=np.ones((8, 8), np.complex64))
    with pytest.raises(ValueError, match=r"'diff3d': expected amplitude >= 0, got -2 in pattern 3"):
        io.read_scan(p, measurement="amplitude", lazy=True)


def test_reference_npz_truth_and_bad_pixels(tmp_path):
    g = np.random.default_rng(4)
    obj = np.exp(1j * g.uniform(-1, 1, (24, 24))).astype(np.complex64)
    bad = np.zeros((8, 8), np.uint8)
    bad[2, 3] = 1
    p = tmp_path / "ref.npz"
    _ref_file(p, False, obj, bad_pixels=bad)
    guess = io.read_scan(p, measurement="counts")
    assert guess.object_true is None
    np.testing.assert_array_equal(guess.object_guess, obj)
    np.testing.assert_array_equal(guess.bad_pixels, bad != 0)  # no longer dropped
    truth = io.read_scan(p, measurement="counts", truth="objectGuess")
    assert truth.object_guess is None
    np.testing.assert_array_equal(truth.object_true, obj)
    assert "objectGuess" in truth.meta["object_true_source"]
    with pytest.raises(ValueError, match="truth: expected one of"):
        io.read_scan(p, measurement="counts", truth="Y")
    io.write_scan(tmp_path / "ours.npz", truth)
    with pytest.raises(ValueError, match="only reference"):
        io.read_scan(tmp_path / "ours.npz", truth="objectGuess")
    np.savez(tmp_path / "noobj.npz", diff3d=np.ones((5, 8, 8), np.float32),
             xcoords=np.linspace(6, 14, 5), ycoords=np.linspace(7, 12, 5),
             probeGuess=np.ones((8, 8), np.complex64))
    with pytest.raises(ValueError, match="no 'objectGuess' array"):
        io.read_scan(tmp_path / "noobj.npz", measurement="counts", truth="objectGuess")
