"""End-to-end ``h2gnet segment`` on a representative ×400 phantom slide, against the model-only ceiling.

Usage:
    python benchmarks/segment_wsi.py [--width 80000 --height 60000] [--threads N] [--device cpu]
                                     [--batch-size 32] [--readers 2] [--no-refine] [--cache .bench]
                                     [--repeat 3] [--int8 minmax|percentile [--float-ends]] [--no-fast]

Makes once (cached under --cache): a phantom slide at 0.25 µm/px with a pyramid
(1, 4, 16, 64), so a 1.0 µm/px level exists as in scanners' files, chosen to be
about 40 % tissue; a MobileNetV2 patch classifier with random weights whose
batch-norm statistics are set from the slide's patches (else it outputs 0.5
everywhere); and a U-Net refiner. Then it times, in a child process,
``h2gnet segment`` per stage with patches/s and peak RSS, and in this process
the model-only ceiling: the same ONNX model on the same number of in-memory
patches, same engine, threads and batch size. When pyFAST is installed it
exports the same fp32 models with ``h2gnet export-fast`` and runs FAST's
pipeline on the same slide (after a warm-up run that compiles its OpenCL
kernels), printing h2gnet / FAST and the Dice between the two final masks;
otherwise ``fast_seconds`` is null.

The last line printed is a JSON object with at least ``seconds``,
``model_only_seconds``, ``patches``, ``peak_rss_mb`` and ``fast_seconds``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TISSUE_TARGET = 0.40


def make_slide(cache: Path, width: int, height: int, mpp: float) -> Path:
    """The benchmark slide (rendered once): the seed whose tissue fraction is closest to 40 %."""
    from h2gnet.synth import render_slide
    from h2gnet.synth.spec import make_slide_spec

    path = cache / f"phantom_{width}x{height}.tiff"
    if path.exists():
        return path
    best = None
    for seed in range(12):
        spec = make_slide_spec(seed, 2, width, height, mpp, (1, 4, 16, 64))
        frac = float((spec.tissue > 0).mean())
        if best is None or abs(frac - TISSUE_TARGET) < abs(best[1] - TISSUE_TARGET):
            best = (spec, frac)
    spec, frac = best
    print(f"rendering the benchmark slide {width}×{height} px at {mpp} µm/px (seed {spec.seed}, "
          f"{frac:.0%} tissue) -> {path}", flush=True)
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    render_slide(path, spec, progress=True)
    print(f"rendered in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def make_models(cache: Path, slide_path: Path) -> tuple[Path, Path]:
    """A MobileNetV2 classifier (batch norm calibrated on the slide's patches) and a U-Net refiner."""
    patch, refine = cache / "mobilenetv2_calibrated.onnx", cache / "unet_1024.onnx"
    if patch.exists() and refine.exists():
        return patch, refine
    import torch

    from h2gnet.io.slides import open_slide
    from h2gnet.train.export import export_classifier_onnx, export_refiner_onnx
    from h2gnet.train.models import build_classifier, build_refiner, calibrate_batchnorm

    torch.manual_seed(0)
    model = build_classifier("mobilenetv2", weights=None).to(memory_format=torch.channels_last)
    slide = open_slide(slide_path)
    rng = np.random.default_rng(0)
    w, h = slide.dimensions

    def batches():
        for _ in range(8):
            locs = [(int(rng.integers(0, w - 1024)), int(rng.integers(0, h - 1024))) for _ in range(16)]
            imgs = np.stack([slide.read_region(loc, (256, 256), 1.0) for loc in locs])
            yield torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255)

    calibrate_batchnorm(model, batches())
    export_classifier_onnx(model.eval(), patch, 256, mpp=1.0, arch="mobilenetv2")
    export_refiner_onnx(build_refiner("unet").eval(), refine, 1024, arch="unet")
    return patch, refine


def make_int8(cache: Path, patch: Path, slide_path: Path, calibration: str, float_ends: bool = False) -> Path:
    """The patch model quantised to int8, calibrated on 256 tissue patches of the slide (cached);
    ``float_ends`` keeps its first convolution and its head in float32."""
    out = cache / f"{patch.stem}.int8-{calibration}{'-float-ends' if float_ends else ''}.onnx"
    if out.exists():
        return out
    from h2gnet.infer.quantize import quantize_onnx
    from h2gnet.io.slides import open_slide

    slide = open_slide(slide_path)
    xs, ys = tissue_patches(slide_path)
    pick = np.random.default_rng(1).choice(len(xs), 256, replace=False)
    imgs = np.stack([slide.read_region((int(xs[i]), int(ys[i])), (256, 256), 1.0) for i in pick])
    x = (imgs.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return quantize_onnx(patch, out, [x[i:i + 16] for i in range(0, 256, 16)], calibration, float_ends=float_ends)


@functools.cache
def tissue_patches(slide_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (x, y) of the slide's 256-px patches at 1 µm/px with > 25 % tissue, as ``segment`` picks
    them (computed once per slide)."""
    from h2gnet.infer import heatmap
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.grid import PatchGrid
    from h2gnet.patches.tissue import detect_tissue

    slide = open_slide(slide_path)
    grid = PatchGrid(slide.dimensions, slide.mpp, 256, 1.0)
    return heatmap.tissue_patches(grid, detect_tissue(slide))[2:]


def read_only(slide_path: Path, args: argparse.Namespace) -> tuple[float, float, int]:
    """(wall s, CPU s, patches) to read the slide's tissue patches the way ``segment`` does, no model."""
    from h2gnet.infer.heatmap import patch_batches
    from h2gnet.io.slides import open_slide

    slide = open_slide(slide_path)
    xs, ys = tissue_patches(slide_path)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in patch_batches(slide, xs, ys, 256, 1.0, args.batch_size, args.readers, max(2, 2 * args.readers)):
        pass
    return time.perf_counter() - t0, time.process_time() - c0, len(xs)


def refine_only(refine: Path, args: argparse.Namespace) -> float:
    """Seconds for one pass of the refiner on a 1024² input (same engine and threads)."""
    from h2gnet.infer.runtime import OnnxModel, default_threads

    model = OnnxModel(refine, "refiner", args.device, args.threads or default_threads(), args.precision)
    x = np.random.default_rng(0).random((1, model.in_channels, model.input_size, model.input_size), dtype=np.float32)
    model(x)  # warm-up
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def run_fast(slide: Path, patch: Path, refine: Path | None, cache: Path, h2gnet_out: Path) -> dict | None:
    """FAST's run of the exported pipeline on the slide (None without pyFAST): child-process wall time,
    pipeline time, and the Dice of its final mask against h2gnet's at 8 µm/px."""
    from h2gnet.fast.fpl import export_fast
    from h2gnet.fast.runner import fast_available, mask_dice, run_fast_pipeline, segmentation_raster

    if not fast_available():
        return None
    from fast_run import warmup_slide  # benchmarks/fast_run.py
    from h2gnet.evaluation.predictions import load_mask_tiff

    out = cache / "fast"
    fpl = export_fast(patch, refine, out / "pipeline")
    home = out / "fast-home"
    run_fast_pipeline(fpl, warmup_slide(out), out / "warmup", fast_home=home, timeout=600)
    r = run_fast_pipeline(fpl, slide, out / "run", fast_home=home, timeout=1800)
    summary = json.loads((h2gnet_out / f"{slide.stem}.json").read_text())
    ours = load_mask_tiff(h2gnet_out / f"{slide.stem}.mask.tiff", float(summary["slide_mpp"]))
    dice = mask_dice(segmentation_raster(r, 8.0), ours, tuple(summary["dimensions_l0"]))
    return {"process_seconds": r.process_seconds, "seconds": r.seconds, "dice_vs_h2gnet": dice}


def run_segment(slide: Path, patch: Path, refine: Path | None, out: Path, args: argparse.Namespace) -> dict:
    """``h2gnet segment`` in a child process; returns its summary plus wall time, CPU time and peak RSS."""
    cmd = [sys.executable, "-m", "h2gnet.cli", "-q", "segment", str(slide), "--patch-model", str(patch),
           "-o", str(out), "--overwrite", "--device", args.device, "--precision", args.precision,
           "--batch-size", str(args.batch_size),
           "--readers", str(args.readers)]
    cmd += ["--refine-model", str(refine)] if refine else ["--no-refine"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((out / f"{slide.stem}.json").read_text())
    summary["wall"] = wall
    summary["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary["peak_rss_mb"] = after.ru_maxrss / 1024
    return summary


def model_only(patch: Path, n: int, args: argparse.Namespace) -> float:
    """Seconds for the same model on ``n`` in-memory patches (same engine, threads, batch size)."""
    from h2gnet.infer.runtime import OnnxModel, default_threads

    model = OnnxModel(patch, "patch-classifier", args.device, args.threads or default_threads(), args.precision)
    rng = np.random.default_rng(0)
    batch = rng.random((args.batch_size, 3, 256, 256), dtype=np.float32)
    model(batch[:2])  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(args.batch_size, n - done)
        model(batch[:k])
        done += k
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=80_000)
    ap.add_argument("--height", type=int, default=60_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--cache", type=Path, default=Path(".bench"))
    ap.add_argument("--device", default="cpu", help="cpu (ONNX Runtime), openvino, cuda, tensorrt")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="OpenVINO precision")
    ap.add_argument("--patch-model", type=Path, default=None, help="another patch model")
    ap.add_argument("--int8", choices=("minmax", "percentile"), default=None,
                    help="quantise the patch model to int8 (calibrated on the slide's patches) and use it")
    ap.add_argument("--float-ends", action="store_true", help="with --int8: first conv and head stay float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--no-fast", action="store_true", help="skip the FAST run even when pyFAST is installed")
    ap.add_argument("--repeat", type=int, default=3, help="runs of segment and of model-only (medians reported)")
    args = ap.parse_args()
    slide = make_slide(args.cache, args.width, args.height, args.mpp)
    patch, refine = make_models(args.cache, slide)
    patch = args.patch_model or patch
    if args.int8:
        patch = make_int8(args.cache, patch, slide, args.int8, args.float_ends)
    # runs alternate (segment, model-only) so that drifts of the machine hit both; medians are reported
    runs, ceilings = [], []
    for _ in range(args.repeat):
        runs.append(run_segment(slide, patch, None if args.no_refine else refine, args.cache / "out", args))
        ceilings.append(model_only(patch, int(runs[-1]["patches"]), args))
    s = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    ceiling = float(np.median(ceilings))
    n = int(s["patches"])
    if args.repeat > 1:
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
        print(f"{args.repeat} runs: end to end {walls} s; model only "
              f"{', '.join(f'{c:.1f}' for c in ceilings)} s (medians below)")
    read_wall, read_cpu, _ = read_only(slide, args)
    refine_s = 0.0 if args.no_refine else refine_only(refine, args)
    fp32_patch = make_models(args.cache, slide)[0]
    ref = None if args.no_refine else refine
    fast_run = None if args.no_fast else run_fast(slide, fp32_patch, ref, args.cache, args.cache / "out")
    fast = None if fast_run is None else round(fast_run["process_seconds"], 2)
    stages = {k: round(v, 2) for k, v in s["seconds"].items()}
    print(f"slide {args.width}×{args.height} px at {args.mpp} µm/px, {n} patches of 256×256 at 1 µm/px")
    print(f"segment end to end: {s['wall']:.1f} s wall ({n / s['wall']:.0f} patches/s), stages {stages}")
    print(f"CPU time / wall time: {s['cpu'] / s['wall']:.2f} on {os.cpu_count()} cores; peak RSS "
          f"{s['peak_rss_mb']:.0f} MB")
    print(f"model only (same model, {n} in-memory patches): {ceiling:.1f} s ({n / ceiling:.0f} patches/s); "
          f"end-to-end / model-only = {s['wall'] / ceiling:.2f}")
    heat = s["seconds"].get("heatmap", 0.0)
    print(f"patch stage (read + classify) / model-only = {heat / ceiling:.2f}; reading the patches alone: "
          f"{read_wall:.1f} s wall, {read_cpu:.1f} s CPU with {args.readers} reader threads")
    rest = s["wall"] - sum(v for k, v in s["seconds"].items() if k not in ("inference", "total"))
    print(f"beyond the patch model: refiner {refine_s:.1f} s (one 1024² pass), tissue "
          f"{s['seconds'].get('tissue', 0):.1f} s, writing {s['seconds'].get('write', 0):.1f} s, process start "
          f"and model loading {rest:.1f} s")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    floor = ceiling + read_cpu / cores + refine_s + rest
    print(f"floor on these {cores} cores ≈ model-only + reading CPU / cores + one refiner pass + process start "
          f"= {floor:.1f} s (ratio {floor / ceiling:.2f}); measured {s['wall']:.1f} s")
    if fast_run is not None:
        print(f"FAST (pyFAST, same fp32 models, exported pipeline): {fast_run['process_seconds']:.1f} s wall "
              f"({fast_run['seconds']:.1f} s pipeline); h2gnet / FAST = {s['wall'] / fast_run['process_seconds']:.2f}; "
              f"Dice of the two final masks {fast_run['dice_vs_h2gnet']:.3f}; 2× FAST would be "
              f"{fast_run['process_seconds'] / 2:.1f} s, {fast_run['process_seconds'] / 2 - ceiling:.1f} s beyond "
              f"the patch model")
    else:
        print("FAST: not run (pyFAST not installed, or --no-fast)")
    print(json.dumps({"seconds": round(s["wall"], 2), "model_only_seconds": round(ceiling, 2), "patches": n,
                      "peak_rss_mb": round(s["peak_rss_mb"], 1), "fast_seconds": fast,
                      "ratio_to_model_only": round(s["wall"] / ceiling, 3), "stages": stages,
                      "cpu_over_wall": round(s["cpu"] / s["wall"], 2), "device": args.device,
                      "engine": s.get("engine"), "precision": args.precision, "model": str(patch),
                      "threads": args.threads, "batch_size": args.batch_size,
                      "patch_stage_ratio": round(heat / ceiling, 3), "read_only_seconds": round(read_wall, 2),
                      "read_only_cpu_seconds": round(read_cpu, 2), "refine_only_seconds": round(refine_s, 2),
                      "startup_seconds": round(rest, 2), "floor_seconds": round(floor, 2), "repeat": args.repeat,
                      "runs_seconds": [round(r["wall"], 2) for r in runs],
                      "model_only_runs_seconds": [round(c, 2) for c in ceilings],
                      "fast_pipeline_seconds": None if fast_run is None else round(fast_run["seconds"], 2),
                      "fast_dice_vs_h2gnet": None if fast_run is None else round(fast_run["dice_vs_h2gnet"], 4)}))


if __name__ == "__main__":
    main()
