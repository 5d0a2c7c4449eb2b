"""Output formats (``--format npz,product,cxi,tiff``), every arm of ``compare`` saved, run
provenance in every output, and quiet output when not on a terminal.

The product layout is checked with plain h5py against what ptychodus's reader
(``ptychodus/plugins/h5_product_file.py``, ``api/probe.py``, ``api/object.py``) requires,
independently of our reader; the TIFFs with tifffile directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from ptypinn import io
from ptypinn.cli import main
from ptypinn.config import Config, ModelConfig, from_dict
from ptypinn.pinn.bundle import Bundle, save_bundle
from ptypinn.pinn.models import build_model
from ptypinn.provenance import provenance_line, run_provenance
from ptypinn.workflows.compare import ArmResult, arm_file_stem, compare, footprint_mask
from ptypinn.workflows.outputs import (check_formats, object_pixel_size_m, parse_formats,
                                       write_result_files)

GEOMETRY = {"photon_energy_eV": 8000.0, "detector_distance_m": 2.0,
            "detector_pixel_size_m": 75e-6}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def measured(tiny_pair):
    """The tiny test scan with a beamline geometry (as a measured scan has), no truth."""
    scan = tiny_pair[1]
    return scan.replace(meta={**scan.meta, **GEOMETRY}, object_true=None)


@pytest.fixture(scope="module")
def result(measured):
    """A reconstruction-like result: object, covered region, probe, shifted positions."""
    rng = np.random.default_rng(3)
    shape = measured.object_shape_px
    obj = ((0.5 + 0.5 * rng.random(shape)) * np.exp(1j * rng.uniform(-3, 3, shape))
           ).astype(np.complex64)
    covered = footprint_mask(measured)
    positions = measured.positions_px + rng.uniform(-0.4, 0.4, measured.positions_px.shape)
    return obj, covered, measured.probe, positions


def _write_all(measured, result, out, prov):
    obj, covered, probe, positions = result
    return write_result_files(out, "rec", measured, obj, covered, probe, positions,
                              ("npz", "product", "cxi", "tiff"), arrays={"extra": np.arange(3)},
                              metadata={"provenance": prov}, loss=[(0, 2.5), (5, 1.25)])


def test_parse_formats():
    assert parse_formats("npz") == ("npz",)
    assert parse_formats(" tiff,NPZ,tiff , product") == ("tiff", "npz", "product")
    for bad in ("", "npz,png", "hdf5"):
        with pytest.raises(ValueError, match="--format: expected a comma-separated list"):
            parse_formats(bad)


def test_formats_needing_geometry_are_refused_up_front(tiny_pair, measured):
    sim = tiny_pair[1]  # simulated: no physical scale
    check_formats(("npz", "tiff"), sim)
    with pytest.raises(ValueError, match="--format product: expected the scan's object pixel"):
        check_formats(("product",), sim)
    with pytest.raises(ValueError, match="--format cxi: expected the scan's photon_energy_eV"):
        check_formats(("npz", "cxi"), sim)
    check_formats(("npz", "product", "cxi", "tiff"), measured)
    lam = 6.62607015e-34 * 299792458.0 / (8000.0 * 1.602176634e-19)
    assert object_pixel_size_m(measured) == pytest.approx(lam * 2.0 / (32 * 75e-6), rel=1e-12)


def test_every_format_round_trips(measured, result, tmp_path):
    obj, covered, probe, positions = result
    prov = run_provenance(Config(), argv=["ptypinn", "infer", "x"])
    files = _write_all(measured, result, tmp_path, prov)
    assert files == ["rec.npz", "rec.product.h5", "rec.cxi", "rec_amplitude.tif",
                     "rec_phase.tif"]
    ps = object_pixel_size_m(measured)

    z = io.load_npz(tmp_path / "rec.npz")
    np.testing.assert_array_equal(z["object"], obj)
    np.testing.assert_array_equal(z["covered"], covered)
    np.testing.assert_array_equal(z["probe"], probe)
    np.testing.assert_array_equal(z["positions_px"], positions)
    np.testing.assert_array_equal(z["extra"], np.arange(3))
    assert json.loads(str(z["metadata_json"]))["provenance"] == json.loads(json.dumps(prov))

    p = io.read_product(tmp_path / "rec.product.h5")
    np.testing.assert_array_equal(p.object, obj)
    np.testing.assert_array_equal(p.probe, probe.reshape(-1, *probe.shape[-2:]))
    np.testing.assert_allclose(p.positions_px, positions, atol=1e-9)
    assert p.object_pixel_size_m == pytest.approx(ps, rel=1e-12)
    assert p.photon_energy_eV == 8000.0 and p.detector_distance_m == 2.0
    assert (p.loss_epochs, p.loss_history) == ([0, 5], [2.5, 1.25])
    np.testing.assert_array_equal(p.opr_weights, np.ones((measured.n_patterns, 1)))
    assert p.metadata["provenance"]["config"] == prov["config"]

    c = io.read_cxi(tmp_path / "rec.cxi")
    np.testing.assert_allclose(c.positions_px, positions, atol=1e-9)
    np.testing.assert_array_equal(c.probe, probe)
    np.testing.assert_array_equal(c.counts, measured.counts)
    with h5py.File(tmp_path / "rec.cxi", "r") as f:
        np.testing.assert_array_equal(f["/entry_1/image_1/data"][()], obj)
        assert f["/entry_1/image_1/data_type"][()].decode() == "object"
        assert f["/entry_1/image_1/x_pixel_size"][()] == pytest.approx(ps, rel=1e-12)
        meta = json.loads(f["/entry_1/ptypinn/metadata_json"][()])
        assert meta["provenance"]["torch"] == prov["torch"]

    for quantity, expected in (("amplitude", np.abs(obj)), ("phase", np.angle(obj))):
        img, meta = io.read_tiff(tmp_path / f"rec_{quantity}.tif")
        assert img.dtype == np.float32 and img.shape == obj.shape
        np.testing.assert_array_equal(img[covered], expected[covered].astype(np.float32))
        assert np.isnan(img[~covered]).all()
        assert meta["quantity"] == quantity and meta["provenance"]["git"] == prov["git"]


def test_tiff_is_plain_32_bit_float_with_pixel_size(measured, result, tmp_path):
    """Read with tifffile directly: one float32 page, resolution in pixels per centimetre."""
    _write_all(measured, result, tmp_path, None)
    with tifffile.TiffFile(tmp_path / "rec_phase.tif") as tif:
        page = tif.pages[0]
        assert len(tif.pages) == 1 and page.dtype == np.float32
        assert page.tags["SampleFormat"].value == 3  # IEEE floating point
        assert page.tags["BitsPerSample"].value == 32
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e-2 / object_pixel_size_m(measured),
                                                    rel=1e-6)
        assert json.loads(page.description)["unit"] == "rad"


def test_product_layout_as_ptychodus_reads_it(measured, result, tmp_path):
    """Plain h5py, following ptychodus's H5ProductFileIO.read (independent of read_product)."""
    obj, covered, probe, positions = result
    _write_all(measured, result, tmp_path, None)
    ps = object_pixel_size_m(measured)
    n = measured.n_patterns
    with h5py.File(tmp_path / "rec.product.h5", "r") as f:
        for k in ("name", "comments", "detector_object_distance_m", "probe_energy_eV",
                  "exposure_time_s", "probe_photon_count", "mass_attenuation_m2_kg",
                  "tomography_angle_deg"):
            assert k in f.attrs, k
        assert float(f.attrs["probe_energy_eV"]) == 8000.0
        assert float(f.attrs["detector_object_distance_m"]) == 2.0
        idx = f["probe_position_indexes"][()]
        x_m, y_m = f["probe_position_x_m"][()], f["probe_position_y_m"][()]
        assert idx.tolist() == list(range(n)) and x_m.shape == y_m.shape == (n,)
        h5_probe = f["probe"]
        arr = h5_probe[()]
        assert np.iscomplexobj(arr) and arr.ndim in (2, 3, 4)
        n_opr = arr.shape[0] if arr.ndim == 4 else 1  # ptychodus prepends the OPR axis
        opr = h5_probe.attrs["opr_weights"]  # where ptychodus's reader looks
        assert np.issubdtype(opr.dtype, np.floating) and opr.shape == (n, n_opr)
        np.testing.assert_array_equal(f["opr_weights"][()], opr)  # where its writer puts it
        assert float(h5_probe.attrs["pixel_width_m"]) == pytest.approx(ps, rel=1e-12)
        assert float(h5_probe.attrs["pixel_height_m"]) == pytest.approx(ps, rel=1e-12)
        h5_obj = f["object"]
        o = h5_obj[()]
        assert np.iscomplexobj(o) and o.ndim in (2, 3)
        layers = 1 if o.ndim == 2 else o.shape[0]
        assert len(f["object_layer_spacing_m"][()]) == layers - 1
        cx, cy = float(h5_obj.attrs["center_x_m"]), float(h5_obj.attrs["center_y_m"])
        pw, ph = float(h5_obj.attrs["pixel_width_m"]), float(h5_obj.attrs["pixel_height_m"])
        assert pw == pytest.approx(ps, rel=1e-12) and ph == pytest.approx(ps, rel=1e-12)
        # ptychodus's ObjectGeometry: pixel = (metres - centre) / pixel size + size / 2
        hy, wx = o.shape[-2:]
        np.testing.assert_allclose((x_m - cx) / pw + wx / 2, positions[:, 1], atol=1e-9)
        np.testing.assert_allclose((y_m - cy) / ph + hy / 2, positions[:, 0], atol=1e-9)
        assert f["loss_values"][()].tolist() == [2.5, 1.25]
        assert f["loss_epochs"][()].tolist() == [0, 5]


def test_compare_saves_every_arm(measured, result, tmp_path):
    obj, covered, probe, positions = result
    refined_probe = (probe * 1.1).astype(np.complex64)
    arms = [ArmResult(name="PINN", object=obj, covered=covered, wall_time_s=1.0,
                      patterns_per_s=10.0, nll_per_pixel=0.6),
            ArmResult(name="PINN+refine", object=obj * 0.9, covered=covered, wall_time_s=2.0,
                      patterns_per_s=5.0, nll_per_pixel=0.55, probe=refined_probe,
                      positions_px=positions, loss=[(0, 0.6), (5, 0.55)])]
    prov = {"ptypinn": "test"}
    summary = compare(measured, arms, tmp_path, formats=("product", "tiff"), provenance=prov)
    assert arm_file_stem("refine from flat") == "refine_from_flat"
    for stem in ("PINN", "PINN_refine"):
        for suffix in (".npz", ".product.h5", "_amplitude.tif", "_phase.tif"):
            assert f"arms/{stem}{suffix}" in summary["files"]
            assert (tmp_path / "arms" / f"{stem}{suffix}").is_file()
    z = io.load_npz(tmp_path / "arms" / "PINN.npz")
    np.testing.assert_array_equal(z["probe"], measured.probe)
    np.testing.assert_array_equal(z["positions_px"], measured.positions_px)
    np.testing.assert_array_equal(z["object"], obj)
    r = io.load_npz(tmp_path / "arms" / "PINN_refine.npz")
    np.testing.assert_array_equal(r["probe"], refined_probe)
    np.testing.assert_array_equal(r["positions_px"], positions)
    assert json.loads(str(r["metadata_json"]))["arm"] == "PINN+refine"
    p = io.read_product(tmp_path / "arms" / "PINN_refine.product.h5")
    assert p.loss_history == [0.6, 0.55]
    assert json.loads((tmp_path / "metrics.json").read_text())["provenance"] == prov


def test_provenance_record():
    prov = run_provenance(Config(), argv=["ptypinn", "demo"])
    import torch

    from ptypinn import __version__

    assert (prov["ptypinn"], prov["torch"], prov["cuda"]) == (__version__, torch.__version__,
                                                              torch.version.cuda)
    assert prov["command_line"] == ["ptypinn", "demo"]
    assert prov["config"]["train"]["epochs"] == Config().train.epochs
    assert prov["device"]["cuda_available"] == torch.cuda.is_available()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True)
    if head.returncode == 0:  # a source checkout: the commit is recorded
        assert prov["git"]["commit"] == head.stdout.strip()
    json.dumps(prov)  # JSON-friendly
    line = provenance_line(prov)
    assert f"torch {torch.__version__}" in line and "command: ptypinn demo" in line


def _bundle(path, size):
    import torch

    torch.manual_seed(0)
    probe = torch.ones(size, size, dtype=torch.complex64)
    model = build_model(ModelConfig(width=8, depth=2), probe, 1)
    save_bundle(path, Bundle.create(model, from_dict(Config, {"model": {"width": 8,
                                                                        "depth": 2}})))


def test_cli_infer_formats_and_provenance(measured, tmp_path, capsys):
    io.write_scan(tmp_path / "scan.npz", measured)
    _bundle(tmp_path / "b", 32)
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "b"), "--scan", str(tmp_path / "scan.npz"), "-o",
                 str(out), "--format", "npz,product,cxi,tiff",
                 "--set", "infer.batch_size=96"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for name in ("reconstruction.npz", "reconstruction.product.h5", "reconstruction.cxi",
                 "reconstruction_amplitude.tif", "reconstruction_phase.tif"):
        assert name in summary["files"] and (out / name).is_file(), name
    assert summary["provenance"]["config"]["infer"]["batch_size"] == 96  # the resolved config
    assert summary["provenance"]["command_line"] == sys.argv  # main() was given argv directly
    log = (out / "ptypinn.log").read_text()
    assert "provenance: ptypinn" in log and '"config":' in log  # full record in the file
    assert io.read_product(out / "reconstruction.product.h5").metadata["provenance"]["torch"]

    capsys.readouterr()
    sim = tmp_path / "sim.npz"
    io.write_scan(sim, measured.replace(meta={}))
    for argv, needle in (([str(tmp_path / "scan.npz"), "--format", "npz,png"], "--format"),
                         ([str(sim), "--format", "product"], "object pixel size")):
        assert main(["infer", str(tmp_path / "b"), "--scan", argv[0], "-o",
                     str(tmp_path / "bad"), *argv[1:]]) == 2
        # one error line (the scale rule's log lines and the untrained bundle's mismatch
        # warning may precede it)
        err = [e for e in capsys.readouterr().err.strip().splitlines()
               if " INFO " not in e and " WARNING " not in e]
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "bad").exists()  # refused before anything was computed or written


def test_redirected_output_has_no_progress_fragments(tmp_path):
    """``ptypinn demo > log`` (stdout and stderr to files): no carriage returns, no bars."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stdout", "wb") as so, open(tmp_path / "stderr", "wb") as se:
        proc = subprocess.run([sys.executable, "-m", "ptypinn.cli", "demo", "--quick", "-o",
                               str(tmp_path / "demo"), "--set", "train.progress_bar=true"],
                              stdout=so, stderr=se, env=env, timeout=600)
    out = (tmp_path / "stdout").read_bytes() + (tmp_path / "stderr").read_bytes()
    assert proc.returncode == 0, out[-2000:]
    assert b"\r" not in out
    assert b"ptypinn demo" in out


def test_product_with_many_positions(tmp_path):
    """opr_weights of a large scan exceed HDF5's 64 kB compact-attribute limit."""
    n = 20000
    rng = np.random.default_rng(0)
    pos = rng.uniform(9, 55, (n, 2))
    prod = io.Product(positions_px=pos, probe=np.ones((16, 16), np.complex64),
                      object=np.ones((64, 64), np.complex64), object_pixel_size_m=1e-8)
    io.write_product(tmp_path / "big.h5", prod)
    with h5py.File(tmp_path / "big.h5", "r") as f:
        assert f["probe"].attrs["opr_weights"].shape == (n, 1)  # 160 kB
    back = io.read_product(tmp_path / "big.h5")
    np.testing.assert_allclose(back.positions_px, pos, atol=1e-9)
    assert back.opr_weights.shape == (n, 1)
