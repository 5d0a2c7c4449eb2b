"""Run the four quick studies (``configs/studies/*_quick.yaml``) and write ``docs/studies/*.md``.

Each page gets the command, its wall time, the machine load, the finding sentence and the study's
``table.md`` (mean ± std over the config's seeds, data NLL columns, pty-chi's engine per cell).
The page's previous content is kept below, under "Superseded", with the reason given by
``--superseded-because``.

Run::

    .venv/bin/python bench/quick_studies.py -o runs/quick-studies \\
        --superseded-because "one seed, phase SSIM with a 2 pi range, ePIE at a fixed 20 epochs"
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

from ptypinn import io, run_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ["dose", "overlap", "generalization", "probe"]
NOTE = ("Quick presets are smoke sizes (32² patterns, width 8, 3 epochs): they check the "
        "machinery, not the method's quality; see docs/benchmarks.md for the quality benchmark.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--studies", nargs="+", default=STUDIES, choices=STUDIES)
    ap.add_argument("--superseded-because", required=True)
    a = ap.parse_args()
    for name in a.studies:
        cfg = ROOT / "configs" / "studies" / f"{name}_quick.yaml"
        out = Path(a.out) / name
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        summary = run_study(cfg, out)
        wall = time.perf_counter() - t0
        table = (out / "table.md").read_text().strip()
        page = ROOT / "docs" / "studies" / f"{name}_quick.md"
        old = page.read_text() if page.is_file() else ""
        old_body = old.split("\n## Superseded", 1)[0].split("\n", 1)[-1].strip() if old else ""
        older = ("\n## Superseded" + old.split("\n## Superseded", 1)[1]) if \
            "\n## Superseded" in old else ""
        today = datetime.date.today().isoformat()
        text = (f"# {name} study, quick preset (CPU box, 2 cores)\n\n"
                f"Command: `ptypinn study configs/studies/{name}_quick.yaml -o runs/study-{name}` "
                f"({wall:.0f} s wall, {today}, load {load0:.1f} at the start; run by "
                f"`bench/quick_studies.py`).\n\n"
                f"Finding: {summary['finding']}\n\n{NOTE}\n\n{table}\n")
        if old_body:
            text += (f"\n## Superseded ({today}: {a.superseded_because})\n\n" + old_body + "\n"
                     + older)
        io.write_text(page, text)
        print(f"{name}: {wall:.0f} s -> {page}", flush=True)


if __name__ == "__main__":
    main()
