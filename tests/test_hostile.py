"""Hostile and careless input: every case is refused with exit status 2 and one line naming the
file and the key, no traceback, nothing read outside the input, no existing output changed.

The hostile files are built here with numpy and h5py from one tiny simulated scan; only the
bundle/checkpoint fixture and the resume and divergence checks train (one epoch each).
"""

from __future__ import annotations

import errno
import hashlib
import io as stdio
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ptypinn import io
from ptypinn.cli import main
from ptypinn.config import SimulationConfig
from ptypinn.simulate import simulate_scan

TINY = ["--set", "model.width=4", "--set", "model.depth=2", "--set", "train.epochs=1",
        "--set", "train.progress_bar=false", "--set", "train.batch_size=8",
        "--set", "train.val_fraction=0"]
NO_CUDA = not torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------
# helpers


def refused(capsys, argv, *needles, code=2):
    """Run the CLI; assert exit ``code``, one ``error:`` line holding every needle, no
    traceback; return the line."""
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = [ln for ln in captured.err.strip().splitlines() if "error:" in ln or "diverged" in ln]
    assert rc == code, captured.err
    assert len(lines) == 1, captured.err
    for n in needles:
        assert str(n) in lines[0], lines[0]
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under ``root`` (or of ``root`` itself)."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _tiny_scan():
    cfg = SimulationConfig(object_kind="lines", object_size_px=48, probe_size_px=32,
                           probe_radius_px=8.0, scan_step_px=4.0, photons_per_pattern=1e6, seed=3)
    return simulate_scan(cfg)


@pytest.fixture(scope="module")
def scan():
    return _tiny_scan()


@pytest.fixture(scope="module")
def good(tmp_path_factory, scan):
    """Valid files of every format: scan.npz, ref.npz, scan.cxi, product.h5."""
    d = tmp_path_factory.mktemp("good")
    io.write_scan(d / "scan.npz", scan)
    scan_geo = scan.replace(meta={**scan.meta, "photon_energy_eV": 8000.0,
                                  "detector_distance_m": 2.0, "detector_pixel_size_m": 75e-6})
    scan_geo = scan_geo.replace(meta={k: v for k, v in scan_geo.meta.items()
                                      if k != "object_pixel_size_m"})
    io.write_cxi(d / "scan.cxi", scan_geo)
    io.write_product(d / "product.h5", io.Product(
        positions_px=scan.positions_px, probe=scan.probe, object=scan.object_true,
        object_pixel_size_m=1e-8))
    return d


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, good):
    """A trained run (one epoch, tiny network): bundle/, checkpoints/, logs/metrics.csv."""
    d = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--train", str(good / "scan.npz"), "-o", str(d), *TINY]) == 0
    assert (d / "bundle" / "manifest.json").is_file() and (d / "checkpoints" / "last.ckpt").is_file()
    return d


# ------------------------------------------------------------------------------------------------
# canonical NPZ


def _npz_arrays(scan):
    return {"format": np.array("ptypinn-scan/1"), "counts": scan.counts,
            "positions_px": scan.positions_px, "probe": scan.probe,
            "meta": np.array(json.dumps({"seed": 3}))}


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


NPZ_CASES = {
    "meta_list": (lambda a: {**a, "meta": np.array("[1, 2]")}, "meta"),
    "meta_not_json": (lambda a: {**a, "meta": np.array("{oops")}, "meta"),
    "meta_string": (lambda a: {**a, "meta": np.array('"text"')}, "meta"),
    "no_counts_but_diffraction_none": (lambda a: _without(_without(a, "counts"), "format"),
                                       "counts"),
    "no_positions": (lambda a: _without(a, "positions_px"), "positions_px"),
    "counts_2d": (lambda a: {**a, "counts": a["counts"][0]}, "counts"),
    "counts_scalar": (lambda a: {**a, "counts": np.float32(3)}, "counts"),
    "counts_nan": (lambda a: {**a, "counts": np.where(a["counts"] > 0, np.nan, 0)}, "counts"),
    "counts_negative": (lambda a: {**a, "counts": -1 - a["counts"]}, "counts"),
    "counts_complex": (lambda a: {**a, "counts": a["counts"] * 1j}, "counts"),
    "positions_shape": (lambda a: {**a, "positions_px": a["positions_px"][:, :1]}, "positions_px"),
    "positions_count": (lambda a: {**a, "positions_px": a["positions_px"][:3]}, "positions_px"),
    "positions_nan": (lambda a: {**a, "positions_px": a["positions_px"] * np.nan},
                      "positions_px"),
    "positions_identical": (lambda a: {**a, "positions_px": np.full_like(a["positions_px"], 24.0)},
                            "identical"),
    "probe_size": (lambda a: {**a, "probe": a["probe"][:16, :16]}, "probe"),
    "probe_scalar": (lambda a: {**a, "probe": np.complex64(1)}, "probe"),
    "bad_pixels_shape": (lambda a: {**a, "bad_pixels": np.zeros((3, 3), bool)}, "bad_pixels"),
    "object_pickled": (lambda a: {**a, "object_true": np.array([{"x": 1}], dtype=object)},
                       "pickled"),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
@pytest.mark.parametrize("command", ["info", "train"])
def test_bad_canonical_npz(case, command, scan, tmp_path, capsys):
    make, key = NPZ_CASES[case]
    bad = tmp_path / f"{case}.npz"
    np.savez(bad, **make(_npz_arrays(scan)))
    before = snapshot(tmp_path)
    argv = (["info", bad] if command == "info"
            else ["train", "--train", bad, "-o", tmp_path / "run", *TINY])
    refused(capsys, argv, bad.name, key)
    assert snapshot(tmp_path) == before  # no run directory, log or config left behind


def test_npz_without_probe_is_read_but_not_trained_on(scan, tmp_path, capsys):
    """A file without probe gets one estimated from the data (issue 13): ``info`` reads it,
    ``train`` refuses it unless the probe is learned."""
    bad = tmp_path / "no_probe.npz"
    np.savez(bad, **_without(_npz_arrays(scan), "probe"))
    assert main(["info", str(bad)]) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    refused(capsys, ["train", "--train", bad, "-o", tmp_path / "run", *TINY], "probe",
            "model.learn_probe")
    assert snapshot(tmp_path) == before


def _npz_with_header(path: Path, key: str, shape: tuple[int, ...], dtype: str = "<f4") -> None:
    """An NPZ whose member ``key`` declares ``shape`` but holds only a few bytes."""
    buf = stdio.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{key}.npy", buf.getvalue() + b"\0" * 64)
        for k, v in (("positions_px", np.zeros((2, 2))), ("probe", np.ones((8, 8)))):
            b = stdio.BytesIO()
            np.save(b, v)
            zf.writestr(f"{k}.npy", b.getvalue())


RAW_NPZ_CASES = {
    "huge_header": lambda p: _npz_with_header(p, "counts", (10**6, 4096, 4096)),
    "huge_reference": lambda p: _npz_with_header(p, "diffraction", (10**5, 10**5, 64)),
    "object_header": lambda p: _npz_with_header(p, "counts", (2, 8, 8), "|O"),
    "truncated": lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40),
    "empty": lambda p: p.write_bytes(b""),
    "random_bytes": lambda p: p.write_bytes(os.urandom(256)),
    "npz_of_nothing_known": lambda p: np.savez(p, something=np.zeros(3)),
}


@pytest.mark.parametrize("case", sorted(RAW_NPZ_CASES))
def test_corrupt_or_oversized_npz(case, tmp_path, capsys):
    bad = tmp_path / f"{case}.npz"
    RAW_NPZ_CASES[case](bad)
    line = refused(capsys, ["info", bad], bad.name)
    if case.startswith("huge"):
        assert "memory" in line


# ------------------------------------------------------------------------------------------------
# reference (PtychoPINN) NPZ


def _ref_arrays(scan):
    return {"diffraction": np.sqrt(scan.counts), "xcoords": scan.positions_px[:, 1],
            "ycoords": scan.positions_px[:, 0], "probeGuess": scan.probe}


REF_CASES = {
    "negative_amplitude": (lambda a: {**a, "diffraction": -a["diffraction"] - 0.5},
                           "diffraction", []),
    "negative_counts": (lambda a: {**a, "diffraction": np.round(a["diffraction"]) - 3},
                        "diffraction", ["--measurement", "counts"]),
    "nan": (lambda a: {**a, "diffraction": a["diffraction"] * np.nan}, "diffraction", []),
    "diffraction_2d": (lambda a: {**a, "diffraction": a["diffraction"][0]}, "diffraction", []),
    "diffraction_strings": (lambda a: {**a, "diffraction": np.array(["a", "b"])}, "diffraction",
                            []),
    "no_xcoords": (lambda a: _without(a, "xcoords"), "xcoords", []),
    "no_probe": (lambda a: _without(a, "probeGuess"), "probeGuess", []),
    "coords_mismatch": (lambda a: {**a, "xcoords": a["xcoords"][:3]}, "xcoords", []),
    "coords_strings": (lambda a: {**a, "xcoords": np.array(["x"] * len(a["xcoords"]))},
                       "xcoords", []),
    "coords_identical": (lambda a: {**a, "xcoords": np.full_like(a["xcoords"], 20.0),
                                    "ycoords": np.full_like(a["ycoords"], 20.0)}, "identical", []),
    "bad_measurement": (lambda a: {**a, "measurement": np.array("photons")}, "measurement", []),
    "probe_pickled": (lambda a: {**a, "probeGuess": np.array([None], dtype=object)}, "pickled",
                      []),
}


@pytest.mark.parametrize("case", sorted(REF_CASES))
def test_bad_reference_npz(case, scan, tmp_path, capsys):
    make, key, extra = REF_CASES[case]
    bad = tmp_path / f"{case}.npz"
    np.savez(bad, **make(_ref_arrays(scan)))
    refused(capsys, ["info", bad, *extra], bad.name, key)


# ------------------------------------------------------------------------------------------------
# CXI


DATA = "/entry_1/instrument_1/detector_1/data"
TRANS = "/entry_1/sample_1/geometry_1/translation"
PROBE = "/entry_1/instrument_1/source_1/illumination"


def _replace(f, path, **kw):
    """Replace the object at ``path`` (and the soft links to it stay valid by path)."""
    if path in f or f.get(path, getlink=True) is not None:
        del f[path]
    if "group" in kw:
        f.create_group(path)
    else:
        f.create_dataset(path, **kw)


def _external_raw(f, d):
    raw = d / "outside.raw"
    arr = np.asarray(f[DATA][()])
    raw.write_bytes(arr.tobytes())
    del f[DATA]
    f.create_dataset(DATA, shape=arr.shape, dtype=arr.dtype,
                     external=[(str(raw), 0, arr.nbytes)])


def _external_link(f, d):
    other = d / "outside.h5"
    with h5py.File(other, "w") as g:
        g["frames"] = np.asarray(f[DATA][()])
    del f[DATA]
    f[DATA] = h5py.ExternalLink(str(other), "/frames")


def _unused_external_link(f, d):
    f["/entry_1/elsewhere"] = h5py.ExternalLink(str(d / "outside.h5"), "/x")


def _virtual(f, d):
    other = d / "outside.h5"
    arr = np.asarray(f[DATA][()])
    with h5py.File(other, "w") as g:
        g["frames"] = arr
    layout = h5py.VirtualLayout(shape=arr.shape, dtype=arr.dtype)
    layout[...] = h5py.VirtualSource(str(other), "frames", shape=arr.shape)
    del f[DATA]
    f.create_virtual_dataset(DATA, layout)


def _soft_to_external(f, d):
    f["/entry_1/ext"] = h5py.ExternalLink(str(d / "outside.h5"), "/frames")
    del f[DATA]
    f[DATA] = h5py.SoftLink("/entry_1/ext")


def _meta_json(text):
    def edit(f, d):
        del f["/entry_1/ptypinn/meta_json"]
        f["/entry_1/ptypinn/meta_json"] = text
    return edit


def _all_identical(f, d):
    t = np.asarray(f[TRANS][()])
    _replace(f, TRANS, data=np.zeros_like(t))


CXI_CASES = {
    "external_raw_storage": (_external_raw, "external raw storage"),
    "external_link": (_external_link, "external link"),
    "external_link_unused": (_unused_external_link, "external link"),
    "virtual_dataset": (_virtual, "virtual dataset"),
    "soft_link_to_external": (_soft_to_external, "external link"),
    "data_group": (lambda f, d: _replace(f, DATA, group=True), "/data:"),
    "data_scalar": (lambda f, d: _replace(f, DATA, data=3.0), "/data:"),
    "data_2d": (lambda f, d: _replace(f, DATA, data=np.ones((32, 32))), "/data:"),
    "data_empty": (lambda f, d: _replace(f, DATA, data=np.ones((0, 32, 32))), "/data:"),
    "translation_scalar": (lambda f, d: _replace(f, TRANS, data=1.0), TRANS),
    "translation_group": (lambda f, d: _replace(f, TRANS, group=True), TRANS),
    "translation_shape": (lambda f, d: _replace(f, TRANS, data=np.zeros((2, 3))), TRANS),
    "translation_nan": (lambda f, d: _replace(f, TRANS, data=np.full((25, 3), np.nan)), TRANS),
    "translation_identical": (_all_identical, "identical"),
    "probe_scalar": (lambda f, d: _replace(f, PROBE, data=1.0), PROBE),
    "probe_group": (lambda f, d: _replace(f, PROBE, group=True), PROBE),
    "probe_shape": (lambda f, d: _replace(f, PROBE, data=np.ones((8, 8), np.complex64)), PROBE),
    "mask_shape": (lambda f, d: _replace(f, "/entry_1/instrument_1/detector_1/mask",
                                         data=np.zeros((3, 3))), "mask"),
    "energy_string": (lambda f, d: _replace(f, "/entry_1/instrument_1/source_1/energy",
                                            data="eight keV"), "energy"),
    "energy_negative": (lambda f, d: _replace(f, "/entry_1/instrument_1/source_1/energy",
                                              data=-1.0), "energy"),
    "distance_negative": (lambda f, d: _replace(f, "/entry_1/instrument_1/detector_1/distance",
                                                data=-2.0), "distance"),
    "energy_group": (lambda f, d: _replace(f, "/entry_1/instrument_1/source_1/energy",
                                           group=True), "energy"),
    "meta_json_list": (_meta_json("[1, 2]"), "meta_json"),
    "meta_json_invalid": (_meta_json("{nope"), "meta_json"),
    "ptypinn_not_group": (lambda f, d: (f.__delitem__("/entry_1/ptypinn"),
                                        f.create_dataset("/entry_1/ptypinn", data=1)),
                          "/entry_1/ptypinn"),
    "origin_shape": (lambda f, d: _replace(f, "/entry_1/ptypinn/positions_origin_px",
                                           data=np.zeros(5)), "positions_origin_px"),
}


def _bad_cxi(good: Path, d: Path, case: str) -> Path:
    bad = d / f"{case}.cxi"
    shutil.copy(good / "scan.cxi", bad)
    with h5py.File(bad, "a") as f:
        CXI_CASES[case][0](f, d)
    return bad


@pytest.mark.parametrize("case", sorted(CXI_CASES))
def test_bad_cxi_train(case, good, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = _bad_cxi(good, inputs, case)
    before = snapshot(tmp_path)
    refused(capsys, ["train", "--train", bad, "-o", tmp_path / "run", *TINY], bad.name,
            CXI_CASES[case][1])
    assert snapshot(tmp_path) == before


FOREIGN = ["external_raw_storage", "external_link", "external_link_unused", "virtual_dataset",
           "soft_link_to_external", "data_group", "data_scalar", "data_empty", "translation_scalar"]


@pytest.mark.parametrize("case", FOREIGN)
def test_bad_cxi_info(case, good, tmp_path, capsys):
    bad = _bad_cxi(good, tmp_path, case)
    refused(capsys, ["info", bad], bad.name, CXI_CASES[case][1])


def test_external_storage_is_never_read(good, tmp_path, capsys):
    """The external raw file is replaced by a FIFO: reading it would block the test forever."""
    bad = _bad_cxi(good, tmp_path, "external_raw_storage")
    raw = tmp_path / "outside.raw"
    raw.unlink()
    os.mkfifo(raw)
    refused(capsys, ["info", bad], "external raw storage")
    refused(capsys, ["train", "--train", bad, "-o", tmp_path / "run", *TINY], "external")
    with pytest.raises(ValueError, match="outside the input file"):
        io.read_cxi(bad)


def test_cxi_without_frames_info(tmp_path, capsys):
    bad = tmp_path / "noframes.cxi"
    with h5py.File(bad, "w") as f:
        f["cxi_version"] = 160
        f.create_group("entry_1/data_1")
    refused(capsys, ["info", bad], bad.name, "/entry_1/data_1/data")


def test_truncated_hdf5(good, tmp_path, capsys):
    bad = tmp_path / "cut.cxi"
    bad.write_bytes((good / "scan.cxi").read_bytes()[:3000])
    refused(capsys, ["info", bad], bad.name)


# ------------------------------------------------------------------------------------------------
# ptychodus product


def _attr(path, name, value):
    def edit(f, d):
        f[path].attrs[name] = value
    return edit


PRODUCT_CASES = {
    "external_link": (lambda f, d: f.__setitem__("/extra", h5py.ExternalLink(
        str(d / "other.h5"), "/x")), "external link"),
    "object_group": (lambda f, d: _replace(f, "/object", group=True), "/object"),
    "object_real": (lambda f, d: (_replace(f, "/object", data=np.ones((48, 48))),
                                  [f["/object"].attrs.__setitem__(k, 1e-8) for k in
                                   ("pixel_width_m", "pixel_height_m")],
                                  [f["/object"].attrs.__setitem__(k, 0.0) for k in
                                   ("center_x_m", "center_y_m")]), "/object"),
    "probe_scalar": (lambda f, d: _replace(f, "/probe", data=1.0), "/probe"),
    "x_group": (lambda f, d: _replace(f, "/probe_position_x_m", group=True),
                "/probe_position_x_m"),
    "x_strings": (lambda f, d: _replace(f, "/probe_position_x_m", data=np.array([b"a"] * 25)),
                  "/probe_position_x_m"),
    "xy_mismatch": (lambda f, d: _replace(f, "/probe_position_y_m", data=np.zeros(3)),
                    "/probe_position_y_m"),
    "pixel_string": (_attr("/object", "pixel_width_m", "tiny"), "pixel_width_m"),
    "pixel_negative": (_attr("/object", "pixel_width_m", -1.0), "pixel_width_m"),
    "missing_attr": (lambda f, d: f["/object"].attrs.__delitem__("center_x_m"), "center_x_m"),
    "outside_object": (lambda f, d: _replace(f, "/probe_position_x_m", data=np.full(25, 1.0)),
                       "/probe_position_x_m"),
    "energy_string": (lambda f, d: f.attrs.__setitem__("photon_energy_eV", "high"),
                      "photon_energy_eV"),
}


@pytest.mark.parametrize("case", sorted(PRODUCT_CASES))
def test_bad_product(case, good, tmp_path, capsys):
    bad = tmp_path / f"{case}.h5"
    shutil.copy(good / "product.h5", bad)
    with h5py.File(bad, "a") as f:
        PRODUCT_CASES[case][0](f, tmp_path)
    refused(capsys, ["info", bad], bad.name, PRODUCT_CASES[case][1])


def test_product_is_not_a_scan(good, tmp_path, capsys):
    refused(capsys, ["train", "--train", good / "product.h5", "-o", tmp_path / "r", *TINY],
            "product.h5", "not a scan")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# bundles


def _manifest(edit):
    def apply(b: Path):
        m = json.loads((b / "manifest.json").read_text())
        (b / "manifest.json").write_text(json.dumps(edit(m)))
    return apply


def _weights(edit):
    def apply(b: Path):
        from safetensors.torch import load_file, save_file

        t = load_file(str(b / "weights.safetensors"))
        save_file(edit(t), str(b / "weights.safetensors"))
    return apply


def _config_yaml(text):
    return lambda b: (b / "config.yaml").write_text(text)


def _config_set(section, key, value):
    def apply(b: Path):
        import yaml

        cfg = yaml.safe_load((b / "config.yaml").read_text())
        cfg[section][key] = value
        (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    return apply


def _first_conv(t):
    return next(k for k in t if k.endswith("weight") and t[k].ndim == 4)


BUNDLE_CASES = {
    "manifest_list": (lambda b: (b / "manifest.json").write_text("[1, 2, 3]"), "manifest.json"),
    "manifest_string": (lambda b: (b / "manifest.json").write_text('"bundle"'), "manifest.json"),
    "manifest_invalid": (lambda b: (b / "manifest.json").write_text("{"), "manifest.json"),
    "manifest_binary": (lambda b: (b / "manifest.json").write_bytes(b"\xff\xfe\0"),
                        "manifest.json"),
    "no_format_version": (_manifest(lambda m: _without(m, "format_version")), "format_version"),
    "no_pattern_size": (_manifest(lambda m: _without(m, "pattern_size")), "pattern_size"),
    "pattern_size_string": (_manifest(lambda m: {**m, "pattern_size": "32"}), "pattern_size"),
    "pattern_size_other": (_manifest(lambda m: {**m, "pattern_size": 64}), "pattern_size"),
    "format_version_99": (_manifest(lambda m: {**m, "format_version": 99}), "format_version"),
    "no_kind": (_manifest(lambda m: _without(m, "kind")), "kind"),
    "config_list": (_config_yaml("- 1\n- 2\n"), "config.yaml"),
    "config_bad_key": (_config_yaml("model:\n  widht: 4\n"), "widht"),
    "config_width": (_config_set("model", "width", 8), "weights.safetensors"),
    "config_depth": (_config_set("model", "depth", 1), "weights.safetensors"),
    "config_gridsize": (_config_set("grouping", "gridsize", 2), "weights.safetensors"),
    "weights_missing_tensor": (_weights(lambda t: _without(t, _first_conv(t))),
                               "weights.safetensors"),
    "weights_extra_tensor": (_weights(lambda t: {**t, "bogus": torch.zeros(3)}), "bogus"),
    "weights_shape": (_weights(lambda t: {**t, _first_conv(t): torch.zeros(1, 1, 1, 1)}),
                      "weights.safetensors"),
    "weights_no_probe": (_weights(lambda t: _without(_without(t, "probe.real"), "probe.imag")),
                         "probe"),
    "weights_real_without_imag": (_weights(lambda t: _without(t, "probe.imag")), "probe.imag"),
    "weights_truncated": (lambda b: (b / "weights.safetensors").write_bytes(
        (b / "weights.safetensors").read_bytes()[:100]), "weights.safetensors"),
    "weights_pickle": (lambda b: (b / "weights.safetensors").write_bytes(
        pickle.dumps({"probe": 1})), "weights.safetensors"),
    "weights_missing": (lambda b: (b / "weights.safetensors").unlink(), "weights.safetensors"),
    "no_manifest": (lambda b: (b / "manifest.json").unlink(), "manifest.json"),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_bad_bundle_infer(case, run_dir, good, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    BUNDLE_CASES[case][0](bundle)
    before = snapshot(tmp_path)
    refused(capsys, ["infer", bundle, "--scan", good / "scan.npz", "-o", tmp_path / "out"],
            BUNDLE_CASES[case][1])
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["manifest_list", "manifest_invalid", "no_pattern_size",
                                  "config_list"])
def test_bad_bundle_info(case, run_dir, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(run_dir / "bundle", bundle)
    BUNDLE_CASES[case][0](bundle)
    refused(capsys, ["info", bundle], BUNDLE_CASES[case][1])


# ------------------------------------------------------------------------------------------------
# checkpoints (train --resume)


class Evil:
    """Any non-tensor object pickled into a checkpoint."""


def _ckpt_edit(edit):
    def apply(path: Path):
        ck = torch.load(path, map_location="cpu", weights_only=False)
        torch.save(edit(ck), path)
    return apply


CKPT_CASES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:500]), "last.ckpt", []),
    "random_bytes": (lambda p: p.write_bytes(os.urandom(300)), "last.ckpt", []),
    "empty": (lambda p: p.write_bytes(b""), "last.ckpt", []),
    "pickled_object": (_ckpt_edit(lambda c: {**c, "evil": Evil()}), "last.ckpt", []),
    "plain_pickle": (lambda p: p.write_bytes(pickle.dumps({"state_dict": Evil()})), "last.ckpt",
                     []),
    "no_state_dict": (_ckpt_edit(lambda c: _without(c, "state_dict")), "state_dict", []),
    "not_a_dict": (lambda p: torch.save([1, 2], p), "last.ckpt", []),
    "other_width": (lambda p: None, "state_dict", ["--set", "model.width=8"]),
    "other_gridsize": (lambda p: None, "state_dict", ["--set", "grouping.gridsize=2"]),
    "missing": (lambda p: p.unlink(), "last.ckpt", []),
}


@pytest.mark.parametrize("case", sorted(CKPT_CASES))
def test_bad_checkpoint_resume(case, run_dir, good, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    edit, key, extra = CKPT_CASES[case]
    edit(run / "checkpoints" / "last.ckpt")
    before = snapshot(run)
    refused(capsys, ["train", "--train", good / "scan.npz", "-o", run, "--resume", *TINY,
                     *extra], key)
    assert snapshot(run) == before  # metrics.csv, config and bundle untouched


def test_resume_appends_metrics_history(run_dir, good, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    old = (run / "logs" / "metrics.csv").read_text().splitlines()
    assert len(old) >= 2
    assert main(["train", "--train", str(good / "scan.npz"), "-o", str(run), "--resume", *TINY,
                 "--set", "train.epochs=2"]) == 0
    new = (run / "logs" / "metrics.csv").read_text().splitlines()
    assert len(new) > len(old)
    header_old, header_new = old[0].split(","), new[0].split(",")
    rows = [dict(zip(header_new, r.split(","))) for r in new[1:]]
    earlier = [dict(zip(header_old, r.split(","))) for r in old[1:]]
    assert rows[:len(earlier)] == [{**dict.fromkeys(header_new, ""), **r} for r in earlier]
    assert {r["epoch"] for r in rows[len(earlier):]} == {"1"}  # the resumed epoch, appended


# ------------------------------------------------------------------------------------------------
# outputs: never over an input, never over an existing run, nothing left by a refusal


def test_simulate_probe_source_is_output(good, tmp_path, capsys):
    target = tmp_path / "probe_and_out.npz"
    shutil.copy(good / "scan.npz", target)
    before = snapshot(tmp_path)
    refused(capsys, ["simulate", "-o", target, "--set", "simulation.probe_kind=file",
                     "--set", f"simulation.probe_file={target}", "--set",
                     "simulation.object_size_px=48", "--set", "simulation.probe_size_px=32",
                     "--set", "simulation.probe_radius_px=8", "--overwrite"],
            target.name, "input")
    assert snapshot(tmp_path) == before


def test_simulate_existing_output(good, tmp_path, capsys):
    target = tmp_path / "s.npz"
    shutil.copy(good / "scan.npz", target)
    before = snapshot(tmp_path)
    refused(capsys, ["simulate", "-o", target], "s.npz", "exists", "--overwrite")
    assert snapshot(tmp_path) == before


def test_simulate_test_output_is_output(tmp_path, capsys):
    refused(capsys, ["simulate", "-o", tmp_path / "a.npz", "--test-output", tmp_path / "a.npz"],
            "--test-output")
    assert list(tmp_path.iterdir()) == []


SIM_TINY = ["--set", "simulation.object_size_px=48", "--set", "simulation.probe_size_px=32",
            "--set", "simulation.probe_radius_px=8"]


def test_simulate_full_disk_keeps_old_output(good, tmp_path, capsys, monkeypatch):
    target = tmp_path / "s.npz"
    shutil.copy(good / "scan.npz", target)
    before = snapshot(target)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full)
    refused(capsys, ["simulate", "-o", target, "--overwrite", *SIM_TINY], "s.npz",
            "No space left")
    assert snapshot(target) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(io.TMP_PREFIX)]


def test_orphaned_temporary_files_are_cleaned(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    orphan = tmp_path / f"{io.TMP_PREFIX}{dead}.s.npz.abc.npz"
    orphan.write_bytes(b"partial")
    alive = tmp_path / f"{io.TMP_PREFIX}{os.getpid()}.t.npz.abc.npz"
    alive.write_bytes(b"in use")
    assert main(["simulate", "-o", str(tmp_path / "s.npz"), *SIM_TINY]) == 0
    assert not orphan.exists() and alive.exists()


def test_train_existing_run_needs_resume_or_overwrite(run_dir, good, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = snapshot(run)
    refused(capsys, ["train", "--train", good / "scan.npz", "-o", run, *TINY], "exists",
            "--resume", "--overwrite")
    refused(capsys, ["train", "--train", good / "scan.npz", "-o", run, "--resume",
                     "--overwrite", *TINY], "--resume")
    assert snapshot(run) == before


@pytest.mark.parametrize("where", ["equal", "inside"])
def test_train_output_over_input(good, tmp_path, capsys, where):
    src = tmp_path / "data" / "scan.npz"
    src.parent.mkdir()
    shutil.copy(good / "scan.npz", src)
    before = snapshot(tmp_path)
    out = src if where == "equal" else src.parent
    refused(capsys, ["train", "--train", src, "-o", out, "--overwrite", *TINY], "input")
    assert snapshot(tmp_path) == before


def test_infer_into_its_run_or_existing_dir(run_dir, good, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = snapshot(run)
    refused(capsys, ["infer", run, "--scan", good / "scan.npz", "-o", run, "--overwrite"],
            "input")
    refused(capsys, ["infer", run, "--scan", good / "scan.npz", "-o", run / "bundle"],
            "exists")
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["train", "infer", "simulate", "reconstruct"])
def test_unwritable_output_fails_first(command, run_dir, good, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "sub"
    argv = {"train": ["train", "--train", good / "scan.npz", "-o", out, *TINY],
            "infer": ["infer", run_dir, "--scan", good / "scan.npz", "-o", out],
            "simulate": ["simulate", "-o", out / "s.npz", *SIM_TINY],
            "reconstruct": ["reconstruct", good / "scan.npz", "-o", out, *TINY]}[command]
    refused(capsys, argv, "a_file", "not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ------------------------------------------------------------------------------------------------
# bad values, devices and sizes


BAD_SETTINGS = {
    "max_time_zero": (["--set", "train.max_time_s=0"], "train.max_time_s"),
    "max_time_negative": (["--set", "train.max_time_s=-5"], "train.max_time_s"),
    "patience_negative": (["--set", "train.early_stopping_patience=-1"],
                          "train.early_stopping_patience"),
    "infer_device_bogus": (["--set", "infer.device=bogus"], "infer.device"),
    "refine_device_bogus": (["--set", "refine.device=gpu0"], "refine.device"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_train(case, good, tmp_path, capsys):
    extra, key = BAD_SETTINGS[case]
    refused(capsys, ["train", "--train", good / "scan.npz", "-o", tmp_path / "r", *TINY, *extra],
            key)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("setting,key", [("infer.device=cuda", "infer.device"),
                                         ("refine.device=cuda:3", "refine.device")])
def test_cuda_without_cuda_infer(setting, key, run_dir, good, tmp_path, capsys):
    refused(capsys, ["infer", run_dir, "--scan", good / "scan.npz", "-o", tmp_path / "o",
                     "--set", setting], key, "available")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not NO_CUDA, reason="needs a machine without CUDA")
def test_gpu_accelerator_without_cuda(good, tmp_path, capsys):
    refused(capsys, ["train", "--train", good / "scan.npz", "-o", tmp_path / "r", *TINY,
                     "--set", "train.accelerator=gpu"], "train.accelerator")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("size", [10**6, 3 * 10**5])
def test_simulation_too_big_for_memory(size, tmp_path, capsys):
    refused(capsys, ["simulate", "-o", tmp_path / "s.npz", "--set",
                     f"simulation.object_size_px={size}"], "simulation.object_size_px", "memory")
    assert list(tmp_path.iterdir()) == []


def test_non_image_image_path(good, tmp_path, capsys):
    refused(capsys, ["simulate", "-o", tmp_path / "s.npz", *SIM_TINY, "--set",
                     "simulation.object_kind=image", "--set",
                     f"simulation.image_path={good / 'scan.npz'}"], "scan.npz", "image")
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("case", ["pickled", "huge", "text", "scalar"])
def test_bad_probe_npy(case, tmp_path, capsys):
    p = tmp_path / f"{case}.npy"
    if case == "pickled":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "huge":
        with open(p, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<c16", "fortran_order": False,
                                                      "shape": (10**6, 10**6)})
    elif case == "text":
        p.write_text("not an array")
    else:
        np.save(p, np.float32(1))
    out = tmp_path / "out"
    refused(capsys, ["simulate", "-o", out / "s.npz", *SIM_TINY, "--set",
                     "simulation.probe_kind=file", "--set", f"simulation.probe_file={p}"],
            p.name)
    assert not out.exists()


@pytest.mark.parametrize("text", ["- a\n- b\n", "\xff\xfe", "train: [1, 2]\n", "train:\n  x: 1\n"])
def test_bad_config_files(text, good, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text.encode("latin-1"))
    refused(capsys, ["train", "--config", cfg, "--train", good / "scan.npz", "-o",
                     tmp_path / "r", *TINY], "c.yaml" if text[0] in "-\xff" else "train")
    assert not (tmp_path / "r").exists()


def test_loss_explosion_is_divergence(good, tmp_path, capsys):
    refused(capsys, ["train", "--train", good / "scan.npz", "-o", tmp_path / "r", *TINY,
                     "--set", "train.learning_rate=1e12", "--set", "train.epochs=3",
                     "--set", "train.lr_schedule=constant"], "first step", code=3)


# ------------------------------------------------------------------------------------------------
# studies: cell names never leave the study directory


@pytest.mark.parametrize("name", ["../../outside", "/etc", "a/b", "..", "", ".hidden", 7])
def test_study_cell_names(name, tmp_path, capsys):
    study = tmp_path / "study"
    (study / "cells").mkdir(parents=True)
    (study / "study.yaml").write_text("study:\n  kind: dose\n  values: [1.0e6]\n")
    (study / "study.json").write_text(json.dumps({"cells": [name]}))
    refused(capsys, ["study", tmp_path / "unused.yaml", "-o", study, "--report-only"],
            "study.json", "cells")


def test_study_json_not_an_object(tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.yaml").write_text("study:\n  kind: dose\n  values: [1.0e6]\n")
    (study / "study.json").write_text("[]")
    refused(capsys, ["study", tmp_path / "unused.yaml", "-o", study, "--report-only"],
            "study.json")


def test_internal_error_is_one_line_exit_1(good, capsys, monkeypatch):
    import ptypinn.workflows.describe as describe

    def broken(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(describe, "describe_path", broken)
    refused(capsys, ["info", good / "scan.npz"], "internal error", "TypeError", "-v", code=1)


def test_study_cell_linking_outside(tmp_path, capsys):
    secret = tmp_path / "secret"
    (secret / "compare").mkdir(parents=True)
    (secret / "done.json").write_text("{}")
    study = tmp_path / "study"
    (study / "cells").mkdir(parents=True)
    (study / "cells" / "dose_1e06_s0").symlink_to(secret, target_is_directory=True)
    (study / "study.yaml").write_text("study:\n  kind: dose\n  values: [1.0e6]\n")
    (study / "study.json").write_text(json.dumps({"cells": ["dose_1e06_s0"]}))
    refused(capsys, ["study", tmp_path / "unused.yaml", "-o", study, "--report-only"],
            "dose_1e06_s0", "outside")


# ------------------------------------------------------------------------------------------------
# the bzip2-compressed tike scan


def _bz2_npz(path: Path, **arrays):
    import bz2

    buf = stdio.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(bz2.compress(buf.getvalue()))


TIKE_CASES = {
    "not_bzip2": (lambda p: p.write_bytes(b"BZh9" + os.urandom(64)), "bzip2"),
    "missing_probe": (lambda p: _bz2_npz(p, data=np.ones((1, 4, 8, 8)),
                                         scan=np.zeros((1, 4, 2))), "probe"),
    "pickled": (lambda p: _bz2_npz(p, data=np.array([{}], dtype=object),
                                   scan=np.zeros((1, 4, 2)), probe=np.ones((8, 8))), "NPZ"),
    "scan_odd": (lambda p: _bz2_npz(p, data=np.ones((1, 4, 8, 8)), scan=np.zeros(7),
                                    probe=np.ones((8, 8))), "scan"),
    "scan_identical": (lambda p: _bz2_npz(p, data=np.ones((1, 4, 8, 8)),
                                          scan=np.zeros((1, 4, 2)), probe=np.ones((8, 8))),
                       "identical"),
}


@pytest.mark.parametrize("case", sorted(TIKE_CASES))
def test_bad_tike_scan(case, tmp_path, capsys):
    bad = tmp_path / f"{case}.npz.bz2"
    TIKE_CASES[case][0](bad)
    refused(capsys, ["info", bad], bad.name, TIKE_CASES[case][1])
