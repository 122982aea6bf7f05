"""End-to-end ``h2gnet segment`` on a representative ×400 phantom slide, against the model-only ceiling.

Usage:
    python benchmarks/segment_wsi.py [--width 80000 --height 60000] [--threads N] [--device cpu]
                                     [--batch-size 32] [--readers 2] [--no-refine] [--cache .bench]

Makes once (cached under --cache): a phantom slide at 0.25 µm/px with a pyramid
(1, 4, 16, 64), so a 1.0 µm/px level exists as in scanners' files, chosen to be
about 40 % tissue; a MobileNetV2 patch classifier with random weights whose
batch-norm statistics are set from the slide's patches (else it outputs 0.5
everywhere); and a U-Net refiner. Then it times, in a child process,
``h2gnet segment`` per stage with patches/s and peak RSS, and in this process
the model-only ceiling: the same ONNX model on the same number of in-memory
patches, same engine, threads and batch size. When pyFAST is installed it
would also run FAST (not available here: ``fast_seconds`` is null).

The last line printed is a JSON object with at least ``seconds``,
``model_only_seconds``, ``patches``, ``peak_rss_mb`` and ``fast_seconds``.
"""

from __future__ import annotations

import argparse
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

    from h2gnet.export import export_classifier_onnx, export_refiner_onnx
    from h2gnet.models import build_classifier, build_refiner, calibrate_batchnorm
    from h2gnet.slides import open_slide

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
    from h2gnet.inference import OnnxModel, default_threads

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
    ap.add_argument("--patch-model", type=Path, default=None, help="another patch model (e.g. int8)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--no-refine", action="store_true")
    args = ap.parse_args()
    slide = make_slide(args.cache, args.width, args.height, args.mpp)
    patch, refine = make_models(args.cache, slide)
    patch = args.patch_model or patch
    s = run_segment(slide, patch, None if args.no_refine else refine, args.cache / "out", args)
    n = int(s["patches"])
    ceiling = model_only(patch, n, args)
    fast = None
    try:
        import fast as _fast  # noqa: F401  (pyFAST)
        print("pyFAST is installed, but this benchmark's FAST run is not implemented yet", file=sys.stderr)
    except ImportError:
        pass
    stages = {k: round(v, 2) for k, v in s["seconds"].items()}
    print(f"slide {args.width}×{args.height} px at {args.mpp} µm/px, {n} patches of 256×256 at 1 µm/px")
    print(f"segment end to end: {s['wall']:.1f} s wall ({n / s['wall']:.0f} patches/s), stages {stages}")
    print(f"CPU time / wall time: {s['cpu'] / s['wall']:.2f} on {os.cpu_count()} cores; peak RSS "
          f"{s['peak_rss_mb']:.0f} MB")
    print(f"model only (same model, {n} in-memory patches): {ceiling:.1f} s ({n / ceiling:.0f} patches/s); "
          f"end-to-end / model-only = {s['wall'] / ceiling:.2f}")
    print(json.dumps({"seconds": round(s["wall"], 2), "model_only_seconds": round(ceiling, 2), "patches": n,
                      "peak_rss_mb": round(s["peak_rss_mb"], 1), "fast_seconds": fast,
                      "ratio_to_model_only": round(s["wall"] / ceiling, 3), "stages": stages,
                      "cpu_over_wall": round(s["cpu"] / s["wall"], 2), "device": args.device,
                      "engine": s.get("engine"), "precision": args.precision, "model": str(patch),
                      "threads": args.threads, "batch_size": args.batch_size}))


if __name__ == "__main__":
    main()
