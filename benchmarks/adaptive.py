"""Accuracy of adaptive patch evaluation against dense, per test slide of an ablation study.

Usage:
    python benchmarks/adaptive.py STUDY [--out DIR] [--patch-model runs/mob/model.onnx]
                                  [--refine-model runs/unet/model.onnx] [--stride 2] [--uncertain 0.1 0.9]
                                  [--split test]

``STUDY`` is an ``h2gnet ablation`` output folder (e.g. ``h2gnet ablation -o /work/abl`` with
``designs = ["mob-pw", "mob-pw-unet"]``): its cohort manifest, its Mob-PW classifier and its U-Net
refiner are used. Every slide of the split is segmented twice in this process with the same loaded
models, dense and adaptive (``--stride``, ``--uncertain``), into ``OUT/dense`` (reused by later runs with
other settings; their dense seconds are then the summaries' totals) and ``OUT/sSTRIDE-rRADIUS-LOW-HIGH-CHECK``.
Per slide: fraction of tissue patches classified, seconds of each run, Dice against the ground truth
(refined mask, and the patch-wise mask heatmap > 0.5) and Dice of the adaptive mask against the
dense one, at 8 µm/px. Writes ``slides.csv`` and ``summary.json`` beside the adaptive masks; prints a table, the means,
the worst slide and whether the acceptance criteria of adaptive-by-default hold (mean drop of the
refined Dice vs truth ≤ 0.005, worst ≤ 0.02, Dice vs dense ≥ 0.99 on every slide).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np

EVAL_MPP = 8.0
MAX_MEAN_DROP, MAX_WORST_DROP, MIN_DICE_VS_DENSE = 0.005, 0.02, 0.99


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    from h2gnet.evaluation.metrics import slide_metrics

    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(slide_metrics(a[:rows, :cols], b[:rows, :cols])["dice"])


def main() -> None:
    from h2gnet.conventions import slide_outputs
    from h2gnet.infer.adaptive import AdaptiveConfig
    from h2gnet.infer.heatmap import load_heatmap
    from h2gnet.infer.segment import Models, SegmentConfig, segment_slide
    from h2gnet.io.annotations import load_annotation
    from h2gnet.io.atomic import write_text
    from h2gnet.io.manifest import read_manifest, select
    from h2gnet.io.raster import Raster
    from h2gnet.io.slides import open_slide
    from h2gnet.outputs.mask_tiff import load_mask_tiff
    from h2gnet.params import default_of

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--out", type=Path, default=None,
                    help="default: STUDY/adaptive-study (dense/ reused by later runs, sSTRIDE-rRADIUS-LOW-HIGH-CHECK/ "
                         "per setting)")
    ap.add_argument("--patch-model", type=Path, default=None, help="default: STUDY/runs/mob/model.onnx")
    ap.add_argument("--refine-model", type=Path, default=None, help="default: STUDY/runs/unet/model.onnx")
    ap.add_argument("--stride", type=int, default=default_of(AdaptiveConfig, "stride"))
    ap.add_argument("--uncertain", type=float, nargs=2,
                    default=(default_of(AdaptiveConfig, "low"), default_of(AdaptiveConfig, "high")))
    ap.add_argument("--radius", type=int, default=None, help="default: stride // 2")
    ap.add_argument("--check", default=default_of(AdaptiveConfig, "check"), choices=("any", "mean"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    adaptive = AdaptiveConfig(stride=args.stride, radius=args.radius, low=args.uncertain[0], high=args.uncertain[1],
                              check=args.check)
    root = args.out or args.study / "adaptive-study"
    name = f"s{adaptive.stride}-r{adaptive.window // 2}-{adaptive.low:g}-{adaptive.high:g}-{adaptive.check}"
    out = {"dense": root / "dense", "adaptive": root / name}
    patch = args.patch_model or args.study / "runs" / "mob" / "model.onnx"
    refine = args.refine_model or args.study / "runs" / "unet" / "model.onnx"
    entries = [e for e in select(read_manifest(args.study / "cohort" / "manifest.csv"), args.split)
               if e.annotation is not None]
    cfgs = {"dense": SegmentConfig(patch, refine, threads=args.threads, progress=False, adaptive=None),
            "adaptive": SegmentConfig(patch, refine, threads=args.threads, progress=False, adaptive=adaptive)}
    models = Models.load(cfgs["dense"])
    load = os.getloadavg()
    rows = []
    for e in entries:
        row: dict = {"slide": e.key, "grade": e.grade}
        masks, patchwise = {}, {}
        with open_slide(e.slide, e.mpp) as slide:
            truth = load_annotation(e.annotation, slide.dimensions, slide.mpp, EVAL_MPP,
                                    mask_downsample=e.annotation_downsample).array
            for mode, cfg in cfgs.items():
                paths = slide_outputs(out[mode], e.key)
                if mode == "dense" and paths.summary.exists():  # an earlier run's dense result (same models)
                    summary = json.loads(paths.summary.read_text())
                    row["dense_seconds"] = summary["seconds"]["total"]
                else:
                    t0 = time.perf_counter()
                    summary = segment_slide(slide, out[mode], models, cfg)
                    row[f"{mode}_seconds"] = round(time.perf_counter() - t0, 3)
                masks[mode] = load_mask_tiff(paths.mask, slide.mpp).to_mpp(EVAL_MPP, slide.dimensions).array
                heat, _ = load_heatmap(paths.heatmap)
                pw = Raster(heat.array > 0.5, heat.mpp, heat.slide_mpp)
                patchwise[mode] = pw.to_mpp(EVAL_MPP, slide.dimensions).array
                if mode == "adaptive":
                    row["tissue_patches"] = summary["tissue_patches"]
                    row["classified"] = summary["patches"]
                    row["fraction"] = summary["classified_fraction"]
                    row["rounds"] = len(summary["evaluation"]["rounds"])
        for mode in cfgs:
            row[f"dice_{mode}"] = round(_dice(masks[mode], truth), 4)
            row[f"pw_dice_{mode}"] = round(_dice(patchwise[mode], truth), 4)
        row["drop"] = round(row["dice_dense"] - row["dice_adaptive"], 4)
        row["dice_vs_dense"] = round(_dice(masks["adaptive"], masks["dense"]), 4)
        row["pw_dice_vs_dense"] = round(_dice(patchwise["adaptive"], patchwise["dense"]), 4)
        rows.append(row)
        print(f"{e.key}: fraction {row['fraction']:.2f}, Dice vs truth dense {row['dice_dense']:.4f} adaptive "
              f"{row['dice_adaptive']:.4f}, vs dense {row['dice_vs_dense']:.4f}", flush=True)

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4)

    worst = max(rows, key=lambda r: (r["drop"], -r["dice_vs_dense"]))
    least = min(rows, key=lambda r: r["dice_vs_dense"])
    total_patches = sum(r["tissue_patches"] for r in rows)
    summary = {
        "study": str(args.study),
        "adaptive": {"stride": adaptive.stride, "radius": adaptive.window // 2, "low": adaptive.low,
                     "high": adaptive.high, "check": adaptive.check},
        "slides": len(rows), "load_average_before": [round(v, 2) for v in load],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "fraction_mean": mean("fraction"),
        "fraction_pooled": round(sum(r["classified"] for r in rows) / total_patches, 4),
        "dice_dense_mean": mean("dice_dense"), "dice_adaptive_mean": mean("dice_adaptive"),
        "drop_mean": mean("drop"), "drop_worst": worst["drop"], "worst_slide": worst["slide"],
        "dice_vs_dense_mean": mean("dice_vs_dense"), "dice_vs_dense_min": least["dice_vs_dense"],
        "dice_vs_dense_min_slide": least["slide"],
        "pw_dice_dense_mean": mean("pw_dice_dense"), "pw_dice_adaptive_mean": mean("pw_dice_adaptive"),
        "pw_dice_vs_dense_mean": mean("pw_dice_vs_dense"),
        "seconds_dense": round(sum(r["dense_seconds"] for r in rows), 2),
        "seconds_adaptive": round(sum(r["adaptive_seconds"] for r in rows), 2),
    }
    summary["criteria_hold"] = bool(summary["drop_mean"] <= MAX_MEAN_DROP and summary["drop_worst"] <= MAX_WORST_DROP
                                    and summary["dice_vs_dense_min"] >= MIN_DICE_VS_DENSE)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out["adaptive"] / "slides.csv", buf.getvalue())
    write_text(out["adaptive"] / "summary.json", json.dumps(summary, indent=2))
    print(buf.getvalue(), end="")
    print(f"{len(rows)} slides, adaptive {adaptive}: fraction classified {summary['fraction_mean']:.3f} (mean), "
          f"{summary['fraction_pooled']:.3f} (pooled); refined Dice vs truth dense {summary['dice_dense_mean']:.4f}, "
          f"adaptive {summary['dice_adaptive_mean']:.4f} (drop {summary['drop_mean']:+.4f} mean, "
          f"{summary['drop_worst']:+.4f} worst: {summary['worst_slide']}); Dice vs dense "
          f"{summary['dice_vs_dense_mean']:.4f} mean, {summary['dice_vs_dense_min']:.4f} min "
          f"({summary['dice_vs_dense_min_slide']}); seconds dense {summary['seconds_dense']:.1f}, adaptive "
          f"{summary['seconds_adaptive']:.1f}; criteria for adaptive by default: "
          f"{'hold' if summary['criteria_hold'] else 'DO NOT hold'}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
