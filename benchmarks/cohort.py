"""Cohort throughput: ``segment`` over >= 8 phantom slides in-process vs on Dask (``--workers 1`` / ``2``).

Usage:
    python benchmarks/cohort.py [--slides 8] [--width 16000 --height 12000] [--cache .bench-cohort]

Makes once (cached under --cache): a phantom cohort of ``--slides`` slides at 0.5 µm/px and a MobileNetV2
patch classifier (random weights, batch norm calibrated on the cohort's patches; PyTorch needed for
that step only). Then segments the cohort patch-wise (``--no-refine``) three times into fresh folders:

* in-process (today's default: one slide after another, ONNX Runtime on all cores);
* ``--workers 1``: a LocalCluster of one worker process with all cores;
* ``--workers 2``: two worker processes with cores/2 threads each, one slide at a time per worker.

Each mode runs twice, in the order in-process, 1, 2, 2, 1, in-process, so that a load drifting during
the benchmark weighs on every mode alike. Prints, per run, the cluster start-up seconds, the cohort's
wall seconds (without start-up) and slides per hour; then, over both runs of each mode, the ratio of
its throughput to the in-process run; and Dask's overhead per slide: (wall of the ``--workers 1`` runs
- the sum of their tasks' own seconds) / slides, as a share of a slide's seconds. The last line is a JSON
object with all figures. Note the machine's load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def make_model(cache: Path, slide_paths: list[Path]) -> Path:
    """A MobileNetV2 patch classifier (256 px at 1.0 µm/px), batch norm calibrated on tissue patches."""
    out = cache / "mobilenetv2_calibrated.onnx"
    if out.exists():
        return out
    import torch

    from h2gnet.io.slides import open_slide
    from h2gnet.train.export import export_classifier_onnx
    from h2gnet.train.models import build_classifier, calibrate_batchnorm

    torch.manual_seed(0)
    model = build_classifier("mobilenetv2", weights=None)
    rng = np.random.default_rng(0)

    def batches():
        for path in slide_paths[:4]:
            with open_slide(path) as slide:
                w, h = slide.dimensions
                locs = [(int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)))
                        for _ in range(16)]
                imgs = np.stack([slide.read_region(loc, (256, 256), 1.0) for loc in locs])
            yield torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255)

    calibrate_batchnorm(model, batches())
    export_classifier_onnx(model.eval(), out, 256, mpp=1.0, arch="mobilenetv2")
    return out


def run_mode(workers: int, slides: list[str], model: Path, out: Path) -> dict:
    """Segment the cohort in one mode; returns start-up and cohort seconds and the tasks' own seconds."""
    from h2gnet.cohort import Engine, EngineConfig
    from h2gnet.infer.segment import SegmentConfig, segment_many

    shutil.rmtree(out, ignore_errors=True)
    cfg = SegmentConfig(patch_model=model, progress=False)
    t0 = time.perf_counter()
    with Engine(EngineConfig(workers=workers)) as engine:
        started = time.perf_counter()
        status = segment_many(slides, out, cfg, engine=engine)
        wall = time.perf_counter() - started
    total = time.perf_counter() - t0
    bad = [k for k, v in status.items() if v["status"] != "done"]
    if bad:
        raise SystemExit(f"{len(bad)} slide(s) not done in mode workers={workers}: {status[bad[0]]}")
    task_seconds = [float(v["seconds"]) for v in status.values()]
    return {"workers": workers, "startup_s": round(started - t0, 2), "wall_s": round(wall, 2),
            "total_s": round(total, 2), "task_s": round(sum(task_seconds), 2),
            "slides_per_hour": round(len(slides) / wall * 3600, 1),
            "slides_per_hour_with_startup": round(len(slides) / total * 3600, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slides", type=int, default=8)
    p.add_argument("--width", type=int, default=16000, help="level-0 px")
    p.add_argument("--height", type=int, default=12000, help="level-0 px")
    p.add_argument("--cache", type=Path, default=Path(".bench-cohort"))
    args = p.parse_args()
    if args.slides < 8:
        raise SystemExit("--slides: at least 8")

    from h2gnet.cohort.engine import visible_cores
    from h2gnet.synth import CohortConfig, make_cohort

    args.cache.mkdir(parents=True, exist_ok=True)
    manifest = make_cohort(args.cache / "cohort", CohortConfig(slides=args.slides, seed=3, width=args.width,
                                                               height=args.height, mpp=0.5), progress=False)
    slides = sorted(str(p) for p in (manifest.parent / "slides").glob("*.tiff"))[: args.slides]
    model = make_model(args.cache, [Path(s) for s in slides])
    print(f"{len(slides)} slides of {args.width}x{args.height} px at 0.5 µm/px, {visible_cores()} cores, "
          f"load before: {os.getloadavg()[0]:.2f}")

    # ABCCBA: each mode runs twice, in mirrored order, so a load that drifts during the benchmark (other
    # processes on the machine) weighs on every mode alike; figures are the sums of both runs
    modes = (("in-process", 0), ("workers-1", 1), ("workers-2", 2))
    runs: dict[str, list[dict]] = {name: [] for name, _ in modes}
    for name, workers in (*modes, *reversed(modes)):
        r = run_mode(workers, slides, model, args.cache / f"out-{name}")
        runs[name].append(r)
        print(f"{name:>11}: start-up {r['startup_s']:6.2f} s, cohort {r['wall_s']:7.2f} s, "
              f"{r['slides_per_hour']:7.1f} slides/h ({r['slides_per_hour_with_startup']:7.1f} with start-up), "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
    n = 2 * len(slides)
    results = {}
    for name, pair in runs.items():
        wall, total, task = (sum(r[k] for r in pair) for k in ("wall_s", "total_s", "task_s"))
        results[name] = {"wall_s": round(wall, 2), "total_s": round(total, 2), "task_s": round(task, 2),
                         "slides_per_hour": round(n / wall * 3600, 1),
                         "slides_per_hour_with_startup": round(n / total * 3600, 1), "runs": pair}
    base = results["in-process"]["wall_s"]
    for r in results.values():
        r["throughput_vs_in_process"] = round(base / r["wall_s"], 3)
        r["throughput_vs_in_process_with_startup"] = round(base / r["total_s"], 3)
    one = results["workers-1"]
    per_slide = one["task_s"] / n
    overhead = (one["wall_s"] - one["task_s"]) / n
    vs_local = (one["wall_s"] - base) / n
    figures = {"slides": len(slides), "cores": visible_cores(), "modes": results,
               "dask_overhead_s_per_slide": round(overhead, 3),
               "workers1_minus_in_process_s_per_slide": round(vs_local, 3),
               "dask_overhead_share": round(overhead / per_slide, 4), "slide_s": round(per_slide, 2),
               "load_after": round(os.getloadavg()[0], 2)}
    for name, r in results.items():
        print(f"{name:>11}: x{r['throughput_vs_in_process']:.3f} in-process throughput "
              f"(x{r['throughput_vs_in_process_with_startup']:.3f} counting cluster start-up)")
    print(f"Dask overhead: {overhead:.3f} s per slide of {per_slide:.2f} s ({overhead / per_slide:.1%}; "
          f"target <= 3 %); --workers 1 vs in-process: {vs_local:+.3f} s per slide ({vs_local / per_slide:+.1%})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
