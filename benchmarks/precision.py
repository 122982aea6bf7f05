"""Accuracy and speed of reduced precision for the patch classifier, on a cohort's test slides.

Usage:
    python benchmarks/precision.py STUDY_DIR [--refine unet] [--threads 2]

STUDY_DIR is an ``h2gnet ablation`` or ``h2gnet demo`` folder (cohort/, index/, runs/mob, runs/<refine>).
Variants: ONNX Runtime fp32 (the reference), ONNX Runtime int8 (static quantisation calibrated on
256 training patches: min/max ranges, percentile ranges, and min/max with the first convolution and
the head kept in float32), and, when ``openvino`` is installed, OpenVINO
fp32 / bf16 and OpenVINO running the same int8 models. For each it prints
the patch balanced accuracy on the test slides, the mean Dice of the refined segmentation of the
test slides, the Dice against the fp32 segmentation, and model-only patches per second. The last
line is a JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from h2gnet.conventions import slide_outputs
from h2gnet.evaluation.patch_accuracy import evaluate_patch_model
from h2gnet.evaluation.predictions import evaluate_predictions
from h2gnet.infer.quantize import QuantizeConfig, quantize_patch_model
from h2gnet.infer.runtime import OnnxModel, openvino_available
from h2gnet.infer.segment import SegmentConfig, segment_many
from h2gnet.io.manifest import read_manifest, select
from h2gnet.outputs.mask_tiff import load_mask_tiff
from h2gnet.patches.sampling import load_indexes


def throughput(model: OnnxModel, n: int = 256, batch: int = 16) -> float:
    x = np.random.default_rng(0).random((batch, 3, model.input_size, model.input_size), dtype=np.float32)
    model(x)
    t0 = time.perf_counter()
    for _ in range(n // batch):
        model(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--refine", default="unet")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    manifest, index = args.study / "cohort" / "manifest.csv", args.study / "index"
    fp32 = args.study / "runs" / "mob" / "model.onnx"
    refine = args.study / "runs" / args.refine / "model.onnx"
    out = args.study / "precision"
    # name: (file, calibration, first conv and head kept in float32)
    recipes = {"minmax": (out / "mob.int8.onnx", "minmax", False),
               "percentile": (out / "mob.int8-percentile.onnx", "percentile", False),
               "minmax-ends": (out / "mob.int8-float-ends.onnx", "minmax", True)}
    int8 = {name: path for name, (path, _, _) in recipes.items()}
    for path, method, float_ends in recipes.values():
        if not path.exists():
            quantize_patch_model(fp32, path, QuantizeConfig(manifest, index, patches=256, calibration=method,
                                                            float_ends=float_ends))
    tests = [e for e in select(read_manifest(manifest), "test") if e.annotation]
    test_ix = load_indexes(tests, index)
    variants = [("onnxruntime-fp32", fp32, "cpu", "fp32"), ("onnxruntime-int8", int8["minmax"], "cpu", "fp32"),
                ("onnxruntime-int8-pct", int8["percentile"], "cpu", "fp32"),
                ("onnxruntime-int8-ends", int8["minmax-ends"], "cpu", "fp32")]
    if openvino_available():
        variants += [("openvino-fp32", fp32, "openvino", "fp32"), ("openvino-bf16", fp32, "openvino", "bf16"),
                     ("openvino-int8", int8["minmax"], "openvino", "fp32"),
                     ("openvino-int8-pct", int8["percentile"], "openvino", "fp32"),
                     ("openvino-int8-ends", int8["minmax-ends"], "openvino", "fp32")]
    results: dict[str, dict] = {}
    for name, model_path, device, precision in variants:
        model = OnnxModel(model_path, "patch-classifier", device, args.threads, precision)
        acc = evaluate_patch_model(model, test_ix, per_class=None, progress=False)["balanced_accuracy"]
        pred_dir = out / name
        cfg = SegmentConfig(patch_model=model_path, refine_model=refine, device=device, precision=precision,
                            threads=args.threads, progress=False, adaptive=None)  # dense: the same patches
        segment_many([str(e.slide) for e in tests], pred_dir, cfg)
        rows = evaluate_predictions(tests, pred_dir, progress=False)
        results[name] = {"patch_balanced_accuracy": acc, "dice": float(np.mean([r["dice"] for r in rows])),
                         "patches_per_second": throughput(model)}
    ref_dir = out / "onnxruntime-fp32"
    for name in results:
        agreement = []
        for e in tests:
            a = load_mask_tiff(slide_outputs(ref_dir, e.key).mask, 1.0).array
            b = load_mask_tiff(slide_outputs(out / name, e.key).mask, 1.0).array
            agreement.append(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
        results[name]["dice_vs_fp32"] = float(np.mean(agreement))
    base = results["onnxruntime-fp32"]
    for name, r in results.items():
        print(f"{name:20s} patch bal. acc {r['patch_balanced_accuracy']:.4f}  Dice {r['dice']:.4f} "
              f"(Δ {r['dice'] - base['dice']:+.4f}, vs fp32 mask {r['dice_vs_fp32']:.4f})  "
              f"{r['patches_per_second']:.0f} patches/s ({r['patches_per_second'] / base['patches_per_second']:.2f}×)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
