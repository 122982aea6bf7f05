"""Dense vs adaptive ``h2gnet segment`` with a TRAINED model on a phantom slide with tumour, against FAST.

Usage:
    python benchmarks/adaptive_wsi.py [--cache .bench] [--width 80000 --height 60000] [--repeat 3]
                                      [--device cpu|openvino|cuda|tensorrt] [--modes dense adaptive]
                                      [--no-fast] [--train-only] [--study DIR]

Makes once (cached under ``--cache``):

* the models: ``h2gnet ablation`` with the built-in CPU config restricted to
  designs Mob-PW and Mob-PW-UNet (66 phantom slides; 128-px patches at 2 µm/px,
  random initialisation; a 512-px U-Net refiner): phantom cohort → patch index →
  patch classifier → dense heatmaps → refiner, about an hour on two free
  cores. The same study folder (``--study``) serves ``benchmarks/adaptive.py``,
  the accuracy study on its 33 test slides;
* the benchmark slide of ``benchmarks/segment_wsi.py`` (80,000 × 60,000 px at
  0.25 µm/px, pyramid 1-4-16-64, the seed closest to 40 % tissue; the
  generator always draws a tumour region) and its ground-truth annotation.

Then, ``--repeat`` times and alternating the modes (so that drifts of a shared
machine hit all of them), it runs ``h2gnet segment`` in a child process
(``--dense`` and ``--adaptive``) and records wall and CPU seconds, peak RSS of
that child, patches classified, and the stages of the summary; and the patch
model alone on as many in-memory patches. Masks are compared at 8 µm/px with the
dense mask and with the ground truth. With pyFAST installed, the same fp32
models are exported with ``h2gnet export-fast`` and FAST's pipeline runs on the
slide (after a warm-up that compiles its OpenCL kernels).

The last line printed is a JSON object: per mode ``seconds`` (median wall),
``patches``, ``classified_fraction``, ``peak_rss_mb``, ``dice_vs_dense``,
``dice_vs_truth``, ``stages``, ``model_only_seconds``; and ``fast_seconds``,
``fast_dice_vs_truth``, the ratios ``fast_over_<mode>`` and the load average.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_wsi import FAST_ENGINES, STAGES, add_slide_options, make_slide, make_truth, run_measured

EVAL_MPP = 8.0


TRAIN_DESIGNS = ["mob-pw", "mob-pw-unet"]
#: --short-training: what fits a 2-core machine shared with other jobs (load ~15): 60 classifier steps
#: instead of 240, 40 refiner epochs instead of 70, one PyTorch thread (no OpenMP spinning when oversubscribed)
SHORT_TRAINING = {"patch": {"threads": 1, "epochs": 4, "steps": 15, "val_steps": 2},
                  "refine": {"threads": 1, "epochs": 40, "patience": 40}}


def study_config(path: Path, short: bool = False) -> Path:
    """The built-in CPU ablation config (66 phantom slides, 128-px patches at 2 µm/px, 256-px U-Net)
    restricted to the two designs whose models the benchmark needs (``short``: :data:`SHORT_TRAINING`);
    written to ``path``."""
    from h2gnet.study.ablation import load_config

    text = ["designs = [" + ", ".join(f'"{d}"' for d in TRAIN_DESIGNS) + "]"]
    for section, values in load_config(None, "ablation-cpu").items():
        if isinstance(values, dict):
            values = {**values, **(SHORT_TRAINING.get(section, {}) if short else {})}
            text.append(f"\n[{section}]")
            text += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return path


def train_models(study: Path, short: bool = False) -> tuple[Path, Path]:
    """(patch classifier, refiner) ONNX files of an ``h2gnet ablation`` run with designs Mob-PW and
    Mob-PW-UNet in ``study`` (phantom cohort → patch index → train-patch → heatmaps → train-refine, all
    with the project's CLI; resumed where it stopped, reused when done)."""
    patch, refine = study / "runs" / "mob" / "model.onnx", study / "runs" / "unet" / "model.onnx"
    if patch.exists() and refine.exists():
        return patch, refine
    config = study_config(study.parent / f"{study.name}.toml", short)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "h2gnet.cli", "ablation", "-o", str(study), "--config", str(config)],
                   check=True)
    print(f"models trained in {time.perf_counter() - t0:.0f} s: {patch}, {refine}", flush=True)
    return patch, refine


def slide_with_truth(cache: Path, width: int, height: int, mpp: float) -> tuple[Path, Path]:
    """segment_wsi's benchmark slide (rendered once) and its tumour annotation (GeoJSON, level-0 px)."""
    return make_slide(cache, width, height, mpp), make_truth(cache, width, height, mpp)


#: The modes a run can compare (``--modes``): name -> ``h2gnet segment`` options. "adaptive" is the option's
#: defaults; "adaptive-wide" a setting for large slides (coarser lattice, the mean check; see docs/performance.md).
MODES = {"dense": ["--dense"], "adaptive": ["--adaptive"],
         "adaptive-wide": ["--adaptive", "--stride", "4", "--radius", "2", "--uncertain", "0.3", "0.7",
                           "--check", "mean"]}


def run_segment(slide: Path, patch: Path, refine: Path, out: Path, mode: str, args: argparse.Namespace) -> dict:
    """``h2gnet segment`` with the options of :data:`MODES` ``[mode]`` in a child process: its summary, wall and
    CPU seconds, its own peak RSS."""
    from h2gnet.conventions import slide_outputs

    cmd = ["-q", "segment", str(slide), "--patch-model", str(patch),
           "--refine-model", str(refine), "-o", str(out), "--overwrite", "--device", args.device,
           "--batch-size", str(args.batch_size), "--readers", str(args.readers), *MODES[mode]]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    measured = run_measured(cmd, f"segment --{mode}")
    summary = json.loads(slide_outputs(out, slide.stem).summary.read_text())
    summary.update(measured)
    return summary


def model_only(patch: Path, n: int, args: argparse.Namespace) -> float:
    """Seconds for the patch model on ``n`` in-memory patches (same engine, threads, batch size)."""
    from h2gnet.infer.runtime import OnnxModel, default_threads

    model = OnnxModel(patch, "patch-classifier", args.device, args.threads or default_threads())
    size = model.input_size
    batch = np.random.default_rng(0).random((args.batch_size, 3, size, size), dtype=np.float32)
    model(batch[:2])  # warm-up
    t0 = time.perf_counter()
    for start in range(0, n, args.batch_size):
        model(batch[: min(args.batch_size, n - start)])
    return time.perf_counter() - t0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from h2gnet.evaluation.metrics import slide_metrics

    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(slide_metrics(a[:rows, :cols], b[:rows, :cols])["dice"])


def final_mask(folder: Path, slide: Path, extent: tuple[int, int], slide_mpp: float) -> np.ndarray:
    from h2gnet.conventions import slide_outputs
    from h2gnet.outputs.mask_tiff import load_mask_tiff

    return load_mask_tiff(slide_outputs(folder, slide.stem).mask, slide_mpp).to_mpp(EVAL_MPP, extent).array


def run_fast(slide: Path, patch: Path, refine: Path, cache: Path, engine: str = "default") -> dict | None:
    """FAST's run of the exported pipeline (None without pyFAST): child-process seconds and its mask, or
    ``{"error": ...}`` when FAST fails (the h2gnet figures are still reported). ``engine``: FAST's inference
    engine ("default": FAST's own, OpenVINO in FAST 4.18; e.g. "ONNXRuntime")."""
    from h2gnet.errors import H2GNetError
    from h2gnet.fast.fpl import export_fast
    from h2gnet.fast.runner import fast_available, run_fast_pipeline, segmentation_raster

    if not fast_available():
        return None
    from fast_run import warmup_slide  # benchmarks/fast_run.py

    out = cache / f"adaptive-fast-{engine}"
    fpl = export_fast(patch, refine, out / "pipeline", inference_engine=None if engine == "default" else engine)
    home = out / "fast-home"
    try:
        run_fast_pipeline(fpl, warmup_slide(out), out / "warmup", fast_home=home, timeout=600)
        r = run_fast_pipeline(fpl, slide, out / "run", fast_home=home, timeout=1800)
    except H2GNetError as exc:
        return {"error": str(exc)[-400:]}
    return {"process_seconds": r.process_seconds, "seconds": r.seconds, "mask": segmentation_raster(r, EVAL_MPP)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_slide_options(ap)
    ap.add_argument("--device", default="cpu", help="cpu (ONNX Runtime), openvino, cuda, tensorrt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["dense", "adaptive"], choices=tuple(MODES),
                    help="what to compare (dense, adaptive, adaptive-wide: see MODES)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per mode (medians reported)")
    ap.add_argument("--no-fast", action="store_true", help="skip the FAST run even when pyFAST is installed")
    ap.add_argument("--fast-engines", nargs="+", default=list(FAST_ENGINES),
                    help="FAST's inference engines, one run each (default: FAST's default, OpenVINO, and "
                         "ONNXRuntime, which runs where FAST's OpenVINO fails on a CPU)")
    ap.add_argument("--train-only", action="store_true", help="make the cached models and slide, then stop")
    ap.add_argument("--short-training", action="store_true", help="train with SHORT_TRAINING's settings")
    ap.add_argument("--patch-model", type=Path, default=None, help="use this classifier (with --refine-model)")
    ap.add_argument("--refine-model", type=Path, default=None, help="use this refiner (with --patch-model)")
    ap.add_argument("--study", type=Path, default=None,
                    help="ablation study folder holding (or to receive) the trained models (default CACHE/study)")
    args = ap.parse_args()

    from h2gnet.io.annotations import load_annotation
    from h2gnet.io.slides import open_slide

    if args.patch_model and args.refine_model:
        patch, refine = args.patch_model, args.refine_model
    else:
        patch, refine = train_models(args.study or args.cache / "study", args.short_training)
    slide, truth_path = slide_with_truth(args.cache, args.width, args.height, args.mpp)
    if args.train_only:
        return
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {m: [] for m in args.modes}
    ceilings: dict[str, list[float]] = {m: [] for m in args.modes}
    for _ in range(args.repeat):
        for mode in args.modes:
            runs[mode].append(run_segment(slide, patch, refine, args.cache / "adaptive-out" / mode, mode, args))
            ceilings[mode].append(model_only(patch, int(runs[mode][-1]["patches"]), args))
    first = runs[args.modes[0]][0]
    extent, slide_mpp = tuple(first["dimensions_l0"]), float(first["slide_mpp"])
    with open_slide(slide) as s:
        truth = load_annotation(truth_path, s.dimensions, s.mpp, EVAL_MPP).array
    masks = {m: final_mask(args.cache / "adaptive-out" / m, slide, extent, slide_mpp) for m in args.modes}
    reference = masks.get("dense")
    fast_runs: dict[str, dict] = {}
    for engine in [] if args.no_fast else args.fast_engines:
        r = run_fast(slide, patch, refine, args.cache, engine)
        if r is None:
            break  # no pyFAST
        fast_runs[engine] = r
    report: dict = {"slide": str(slide), "load_average_before": [round(v, 2) for v in load],
                    "load_average_after": [round(v, 2) for v in os.getloadavg()], "device": args.device,
                    "repeat": args.repeat, "tissue_patches": int(first["tissue_patches"])}
    print(f"slide {args.width}×{args.height} px at {args.mpp} µm/px, {first['tissue_patches']} tissue patches "
          f"({first['evaluation']}); load average before {load[0]:.2f}")
    for mode in args.modes:
        rs = runs[mode]
        s = sorted(rs, key=lambda r: r["wall"])[len(rs) // 2]
        stages = {k: round(v, 2) for k, v in s["seconds"].items()}
        startup = s["wall"] - sum(v for k, v in s["seconds"].items() if k in STAGES)
        row = {"seconds": round(s["wall"], 2), "runs_seconds": [round(r["wall"], 2) for r in rs],
               "patches": int(s["patches"]), "classified_fraction": s["classified_fraction"],
               "rounds": (s["evaluation"] or {}).get("rounds"),
               "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs), 1),
               "cpu_over_wall": round(s["cpu"] / s["wall"], 2), "stages": stages,
               "startup_seconds": round(startup, 2), "model_only_seconds": round(float(np.median(ceilings[mode])), 2),
               "dice_vs_truth": round(dice(masks[mode], truth), 4),
               "dice_vs_dense": None if reference is None else round(dice(masks[mode], reference), 4)}
        report[mode] = row
        print(f"{mode:9s} end to end {row['seconds']:.2f} s (runs {row['runs_seconds']}), {row['patches']} patches "
              f"({row['classified_fraction']:.1%} of tissue, rounds {row['rounds']}), peak RSS "
              f"{row['peak_rss_mb']:.0f} MB; stages {stages}, process start + model loading {startup:.2f} s; "
              f"model only on as many patches {row['model_only_seconds']:.2f} s; Dice vs truth "
              f"{row['dice_vs_truth']:.4f}, vs dense {row['dice_vs_dense']}")
    for mode in (m for m in args.modes if m != "dense" and "dense" in report):
        report[f"dense_over_{mode}"] = round(report["dense"]["seconds"] / report[mode]["seconds"], 2)
        print(f"dense / {mode} = {report[f'dense_over_{mode}']:.2f}")
    report["fast_runs"] = {}
    for engine, fast in fast_runs.items():
        if "error" in fast:
            report["fast_runs"][engine] = {"seconds": None, "error": fast["error"]}
            print(f"FAST ({engine} engine) FAILED: {fast['error']}")
            continue
        fmask = fast["mask"].to_mpp(EVAL_MPP, extent).array
        row = {"seconds": round(fast["process_seconds"], 2), "pipeline_seconds": round(fast["seconds"], 2),
               "dice_vs_truth": round(dice(fmask, truth), 4),
               "dice_vs_dense": None if reference is None else round(dice(fmask, reference), 4),
               **{f"fast_over_{m}": round(fast["process_seconds"] / report[m]["seconds"], 2) for m in args.modes}}
        report["fast_runs"][engine] = row
        print(f"FAST ({engine} engine, same fp32 models): {row['seconds']:.2f} s ({row['pipeline_seconds']:.2f} s "
              f"pipeline), Dice vs truth {row['dice_vs_truth']:.4f}; FAST / h2gnet: "
              + ", ".join(f"{m} {row[f'fast_over_{m}']:.2f}" for m in args.modes))
    # the first engine's figures under the keys of earlier versions
    first = report["fast_runs"].get(args.fast_engines[0]) if fast_runs else None
    report["fast_engine"] = args.fast_engines[0] if fast_runs else None
    report["fast_seconds"] = None if first is None else first["seconds"]
    if first is not None and "error" in first:
        report["fast_error"] = first["error"]
    elif first is not None:
        report.update({k: v for k, v in first.items() if k.startswith("fast_over_")},
                      fast_pipeline_seconds=first["pipeline_seconds"], fast_dice_vs_truth=first["dice_vs_truth"],
                      fast_dice_vs_dense=first["dice_vs_dense"])
    if not fast_runs:
        print("FAST: not run (pyFAST not installed, or --no-fast)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
