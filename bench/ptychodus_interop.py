"""Interoperability with ptychodus's own readers and writers (issue 15 item 2).

ptychodus is not a dependency of ptypinn.  This script imports it from wherever the environment
has it (``pip install ptychodus``, or an unpacked wheel on ``PYTHONPATH``) and checks, with
ptychodus's own code on one side and ptypinn's on the other:

1. a product written by ``ptypinn.io.write_product`` opens with ptychodus's ``load_product``,
   with the same positions, probe and object;
2. a scan in ptychodus's standard layout written by ptychodus's ``save_diffraction_data`` and
   ``save_product`` (``diffraction.h5`` + ``product.h5``) reads with ``ptypinn.io.read_scan``:
   same patterns, positions, bad pixels, energy, distance;
3. the CXI translation sign: a CXI product written by ptychodus's ``CXIProductFileIO``, with the
   patterns added as ``/entry_1/instrument_1/detector_1/data``, read by ``ptypinn.io.read_scan``
   with and without ``flip_positions``: which reading puts every pattern at its true position
   (up to one whole-pixel shift of the frame).

Run (the printout names the ptychodus version)::

    PYTHONPATH=src:/path/to/unpacked/ptychodus-wheel .venv/bin/python bench/ptychodus_interop.py

Result: ``docs/formats.md``, "CXI translations" and "ptychodus standard layout".
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from scipy import constants


def main() -> int:
    import ptychodus
    from ptychodus.api.assemble import AssembledDiffractionData
    from ptychodus.api.geometry import PixelGeometry
    from ptychodus.api.io import load_product, save_diffraction_data, save_product
    from ptychodus.plugins.cxi_file import CXIProductFileIO

    from ptypinn import io as pio
    from ptypinn.config import SimulationConfig
    from ptypinn.io.hdf5 import Product
    from ptypinn.simulate import simulate_scan

    print(f"ptychodus {getattr(ptychodus, '__version__', '?')} from "
          f"{Path(ptychodus.__file__).parent}")
    scan = simulate_scan(SimulationConfig(object_size_px=96, probe_size_px=32,
                                          probe_radius_px=8.0, scan_step_px=6.0,
                                          scan_kind="jittered", photons_per_pattern=1e5, seed=3))
    ps, energy, distance, dpx = 2e-8, 8000.0, 2.0, 75e-6
    bad = np.zeros(scan.counts.shape[1:], bool)
    bad[3, 7] = True
    ok = True

    def check(name: str, cond: bool) -> None:
        nonlocal ok
        ok = ok and bool(cond)
        print(f"  {'ok ' if cond else 'FAIL'} {name}")

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        # 1. ours -> ptychodus
        ours = Product(positions_px=scan.positions_px, probe=scan.probe, object=scan.object_true,
                       object_pixel_size_m=ps, photon_energy_eV=energy,
                       detector_distance_m=distance)
        pio.write_product(d / "ours.h5", ours)
        theirs = load_product(d / "ours.h5")
        geo = theirs.object_.get_geometry()
        x_px = geo.map_probe_positions_to_object_x_px(theirs.probe_positions)
        y_px = geo.map_probe_positions_to_object_y_px(theirs.probe_positions)
        print("1. ptypinn write_product -> ptychodus load_product")
        diff = scan.positions_px - np.stack([y_px, x_px], 1)
        print(f"   ptypinn position - ptychodus object-pixel position: {diff.min():.6g} .. "
              f"{diff.max():.6g} px (ptychodus 1.7 puts the object centre at (W - 1) / 2, "
              "ptypinn at W / 2)")
        check("positions agree up to that half-pixel origin convention",
              np.allclose(diff, 0.5, atol=1e-6))
        check("object equal", np.array_equal(theirs.object_.get_layer(0), scan.object_true))
        check("energy equal", theirs.metadata.photon_energy_eV == energy)

        # 2. ptychodus standard layout -> ours
        run = d / "run"
        run.mkdir()
        counts = np.asarray(scan.counts).astype(np.uint32)
        save_diffraction_data(run / "diffraction.h5", AssembledDiffractionData(
            np.arange(scan.n_patterns), counts, PixelGeometry(dpx, dpx), bad))
        save_product(run / "product.h5", theirs)
        back = pio.read_scan(run)
        print("2. ptychodus save_diffraction_data + save_product -> ptypinn read_scan(dir)")
        check("patterns equal", np.array_equal(back.counts[:], counts.astype(np.float32)))
        check("positions equal", np.allclose(back.positions_px, scan.positions_px, atol=1e-6))
        check("bad pixels equal", np.array_equal(back.bad_pixels, bad))
        check("energy, distance, detector pixel",
              (back.meta["photon_energy_eV"], back.meta["detector_distance_m"],
               back.meta["detector_pixel_size_m"]) == (energy, distance, dpx))

        # 3. ptychodus CXI product (+ the frames) -> ours, both signs
        cxi = d / "ptychodus.cxi"
        CXIProductFileIO().write(cxi, theirs)
        with h5py.File(cxi, "r+") as f:
            f["/entry_1/instrument_1/detector_1/data"] = counts
            f["/entry_1/instrument_1/detector_1/x_pixel_size"] = dpx
            f["/entry_1/instrument_1/detector_1/y_pixel_size"] = dpx
            t = f["/entry_1/sample_1/geometry_1/translation"][()]
            e = float(f["/entry_1/instrument_1/source_1/energy"][()]) / constants.e
        print(f"3. ptychodus CXIProductFileIO (translation[:, :2] = probe positions x, y in m; "
              f"energy {e:.1f} eV) -> ptypinn read_scan")
        for flip in (False, True):
            s = pio.read_scan(cxi, flip_positions=flip)
            scale = s.meta["object_pixel_size_m"] / ps  # its pixels -> the truth's pixels
            # positions in our object pixels, compared with the truth up to one constant shift
            d_px = s.positions_px * scale - scan.positions_px
            spread = float(np.ptp(d_px, axis=0).max())
            print(f"   flip_positions={flip}: positions - truth spread {spread:.3g} px "
                  f"({'the true geometry' if spread < 1e-3 else 'point-inverted'})")
            if flip:
                check("--flip-positions reads ptychodus's CXI translations right", spread < 1e-3)
            else:
                check("the default (CXI sample translations) inverts them", spread > 1.0)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
