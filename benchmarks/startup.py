"""The fixed costs of one ``h2gnet segment`` run: process start, imports, model loading, against a baseline.

Usage:
    python benchmarks/startup.py [--cache .bench] [--baseline-src DIR] [--repeat 5]
                                 [--patch-model P.onnx --refine-model R.onnx]

Runs, alternately and ``--repeat`` times, for this checkout's ``src`` and (with ``--baseline-src``, e.g. a
``git archive COMMIT src`` unpacked) for the baseline's:

* ``python -c "import h2gnet.cli"`` in a child process: wall and CPU seconds (what every command pays);
* ``h2gnet -q segment`` of a small phantom slide (5,000 × 4,000 px at 0.5 µm/px, rendered once into
  ``--cache``) with the given models (default: the CPU study's patch configuration trained by
  ``benchmarks/segment_wsi.py``, 128 px at 2 µm/px, and its 1024-px U-Net): wall seconds, and the fixed part
  = wall − the stages the summary times (tissue, heatmap, refinement, writing): process start, imports, model
  loading, the status table and process exit.

Prints medians and the ratio to the baseline (fixed costs are seconds, not fractions of a slide: a cohort pays
them once per worker, a single slide every time). The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parent.parent / "src"


def small_slide(cache: Path) -> Path:
    """A 5,000 × 4,000 px phantom at 0.5 µm/px (pyramid 1-4-16), rendered once."""
    from fast_run import cached_phantom  # benchmarks/fast_run.py (imports h2gnet only to render)

    return cached_phantom(cache / "startup_phantom.tiff", 3, 5000, 4000)


def child(cmd: list[str], src: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd`` run with ``PYTHONPATH=src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {os.waitstatus_to_exitcode(status)}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".bench"))
    ap.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src folder")
    ap.add_argument("--patch-model", type=Path, default=None)
    ap.add_argument("--refine-model", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    patch = args.patch_model or args.cache / "mobilenetv2_trained_128px_2um.onnx"
    refine = args.refine_model or args.cache / "unet_1024.onnx"
    if not (patch.exists() and refine.exists()):
        raise SystemExit(f"no models {patch}, {refine}: run benchmarks/segment_wsi.py first, or give them")
    slide = small_slide(args.cache)
    variants = {"this": SRC, **({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})}
    load = os.getloadavg()
    rows: dict[str, dict[str, list[float]]] = {v: {"import": [], "import_cpu": [], "segment": [], "fixed": []}
                                               for v in variants}
    for _ in range(args.repeat):
        for name, src in variants.items():
            wall, cpu = child([sys.executable, "-c", "import h2gnet.cli"], src)
            rows[name]["import"].append(wall)
            rows[name]["import_cpu"].append(cpu)
            out = args.cache / f"startup-out-{name}"
            wall, _ = child([sys.executable, "-m", "h2gnet", "-q", "segment", str(slide), "--patch-model", str(patch),
                             "--refine-model", str(refine), "-o", str(out), "--overwrite"], src)
            seconds = json.loads((out / f"{slide.stem}.json").read_text())["seconds"]
            rows[name]["segment"].append(wall)
            rows[name]["fixed"].append(wall - sum(v for k, v in seconds.items()
                                                  if k in ("tissue", "heatmap", "refinement", "write")))
    report: dict = {"repeat": args.repeat, "slide": str(slide), "patch_model": str(patch),
                    "load_average_before": [round(v, 2) for v in load]}
    for name in variants:
        report[name] = {k: round(float(np.median(v)), 3) for k, v in rows[name].items()}
        report[name]["runs"] = {k: [round(x, 2) for x in v] for k, v in rows[name].items()}
        r = report[name]
        print(f"{name:8s} import h2gnet.cli {r['import']:.2f} s wall ({r['import_cpu']:.2f} s CPU); segment of a small "
              f"slide {r['segment']:.2f} s, of which fixed (process start, imports, models, exit; wall minus the "
              f"timed stages) {r['fixed']:.2f} s")
    if "baseline" in report:
        for k in ("import", "import_cpu", "segment", "fixed"):
            report[f"{k}_this_over_baseline"] = round(report["this"][k] / report["baseline"][k], 3)
        print("this / baseline: " + ", ".join(f"{k} {report[f'{k}_this_over_baseline']:.2f}"
                                              for k in ("import", "import_cpu", "segment", "fixed")))
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
