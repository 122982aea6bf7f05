"""h2gnet against FAST (pyFAST) on one slide: wall time and agreement of the outputs.

Usage:
    python benchmarks/fast_run.py SLIDE --patch-model P.onnx [--refine-model R.onnx] [--out .bench/fast]
                                  [--h2gnet-out DIR] [--fast-home DIR] [--mpp UM] [--no-warmup]

For the whole-slide benchmark's slide and models (made by ``benchmarks/segment_wsi.py`` in
``.bench``)::

    python benchmarks/fast_run.py .bench/phantom_80000x60000.tiff \
        --patch-model .bench/mobilenetv2_calibrated.onnx --refine-model .bench/unet_1024.onnx \
        --h2gnet-out .bench/out

Exports the models with :func:`h2gnet.fast.fpl.export_fast`, runs FAST in a child process
(:func:`~h2gnet.fast.runner.run_fast_pipeline`) after a warm-up on a small phantom slide that
fills FAST's OpenCL kernel cache (a first run in a fresh HOME spends ~10 s compiling kernels on
this machine), and h2gnet's ``segment_slide`` in this process unless ``--h2gnet-out`` already
holds its outputs for the slide. Both wall times exclude interpreter start and imports; FAST's
includes loading its models, h2gnet's does not (``Models.load`` is outside ``segment_slide``).

The last line printed is a JSON object with ``fast_seconds``, ``h2gnet_seconds``, ``dice`` (final
masks at 8 µm/px), ``tissue_dice``, ``heatmap_max_abs_diff``/``heatmap_mean_abs_diff`` (over patches
both classified) and ``patch_set_difference`` (patches classified by one of them only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def cached_phantom(path: Path, seed: int, width: int, height: int) -> Path:
    """A grade-2 phantom slide of ``width`` × ``height`` level-0 px at 0.5 µm/px (pyramid 1-4-16), rendered once."""
    if not path.exists():
        from h2gnet.synth import make_slide_spec, render_slide

        path.parent.mkdir(parents=True, exist_ok=True)
        render_slide(path, make_slide_spec(seed, 2, width, height, 0.5, (1, 4, 16)))
    return path


def warmup_slide(folder: Path) -> Path:
    """A small phantom slide (2048 × 1536 px) for FAST's warm-up run."""
    return cached_phantom(folder / "fast_warmup.tiff", 0, 2048, 1536)


def h2gnet_outputs(slide_path: Path, args: argparse.Namespace) -> tuple[dict, Path]:
    """(summary, output folder) of ``h2gnet segment`` on the slide, run here unless already done."""
    from h2gnet.conventions import slide_outputs
    from h2gnet.infer.segment import Models, SegmentConfig, segment_slide

    folder = args.h2gnet_out or args.out / "h2gnet"
    summary = slide_outputs(folder, slide_path.stem).summary
    if summary.exists():
        return json.loads(summary.read_text()), folder
    cfg = SegmentConfig(patch_model=args.patch_model, refine_model=args.refine_model, progress=False,
                        adaptive=None)  # dense, as FAST: the outputs are compared patch by patch
    return segment_slide(slide_path, folder, Models.load(cfg), cfg, args.mpp), folder


def main() -> int:
    from h2gnet.conventions import slide_outputs
    from h2gnet.fast.fpl import export_fast
    from h2gnet.fast.runner import mask_dice, run_fast_pipeline, segmentation_raster
    from h2gnet.infer.heatmap import load_heatmap
    from h2gnet.io.slides import open_slide
    from h2gnet.outputs.mask_tiff import load_mask_tiff
    from h2gnet.patches.tissue import detect_tissue

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--patch-model", type=Path, required=True)
    ap.add_argument("--refine-model", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(".bench/fast"))
    ap.add_argument("--h2gnet-out", type=Path, default=None, help="existing `h2gnet segment` outputs for the slide")
    ap.add_argument("--fast-home", type=Path, default=None, help="HOME for FAST (default: OUT/fast-home)")
    ap.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for slides without it")
    ap.add_argument("--timeout", type=float, default=3600.0, help="limit for one FAST run, s")
    ap.add_argument("--no-warmup", action="store_true", help="time FAST's first run (kernel compilation included)")
    args = ap.parse_args()

    fpl = export_fast(args.patch_model, args.refine_model, args.out / "pipeline")
    home = args.fast_home or args.out / "fast-home"
    if not args.no_warmup:
        warm = run_fast_pipeline(fpl, warmup_slide(args.out), args.out / "warmup", fast_home=home,
                                 timeout=args.timeout)
        print(f"FAST warm-up on a small phantom: {warm.seconds:.1f} s", flush=True)
    fast = run_fast_pipeline(fpl, args.slide, args.out / "fast", fast_home=home, mpp=args.mpp, timeout=args.timeout)
    print(f"FAST: {fast.seconds:.1f} s (child process {fast.process_seconds:.1f} s), magnification "
          f"{fast.magnification:.3g} from {fast.magnification_source}, low-res level {fast.lowres_level}",
          flush=True)

    t0 = time.perf_counter()
    summary, folder = h2gnet_outputs(args.slide, args)
    h2gnet_wall = time.perf_counter() - t0
    h2gnet_seconds = float(summary["seconds"]["total"])
    print(f"h2gnet: {h2gnet_seconds:.1f} s (segment_slide stages; {h2gnet_wall:.1f} s here incl. model load "
          "or 0 when reused)", flush=True)

    slide_mpp = float(summary["slide_mpp"])
    extent = tuple(summary["dimensions_l0"])
    ours = slide_outputs(folder, args.slide.stem)
    ours_mask = load_mask_tiff(ours.mask, slide_mpp)
    ours_heat, _ = load_heatmap(ours.heatmap)
    fast_heat = fast.heatmap
    rows, cols = min(fast_heat.shape[0], ours_heat.shape[0]), min(fast_heat.shape[1], ours_heat.shape[1])
    a, b = fast_heat[:rows, :cols], ours_heat.array[:rows, :cols]
    both = (a > 0) & (b > 0)
    diff = np.abs(a - b)[both]
    with open_slide(args.slide, args.mpp) as slide:
        tissue = detect_tissue(slide)
    report = {
        "slide": str(args.slide), "fast_seconds": round(fast.seconds, 2),
        "fast_process_seconds": round(fast.process_seconds, 2), "h2gnet_seconds": round(h2gnet_seconds, 2),
        "dice": round(mask_dice(segmentation_raster(fast, 8.0), ours_mask, extent), 4),
        "tissue_dice": round(mask_dice(segmentation_raster(fast, 8.0, "tissue"), tissue, extent), 4),
        "heatmap_shapes": [list(fast_heat.shape), list(ours_heat.shape)],
        "patches_both": int(both.sum()),
        "patch_set_difference": int(np.count_nonzero((a > 0) ^ (b > 0))),
        "heatmap_max_abs_diff": round(float(diff.max()), 5) if diff.size else None,
        "heatmap_mean_abs_diff": round(float(diff.mean()), 5) if diff.size else None,
        "fast_magnification": fast.magnification, "fast_lowres_level": fast.lowres_level,
        "h2gnet_engine": summary.get("engine"),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
