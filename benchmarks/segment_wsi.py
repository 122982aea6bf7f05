"""End-to-end ``h2gnet segment`` (dense and adaptive) on a representative ×400 phantom slide, against the
model-only ceiling and FAST.

Usage:
    python benchmarks/segment_wsi.py [--width 80000 --height 60000] [--threads N] [--device cpu]
                                     [--batch-size 16] [--readers 2] [--no-refine] [--cache .bench]
                                     [--repeat 3] [--modes dense adaptive] [--patch-size 256 --patch-mpp 1]
                                     [--random-model] [--int8 minmax|percentile [--float-ends]]
                                     [--fast-engines default ONNXRuntime] [--no-fast]

Makes once (cached under --cache): a phantom slide at 0.25 µm/px with a pyramid
(1, 4, 16, 64), so a 1.0 µm/px level exists as in scanners' files, chosen to be
about 40 % tissue, and its tumour annotation; a TRAINED MobileNetV2 patch
classifier in the paper's patch configuration (256 px at 1 µm/px by default;
``--patch-size``/``--patch-mpp`` for others): :func:`make_trained_patch_model`,
about a minute (``--random-model``: the earlier model with random weights and
batch norm set from the slide's patches); and a U-Net refiner (random weights: its final masks time the
refinement stage but say little, so masks are also compared patch-wise, heatmap > 0.5).
Then, ``--repeat`` times and alternating the ``--modes`` (``dense``: ``segment
--dense``; ``adaptive``: ``segment --adaptive`` with its defaults), it times
``h2gnet segment`` in a child process per stage with patches/s and peak RSS,
and in this process the model-only ceiling: the same ONNX model on as many
in-memory patches, same engine, threads and batch size. When pyFAST is
installed it exports the same fp32 models with ``h2gnet export-fast`` and runs
FAST's pipeline on the same slide (after a warm-up run that compiles its OpenCL
kernels) once per engine of ``--fast-engines`` (default: FAST's default engine,
OpenVINO, and ONNX Runtime, so that a figure against FAST exists where its
OpenVINO engine fails on the CPU), printing FAST / h2gnet and the Dice between
the final masks; otherwise ``fast_seconds`` is null.

The last line printed is a JSON object with at least ``seconds`` (the median
wall time of ``segment``'s default mode), ``model_only_seconds``, ``patches``,
``peak_rss_mb``, ``fast_seconds`` and ``fast_dice_vs_h2gnet`` (FAST's default
engine; null when it failed, with ``fast_error``), ``modes`` (per mode: seconds,
patches, ``classified_fraction``, rounds, stages, Dice vs dense and vs truth)
and ``fast_runs`` (per FAST engine: seconds or error, Dice vs h2gnet's default).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TISSUE_TARGET = 0.40


def add_slide_options(ap: argparse.ArgumentParser) -> None:
    """The benchmark slide's options (level-0 px, µm/px) and the cache folder, shared by the whole-slide benchmarks."""
    ap.add_argument("--width", type=int, default=80_000)
    ap.add_argument("--height", type=int, default=60_000)
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--cache", type=Path, default=Path(".bench"))


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


def make_truth(cache: Path, width: int, height: int, mpp: float) -> Path:
    """The benchmark slide's tumour annotation (GeoJSON, level-0 px; written once beside the slide)."""
    from h2gnet.synth.annotation import geojson_text
    from h2gnet.synth.spec import make_slide_spec

    truth = make_slide(cache, width, height, mpp).with_suffix(".geojson")
    if not truth.exists():
        best = None
        for seed in range(12):  # make_slide's choice of seed
            spec = make_slide_spec(seed, 2, width, height, mpp, (1, 4, 16, 64))
            frac = float((spec.tissue > 0).mean())
            if best is None or abs(frac - TISSUE_TARGET) < abs(best[1] - TISSUE_TARGET):
                best = (spec, frac)
        truth.write_text(geojson_text(best[0]))
    return truth


#: The trained patch model's training set: tissue patches of the benchmark slide whose tumour fraction is
#: at most 0.2 (normal) or at least 0.8 (tumour), this many of each class at most.
TRAIN_PATCHES_PER_CLASS = 192


def make_trained_patch_model(cache: Path, slide_path: Path, truth: Path, size: int = 256,
                             patch_mpp: float = 1.0) -> Path:
    """A TRAINED MobileNetV2 patch classifier at ``size`` px and ``patch_mpp`` µm/px (cached in ``cache``).

    Made in about a minute on two cores, so that every benchmark run can have one: the backbone keeps its
    seeded random weights with batch norm calibrated on the slide's patches, and the head (the paper's
    simplified head) is trained on the pooled features of up to :data:`TRAIN_PATCHES_PER_CLASS` clear
    tumour and normal tissue patches of the slide (labels from its annotation; Adam, 300 full-batch steps,
    seeded). Its heatmaps are confident inside regions and uncertain at borders, like a study model's,
    which is what the adaptive evaluation's work depends on; its accuracy is not the point.
    """
    out = cache / f"mobilenetv2_trained_{size}px_{patch_mpp:g}um.onnx"
    if out.exists():
        return out
    import torch

    from h2gnet.infer.heatmap import tissue_patches as grid_tissue_patches
    from h2gnet.io.annotations import load_annotation
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.grid import PatchGrid
    from h2gnet.patches.tissue import detect_tissue
    from h2gnet.train.export import export_classifier_onnx
    from h2gnet.train.models import build_classifier, calibrate_batchnorm

    t0 = time.perf_counter()
    torch.manual_seed(0)
    slide = open_slide(slide_path)
    grid = PatchGrid(slide.dimensions, slide.mpp, size, patch_mpp)
    _, _, xs, ys = grid_tissue_patches(grid, detect_tissue(slide))
    label_mpp = 8.0
    mask = load_annotation(truth, slide.dimensions, slide.mpp, label_mpp).array.astype(np.float32)
    side = size * patch_mpp / label_mpp
    fraction = np.array([mask[int(y * slide.mpp / label_mpp):int(y * slide.mpp / label_mpp + side),
                              int(x * slide.mpp / label_mpp):int(x * slide.mpp / label_mpp + side)].mean()
                         for x, y in zip(xs, ys)])
    rng = np.random.default_rng(0)
    picks = []
    for chosen in (np.nonzero(fraction <= 0.2)[0], np.nonzero(fraction >= 0.8)[0]):
        picks.append(rng.choice(chosen, min(len(chosen), TRAIN_PATCHES_PER_CLASS), replace=False))
    pick = np.concatenate(picks)
    labels = torch.from_numpy((fraction[pick] >= 0.8).astype(np.int64))
    imgs = np.stack([slide.read_region((int(xs[i]), int(ys[i])), (size, size), patch_mpp) for i in pick])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255)
    model = build_classifier("mobilenetv2", weights=None)
    calibrate_batchnorm(model, (x[i:i + 32] for i in range(0, len(x), 32)))
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.features(x[i:i + 32]) for i in range(0, len(x), 32)])
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    model.head.train()
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.head(feats), labels)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model.head(feats).argmax(1) == labels).float().mean())
    export_classifier_onnx(model, out, size, mpp=patch_mpp, arch="mobilenetv2")
    print(f"trained patch model ({size} px at {patch_mpp:g} µm/px, head on {len(pick)} patches, training "
          f"accuracy {accuracy:.3f}) in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
    return out


def make_int8(cache: Path, patch: Path, slide_path: Path, calibration: str, float_ends: bool = False) -> Path:
    """The patch model quantised to int8, calibrated on 256 tissue patches of the slide (cached);
    ``float_ends`` keeps its first convolution and its head in float32."""
    out = cache / f"{patch.stem}.int8-{calibration}{'-float-ends' if float_ends else ''}.onnx"
    if out.exists():
        return out
    from h2gnet.infer.quantize import quantize_onnx
    from h2gnet.io.slides import open_slide

    slide = open_slide(slide_path)
    xs, ys = tissue_patches(slide_path, 256, 1.0)
    pick = np.random.default_rng(1).choice(len(xs), 256, replace=False)
    imgs = np.stack([slide.read_region((int(xs[i]), int(ys[i])), (256, 256), 1.0) for i in pick])
    x = (imgs.astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return quantize_onnx(patch, out, [x[i:i + 16] for i in range(0, 256, 16)], calibration, float_ends=float_ends)


@functools.cache
def tissue_patches(slide_path: Path, size: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (x, y) of the slide's ``size``-px patches at ``mpp`` µm/px with > 25 % tissue, as ``segment``
    picks them (computed once per slide)."""
    from h2gnet.infer import heatmap
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.grid import PatchGrid
    from h2gnet.patches.tissue import detect_tissue

    slide = open_slide(slide_path)
    grid = PatchGrid(slide.dimensions, slide.mpp, size, mpp)
    return heatmap.tissue_patches(grid, detect_tissue(slide))[2:]


def read_only(slide_path: Path, size: int, mpp: float, args: argparse.Namespace) -> tuple[float, float, int]:
    """(wall s, CPU s, patches) to read the slide's tissue patches the way dense ``segment`` does, no model."""
    from h2gnet.infer.heatmap import patch_batches
    from h2gnet.io.slides import open_slide

    slide = open_slide(slide_path)
    xs, ys = tissue_patches(slide_path, size, mpp)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in patch_batches(slide, xs, ys, size, mpp, args.batch_size, args.readers, max(2, 2 * args.readers)):
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


#: FAST's engines a run compares by default: its own default (OpenVINO in FAST 4.18) and ONNX Runtime, which
#: runs where FAST's OpenVINO engine fails on a CPU (e.g. "Primitive descriptor was not found" on a Xeon).
FAST_ENGINES = ("default", "ONNXRuntime")


def run_fast(slide: Path, patch: Path, refine: Path | None, cache: Path, engine: str) -> dict | None:
    """FAST's run of the exported pipeline on the slide with its inference ``engine`` ("default": FAST's
    choice) (None without pyFAST): child-process wall time, pipeline time and its final mask; or
    ``{"error": ...}`` when FAST fails, so that the other figures are still reported."""
    from h2gnet.errors import H2GNetError
    from h2gnet.fast.fpl import export_fast
    from h2gnet.fast.runner import fast_available, run_fast_pipeline, segmentation_raster

    if not fast_available():
        return None
    from fast_run import warmup_slide  # benchmarks/fast_run.py

    out = cache / f"fast-{engine}"
    fpl = export_fast(patch, refine, out / "pipeline", inference_engine=None if engine == "default" else engine)
    home = cache / "fast-home"
    try:
        run_fast_pipeline(fpl, warmup_slide(cache / "fast"), out / "warmup", fast_home=home, timeout=600)
        r = run_fast_pipeline(fpl, slide, out / "run", fast_home=home, timeout=1800)
    except H2GNetError as exc:
        return {"error": str(exc)[-400:]}
    return {"process_seconds": r.process_seconds, "seconds": r.seconds, "mask": segmentation_raster(r, EVAL_MPP)}


#: ``segment`` options of each mode a run can compare (``--modes``); "adaptive" is ``--adaptive`` with its
#: defaults, "adaptive-mean" its "mean" check, "adaptive-wide" the wider setting of docs/performance.md.
MODES = {"dense": ["--dense"], "adaptive": ["--adaptive"], "adaptive-mean": ["--adaptive", "--check", "mean"],
         "adaptive-wide": ["--adaptive", "--stride", "4", "--radius", "2", "--uncertain", "0.3", "0.7",
                           "--check", "mean"]}
#: Masks are compared at this µm/px.
EVAL_MPP = 8.0
#: The summary's consecutive stages (h2gnet.infer.segment.STAGES); the rest of a run's wall time is process
#: start, imports, model loading and exit.
STAGES = ("tissue", "heatmap", "refinement", "write")


def default_mode() -> str:
    """The mode ``h2gnet segment`` runs without --dense/--adaptive."""
    from h2gnet.infer.segment import SegmentConfig

    return "dense" if SegmentConfig(patch_model=None).adaptive is None else "adaptive"


#: Runs ``h2gnet.cli`` with the arguments after the first (a file) and writes the process's own peak RSS
#: (``VmHWM`` of /proc/self/status, kB) there at exit. The child's ``ru_maxrss`` from wait4 is no use here:
#: Linux carries the parent's resident size at fork into the child's maximum, and this process holds
#: in-memory patches for the model-only runs (a fresh child of a 1 GB parent reports 1 GB).
PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "out = sys.argv.pop(1)\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = next((line.split()[1] for line in f if line.startswith('VmHWM:')), '')\n"
    "    with open(out, 'w') as f:\n"
    "        f.write(kb)\n"
    "atexit.register(_peak)\n"
    "sys.argv[0] = 'h2gnet'\n"
    "runpy.run_module('h2gnet.cli', run_name='__main__', alter_sys=True)\n"
)


def run_measured(args: list[str], what: str) -> dict:
    """``h2gnet ARGS`` in a child process: wall and CPU seconds and its own peak RSS in MB (``ru_maxrss`` where
    /proc is missing, an upper bound). Exits with a message naming ``what`` when the child fails."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        cmd = [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), *args] if Path("/proc/self/status").exists() \
            else [sys.executable, "-m", "h2gnet.cli", *args]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code:
            raise SystemExit(f"{what} failed with exit status {code}")
        text = peak_file.read_text().strip() if peak_file.exists() else ""
        peak = int(text) / 1024 if text else usage.ru_maxrss / 1024
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak}


def run_segment(slide: Path, patch: Path, refine: Path | None, out: Path, mode: str,
                args: argparse.Namespace) -> dict:
    """``h2gnet segment`` in ``mode`` in a child process; returns its summary plus wall time, CPU time and the
    child's own peak RSS."""
    cmd = ["-q", "segment", str(slide), "--patch-model", str(patch),
           "-o", str(out), "--overwrite", "--device", args.device, "--precision", args.precision,
           "--batch-size", str(args.batch_size), "--readers", str(args.readers), *MODES[mode]]
    cmd += ["--refine-model", str(refine)] if refine else ["--no-refine"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    measured = run_measured(cmd, f"segment ({mode})")
    summary = json.loads((out / f"{slide.stem}.json").read_text())
    summary.update(measured)
    return summary


def model_only(patch: Path, n: int, args: argparse.Namespace) -> float:
    """Seconds for the same model on ``n`` in-memory patches (same engine, threads, batch size)."""
    from h2gnet.infer.runtime import OnnxModel, default_threads

    model = OnnxModel(patch, "patch-classifier", args.device, args.threads or default_threads(), args.precision)
    size = model.input_size
    batch = np.random.default_rng(0).random((args.batch_size, 3, size, size), dtype=np.float32)
    model(batch[:2])  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(args.batch_size, n - done)
        model(batch[:k])
        done += k
    return time.perf_counter() - t0


def final_mask(folder: Path, slide: Path) -> np.ndarray:
    """``segment``'s final mask of ``slide`` in ``folder`` at :data:`EVAL_MPP`."""
    from h2gnet.conventions import slide_outputs
    from h2gnet.outputs.mask_tiff import load_mask_tiff

    outputs = slide_outputs(folder, slide.stem)
    summary = json.loads(outputs.summary.read_text())
    mask = load_mask_tiff(outputs.mask, float(summary["slide_mpp"]))
    return mask.to_mpp(EVAL_MPP, tuple(summary["dimensions_l0"])).array


def patchwise_mask(folder: Path, slide: Path) -> np.ndarray:
    """The patch-wise mask (heatmap > 0.5) of ``segment``'s heatmap of ``slide`` in ``folder`` at
    :data:`EVAL_MPP`: the adaptive evaluation's own result, before the refiner (whose random weights in
    this benchmark would hide differences)."""
    from h2gnet.conventions import slide_outputs
    from h2gnet.infer.heatmap import load_heatmap
    from h2gnet.io.raster import Raster

    heat, extent = load_heatmap(slide_outputs(folder, slide.stem).heatmap)
    return Raster(heat.array > 0.5, heat.mpp, heat.slide_mpp).to_mpp(EVAL_MPP, extent).array


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks at the same µm/px (cropped to their common extent)."""
    from h2gnet.evaluation.metrics import slide_metrics

    rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(slide_metrics(a[:rows, :cols], b[:rows, :cols])["dice"])


def mode_row(runs: list[dict], ceilings: list[float]) -> dict:
    """One mode's figures: medians over its runs."""
    s = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    startup = s["wall"] - sum(v for k, v in s["seconds"].items() if k in STAGES)
    return {"seconds": round(s["wall"], 2), "runs_seconds": [round(r["wall"], 2) for r in runs],
            "patches": int(s["patches"]), "tissue_patches": int(s["tissue_patches"]),
            "classified_fraction": s["classified_fraction"], "rounds": (s["evaluation"] or {}).get("rounds"),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
            "cpu_over_wall": round(s["cpu"] / s["wall"], 2),
            "stages": {k: round(v, 2) for k, v in s["seconds"].items()}, "startup_seconds": round(startup, 2),
            "model_only_seconds": round(float(np.median(ceilings)), 2),
            "model_only_runs_seconds": [round(c, 2) for c in ceilings]}


def add_engine_options(ap: argparse.ArgumentParser) -> None:
    """What runs the patch model (``--device``, ``--precision``), shared by the whole-slide benchmarks."""
    ap.add_argument("--device", default="cpu", help="cpu (ONNX Runtime), openvino, cuda, tensorrt")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="OpenVINO precision")


def main() -> None:  # noqa: PLR0915 - one report
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_slide_options(ap)
    add_engine_options(ap)
    ap.add_argument("--patch-model", type=Path, default=None, help="another patch model")
    ap.add_argument("--patch-size", type=int, default=256, help="the trained model's patch side, px")
    ap.add_argument("--patch-mpp", type=float, default=1.0, help="the trained model's µm/px")
    ap.add_argument("--random-model", action="store_true",
                    help="the earlier MobileNetV2 with random weights (batch norm from the slide) instead")
    ap.add_argument("--int8", choices=("minmax", "percentile"), default=None,
                    help="quantise the patch model to int8 (calibrated on the slide's patches) and use it")
    ap.add_argument("--float-ends", action="store_true", help="with --int8: first conv and head stay float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--no-refine", action="store_true")
    ap.add_argument("--modes", nargs="+", default=["dense", "adaptive"], choices=tuple(MODES),
                    help="segment modes to time, alternately (the default mode is always among them)")
    ap.add_argument("--no-fast", action="store_true", help="skip the FAST runs even when pyFAST is installed")
    ap.add_argument("--fast-engines", nargs="+", default=list(FAST_ENGINES),
                    help="FAST inference engines to run (default: FAST's default and ONNXRuntime)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of segment and of model-only (medians reported)")
    args = ap.parse_args()
    load = os.getloadavg()
    slide = make_slide(args.cache, args.width, args.height, args.mpp)
    truth_path = make_truth(args.cache, args.width, args.height, args.mpp)
    random_patch, refine = make_models(args.cache, slide)
    if args.patch_model:
        patch = args.patch_model
    elif args.random_model:
        patch = random_patch
    else:
        patch = make_trained_patch_model(args.cache, slide, truth_path, args.patch_size, args.patch_mpp)
    fp32_patch = patch
    if args.int8:
        patch = make_int8(args.cache, patch, slide, args.int8, args.float_ends)
    default = default_mode()
    modes = list(dict.fromkeys([default, *args.modes]))
    # runs alternate (modes, model-only) so that drifts of the machine hit all of them; medians are reported
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    ceilings: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeat):
        for mode in modes:
            out = args.cache / "out" / mode
            runs[mode].append(run_segment(slide, patch, None if args.no_refine else refine, out, mode, args))
            ceilings[mode].append(model_only(patch, int(runs[mode][-1]["patches"]), args))
    rows = {m: mode_row(runs[m], ceilings[m]) for m in modes}
    from h2gnet.io.annotations import load_annotation
    from h2gnet.io.slides import open_slide

    with open_slide(slide) as sl:
        truth = load_annotation(truth_path, sl.dimensions, sl.mpp, EVAL_MPP).array
        size, patch_mpp = args.patch_size, args.patch_mpp
        if args.patch_model or args.random_model:
            from h2gnet.infer.runtime import OnnxModel

            m = OnnxModel(patch, "patch-classifier", "cpu", 1)
            size, patch_mpp = m.input_size, m.mpp
    masks = {m: final_mask(args.cache / "out" / m, slide) for m in modes}
    patchwise = {m: patchwise_mask(args.cache / "out" / m, slide) for m in modes}
    for m in modes:
        rows[m]["dice_vs_truth"] = round(dice(masks[m], truth), 4)
        rows[m]["dice_vs_dense"] = round(dice(masks[m], masks["dense"]), 4) if "dense" in masks else None
        rows[m]["patchwise_dice_vs_truth"] = round(dice(patchwise[m], truth), 4)
        rows[m]["patchwise_dice_vs_dense"] = (round(dice(patchwise[m], patchwise["dense"]), 4)
                                              if "dense" in patchwise else None)
    s, ceiling = rows[default], rows[default]["model_only_seconds"]
    if args.repeat > 1:
        for m in modes:
            print(f"{m}: {args.repeat} runs: end to end {rows[m]['runs_seconds']} s; model only "
                  f"{rows[m]['model_only_runs_seconds']} s (medians below)")
    read_wall, read_cpu, n_tissue = read_only(slide, size, patch_mpp, args)
    refine_s = 0.0 if args.no_refine else refine_only(refine, args)
    ref = None if args.no_refine else refine
    fast_runs: dict[str, dict] = {}
    if not args.no_fast:
        for engine in args.fast_engines:
            r = run_fast(slide, fp32_patch, ref, args.cache, engine)
            if r is None:
                break  # no pyFAST
            fast_runs[engine] = r
    print(f"slide {args.width}×{args.height} px at {args.mpp} µm/px, {n_tissue} tissue patches of {size}×{size} "
          f"at {patch_mpp:g} µm/px; model {patch}; load average before {load[0]:.2f}; default mode {default}")
    for m in modes:
        r = rows[m]
        print(f"{m:13s} end to end {r['seconds']:.2f} s, {r['patches']} patches ({r['classified_fraction']:.1%} of "
              f"tissue, rounds {r['rounds']}), stages {r['stages']}, process start + model loading "
              f"{r['startup_seconds']:.2f} s, model only {r['model_only_seconds']:.2f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, CPU/wall {r['cpu_over_wall']:.2f}; final mask Dice vs dense "
              f"{r['dice_vs_dense']}, vs truth {r['dice_vs_truth']}; patch-wise mask (heatmap > 0.5) Dice vs dense "
              f"{r['patchwise_dice_vs_dense']}, vs truth {r['patchwise_dice_vs_truth']}")
    if "dense" in rows:
        dense_heat = rows["dense"]["stages"].get("heatmap", 0.0)
        for m in modes:
            if m != "dense" and dense_heat:
                heat = rows[m]["stages"].get("heatmap", 0.0)
                rows[m]["patch_stage_over_dense"] = round(heat / dense_heat, 3)
                print(f"{m}: patch stage {heat:.2f} s / dense {dense_heat:.2f} s = {heat / dense_heat:.2f} for "
                      f"{rows[m]['classified_fraction']:.1%} of the patches classified; end to end dense / {m} "
                      f"= {rows['dense']['seconds'] / rows[m]['seconds']:.2f}")
    n = s["patches"]
    heat = s["stages"].get("heatmap", 0.0)
    print(f"default ({default}): end-to-end / model-only = {s['seconds'] / ceiling:.2f}; patch stage / model-only = "
          f"{heat / ceiling:.2f}; reading the tissue patches alone: {read_wall:.1f} s wall, {read_cpu:.1f} s CPU "
          f"with {args.readers} reader threads")
    rest = s["startup_seconds"]
    print(f"beyond the patch model: refiner {refine_s:.1f} s (one pass), tissue {s['stages'].get('tissue', 0):.2f} s, "
          f"writing {s['stages'].get('write', 0):.2f} s, process start and model loading {rest:.2f} s")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    floor = ceiling + read_cpu * n / max(n_tissue, 1) / cores + refine_s + rest
    report_fast: dict[str, dict] = {}
    for engine, r in fast_runs.items():
        if "error" in r:
            report_fast[engine] = {"seconds": None, "error": r["error"]}
            print(f"FAST ({engine} engine) FAILED: {r['error']}")
            continue
        fmask = r["mask"].to_mpp(EVAL_MPP, (args.width, args.height)).array
        row = {"seconds": round(r["process_seconds"], 2), "pipeline_seconds": round(r["seconds"], 2),
               "dice_vs_h2gnet": round(dice(fmask, masks[default]), 4), "dice_vs_truth": round(dice(fmask, truth), 4),
               **{f"fast_over_{m}": round(r["process_seconds"] / rows[m]["seconds"], 2) for m in modes}}
        report_fast[engine] = row
        print(f"FAST ({engine} engine, same fp32 models): {row['seconds']:.2f} s wall ({row['pipeline_seconds']:.2f} s "
              f"pipeline); FAST / h2gnet: " + ", ".join(f"{m} {row[f'fast_over_{m}']:.2f}" for m in modes)
              + f"; Dice vs h2gnet ({default}) {row['dice_vs_h2gnet']:.3f}, vs truth {row['dice_vs_truth']:.3f}")
    if not fast_runs:
        print("FAST: not run (pyFAST not installed, or --no-fast)")
    first = report_fast.get(args.fast_engines[0]) if fast_runs else None
    report = {"seconds": s["seconds"], "model_only_seconds": ceiling, "patches": n,
              "peak_rss_mb": s["peak_rss_mb"], "fast_seconds": None if first is None else first["seconds"],
              "fast_dice_vs_h2gnet": None if first is None else first.get("dice_vs_h2gnet"),
              "fast_engine": args.fast_engines[0] if fast_runs else None,
              **({"fast_error": first["error"]} if first is not None and "error" in first else {}),
              "default_mode": default, "classified_fraction": s["classified_fraction"],
              "tissue_patches": n_tissue, "ratio_to_model_only": round(s["seconds"] / ceiling, 3),
              "stages": s["stages"], "cpu_over_wall": s["cpu_over_wall"], "device": args.device,
              "engine": runs[default][0].get("engine"), "precision": args.precision, "model": str(patch),
              "patch_size": size, "patch_mpp": patch_mpp, "threads": args.threads, "batch_size": args.batch_size,
              "patch_stage_ratio": round(heat / ceiling, 3), "read_only_seconds": round(read_wall, 2),
              "read_only_cpu_seconds": round(read_cpu, 2), "refine_only_seconds": round(refine_s, 2),
              "startup_seconds": rest, "floor_seconds": round(floor, 2), "repeat": args.repeat,
              "runs_seconds": s["runs_seconds"], "model_only_runs_seconds": s["model_only_runs_seconds"],
              "modes": rows, "fast_runs": report_fast,
              "load_average_before": [round(v, 2) for v in load],
              "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
