"""Where an adaptive heatmap's time goes: the patch stage, dense vs adaptive, in one process.

Usage:
    python benchmarks/adaptive_stage.py [--cache .bench] [--patch-size 256 --patch-mpp 1] [--repeat 3]
                                        [--settings default wide] [--batch-size 16] [--readers 2]
                                        [--device cpu|openvino --precision fp32|bf16]

On the whole-slide benchmark's slide and a trained patch model (both made and cached by
``benchmarks/segment_wsi.py``'s functions; ``--patch-size 128 --patch-mpp 2`` is the CPU study's patch
configuration, the default the paper's), the model loaded once, it runs
:func:`h2gnet.infer.heatmap.compute_heatmap` ``--repeat`` times per variant, alternating the variants,
each on a freshly opened slide (cold tile cache):

* ``dense``: every tissue patch;
* ``SETTING/before``: adaptive with the reading before issue 22 (each round's patches in grid order, the reader's
  64 MB tile cache);
* ``SETTING``: adaptive as it is now (:data:`~h2gnet.infer.heatmap.ADAPTIVE_READ_ORDER`, the tile cache
  raised for the run: :data:`~h2gnet.infer.heatmap.ADAPTIVE_TILE_CACHE_MB`);

for the adaptive settings of ``--settings`` ("default": ``--adaptive``'s; "wide": stride 4, radius 2, mean
in 0.3–0.7). Per variant: patch-stage seconds (median), seconds in the model, seconds the model waited for
patches, tiles decoded and cache hits, patches classified; and the figure of issue 22: adaptive patch-stage
seconds ÷ dense patch-stage seconds against the classified fraction (target: within 10 % of it). It also
checks that the two adaptive readings give the same heatmap. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_wsi import add_engine_options, add_slide_options, make_slide, make_trained_patch_model, make_truth

SETTINGS = {"default": {}, "wide": {"stride": 4, "radius": 2, "low": 0.3, "high": 0.7, "check": "mean"}}


def run_variant(slide_path: Path, model, tissue, variant: str, args: argparse.Namespace) -> dict:
    """One heatmap of ``variant`` on a freshly opened slide: its stats and heatmap."""
    from h2gnet.infer import heatmap as hm
    from h2gnet.infer.adaptive import AdaptiveConfig
    from h2gnet.io.slides import open_slide

    setting, _, reading = variant.partition("/")
    cfg = None if setting == "dense" else AdaptiveConfig(**SETTINGS[setting])
    saved = hm.ADAPTIVE_READ_ORDER, hm.ADAPTIVE_TILE_CACHE_MB
    if reading == "before":
        hm.ADAPTIVE_READ_ORDER, hm.ADAPTIVE_TILE_CACHE_MB = "grid", None
    stats = hm.HeatmapStats()
    try:
        with open_slide(slide_path) as slide:
            t0, c0 = time.perf_counter(), time.process_time()
            settings = hm.HeatmapSettings(batch_size=args.batch_size, readers=args.readers, adaptive=cfg)
            heat = hm.compute_heatmap(slide, model, tissue, settings, progress=False, stats=stats)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        hm.ADAPTIVE_READ_ORDER, hm.ADAPTIVE_TILE_CACHE_MB = saved
    return {"seconds": wall, "cpu": cpu, "inference": stats.seconds["inference"],
            "read_wait": stats.seconds["read_wait"],
            "patches": stats.patches, "tissue_patches": stats.tissue_patches, "rounds": stats.rounds,
            "tiles": stats.tiles, "heat": heat.array}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_slide_options(ap)
    ap.add_argument("--patch-size", type=int, default=256)
    ap.add_argument("--patch-mpp", type=float, default=1.0)
    ap.add_argument("--patch-model", type=Path, default=None, help="another (trained) patch model")
    ap.add_argument("--settings", nargs="+", default=["default", "wide"], choices=tuple(SETTINGS))
    ap.add_argument("--no-before", action="store_true",
                    help="skip the reading of the adaptive rounds from before issue 22")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    add_engine_options(ap)
    args = ap.parse_args()

    from h2gnet.infer.runtime import OnnxModel, default_threads
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.tissue import detect_tissue

    load = os.getloadavg()
    slide_path = make_slide(args.cache, args.width, args.height, args.mpp)
    truth = make_truth(args.cache, args.width, args.height, args.mpp)
    patch = args.patch_model or make_trained_patch_model(args.cache, slide_path, truth, args.patch_size,
                                                         args.patch_mpp)
    model = OnnxModel(patch, "patch-classifier", args.device, args.threads or default_threads(), args.precision)
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide)
    variants = ["dense"]
    for setting in args.settings:
        variants += [setting] if args.no_before else [f"{setting}/before", setting]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    run_variant(slide_path, model, tissue, "dense", args)  # warm-up: page cache, ONNX Runtime's first runs
    for _ in range(args.repeat):
        for v in variants:
            runs[v].append(run_variant(slide_path, model, tissue, v, args))
    size = model.input_size
    batch = np.random.default_rng(0).random((args.batch_size, 3, size, size), dtype=np.float32)

    def model_alone(n: int) -> float:
        t0 = time.perf_counter()
        for start in range(0, n, args.batch_size):
            model(batch[: min(args.batch_size, n - start)])
        return time.perf_counter() - t0

    report: dict = {"slide": str(slide_path), "model": str(patch), "engine": model.engine, "patch_size": size,
                    "patch_mpp": model.mpp, "repeat": args.repeat, "load_average_before": [round(v, 2) for v in load]}
    def median(values: list[float]) -> float:  # the middle run (the upper one of an even number), as for the rows
        return sorted(values)[len(values) // 2]

    dense = median([r["seconds"] for r in runs["dense"]])
    dense_cpu = median([r["cpu"] for r in runs["dense"]])
    print(f"slide {slide_path.name}, {runs['dense'][0]['tissue_patches']} tissue patches of {size} px at "
          f"{model.mpp:g} µm/px; load average before {load[0]:.2f}")
    for v in variants:
        rs = runs[v]
        s = sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2]
        cpus = [r["cpu"] for r in rs]
        frac = s["patches"] / s["tissue_patches"]
        row = {"seconds": round(s["seconds"], 3), "runs_seconds": [round(r["seconds"], 2) for r in rs],
               "inference_seconds": round(s["inference"], 3), "read_wait_seconds": round(s["read_wait"], 3),
               "model_alone_seconds": round(model_alone(s["patches"]), 3), "patches": s["patches"],
               "classified_fraction": round(frac, 4), "rounds": s["rounds"], "tiles": s["tiles"],
               "over_dense": round(s["seconds"] / dense, 3), "cpu_seconds": round(median(cpus), 3),
               "cpu_runs_seconds": [round(c, 2) for c in cpus],
               "cpu_over_dense": round(median(cpus) / dense_cpu, 3)}
        if v != "dense":
            row["over_dense_minus_fraction"] = round(row["over_dense"] - frac, 3)
            row["max_abs_diff_vs_dense"] = round(float(np.abs(s["heat"] - runs["dense"][0]["heat"]).max()), 4)
        report[v] = row
        print(f"{v:16s} patch stage {row['seconds']:.2f} s (runs {row['runs_seconds']}), model "
              f"{row['inference_seconds']:.2f} s "
              f"(alone {row['model_alone_seconds']:.2f} s), waiting for patches {row['read_wait_seconds']:.2f} s, "
              f"tiles {row['tiles']}, {row['patches']} patches ({frac:.1%}), rounds {row['rounds']}; "
              f"/ dense = {row['over_dense']:.3f}; CPU {row['cpu_seconds']:.2f} s (runs {row['cpu_runs_seconds']}), "
              f"/ dense = {row['cpu_over_dense']:.3f}")
    for setting in args.settings:
        if not args.no_before:
            same = float(np.abs(runs[setting][0]["heat"] - runs[f"{setting}/before"][0]["heat"]).max())
            report[setting]["max_abs_diff_vs_before"] = round(same, 6)
        frac = report[setting]["classified_fraction"]
        for what in ("over_dense", "cpu_over_dense"):
            ok = report[setting][what] <= frac * 1.1
            print(f"{setting}: patch stage {'wall' if what == 'over_dense' else 'CPU'} time / dense "
                  f"{report[setting][what]:.3f} for {frac:.1%} classified (target ≤ {frac * 1.1:.3f}: "
                  f"{'met' if ok else 'NOT met'})")
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
