"""The ``h2gnet`` command line; subcommands mirror the pipeline stages.

Each subcommand parses its arguments and calls one function of the package;
bad input surfaces as ``error: <file>: <problem>`` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from h2gnet import __version__
from h2gnet.cohort import Engine, EngineConfig
from h2gnet.conventions import EVAL_MPP
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.predictions import evaluate_predictions, write_evaluation
from h2gnet.evaluation.summary import print_table
from h2gnet.fast.fpl import export_fast, split_models
from h2gnet.infer.heatmap import HeatmapSettings, heatmap_cohort
from h2gnet.infer.quantize import quantize_patch_model
from h2gnet.infer.segment import Models, SegmentConfig, check_writable, segment_many
from h2gnet.io.atomic import write_bytes
from h2gnet.io.manifest import read_manifest, select
from h2gnet.io.slides import open_slide
from h2gnet.io.text_table import format_rows
from h2gnet.patches.grid import index_cohort
from h2gnet.patches.tissue import detect_tissue, otsu_tissue, tissue_area_mm2
from h2gnet.synth import make_cohort

Handler = Callable[[argparse.Namespace], int]


# -- foundation ------------------------------------------------------------------------
def _cmd_synth(args: argparse.Namespace) -> int:

    manifest = make_cohort(args.out_dir, n_slides=args.slides, seed=args.seed, width=args.width,
                           height=args.height, mpp=args.mpp, progress=not args.quiet,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    print(f"phantom cohort: {manifest}")
    return 0


def _cmd_tissue(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    out = Path(args.output)
    if out.suffix.lower() not in {".png", ".tif", ".tiff"}:
        raise H2GNetError(out, "the tissue mask is written as .png or .tif")
    with open_slide(args.slide, args.mpp) as slide:
        mask = otsu_tissue(slide) if args.method == "otsu" else detect_tissue(slide)
        ok, data = cv2.imencode(out.suffix, mask.array.astype(np.uint8) * 255)
        if not ok:
            raise H2GNetError(out, "could not encode the mask")
        write_bytes(out, data.tobytes())
        fraction = float(mask.array.mean())
        print(f"{slide.path.name}: tissue {tissue_area_mm2(mask):.2f} mm² ({fraction:.0%} of the slide), "
              f"{args.method} method, mask {mask.shape[1]}×{mask.shape[0]} px at {mask.mpp:.4g} µm/px -> {out}")
    return 0


def _cmd_patches(args: argparse.Namespace) -> int:

    entries = read_manifest(args.manifest)
    rows, failures = index_cohort(entries, args.output, overwrite=args.overwrite, progress=not args.quiet,
                                  patch_size=args.patch_size, patch_mpp=args.patch_mpp,
                                  annotation_classes=args.annotation_class)
    if rows:
        total = {"slide": "TOTAL", "grade": "", "split": "", **{k: sum(r[k] for r in rows) for k in
                 ("patches", "tumour", "non_tumour", "unlabelled")}, "tissue_mm2": float("nan")}
        print(format_rows([*rows, total]))
    for _path, message in failures:
        print(f"error: {message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(entries)} slide(s) failed; the others were indexed in {args.output}",
              file=sys.stderr)
        return 1
    return 0


# -- stage 1 ---------------------------------------------------------------------------
def _patch_config(args: argparse.Namespace):
    from h2gnet.train.patch_classifier import PatchTrainConfig

    return PatchTrainConfig(
        manifest=str(Path(args.manifest).resolve()), index_dir=str(Path(args.index).resolve()), arch=args.arch,
        weights=args.weights, epochs=args.epochs, steps=args.steps, val_steps=args.val_steps,
        batch_size=args.batch_size, lr=args.lr, input_size=args.input_size,
        clusters=str(Path(args.clusters).resolve()) if args.clusters else None, augment=not args.no_augment,
        workers=args.workers, seed=args.seed, threads=args.threads, progress=not args.quiet)


def _cmd_train_patch(args: argparse.Namespace) -> int:
    from h2gnet.train.patch_classifier import train_patch_classifier

    metrics = train_patch_classifier(args.output, _patch_config(args), overwrite=args.overwrite)
    print(f"model: {Path(args.output) / 'model.onnx'} (best epoch {metrics['best_epoch']}, "
          f"val loss {metrics['best_val_loss']:.4f})")
    test = metrics.get("test")
    if test:
        print(f"test patches: balanced accuracy {test['balanced_accuracy']:.3f} "
              f"(tumour {test['accuracy_tumour']:.3f} on {test['tumour_patches']}, "
              f"non-tumour {test['accuracy_non_tumour']:.3f} on {test['non_tumour_patches']})")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from h2gnet.train.cluster_guiding import ClusterConfig, fit_cohort_clustering

    cfg = ClusterConfig(manifest=str(args.manifest), index_dir=str(args.index), k=args.k, batches=args.batches,
                        batch_size=args.batch_size, input_size=args.input_size, weights=args.weights,
                        workers=args.workers, seed=args.seed, progress=not args.quiet)
    summary = fit_cohort_clustering(args.output, cfg)
    print(f"clustering: k={summary['k']}, {summary['n_components']} principal components "
          f"({summary['explained_variance']:.1%} of variance) -> {args.output}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:

    out = quantize_patch_model(args.model, args.output, args.manifest, args.index, args.patches, args.seed,
                               args.calibration, float_ends=args.float_ends)
    print(f"int8 model: {out}")
    return 0


def _add_stage1(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-patch", help="train the patch classifier from raw slides (hierarchical sampling)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--index", type=Path, required=True, help="patch index folder (from `h2gnet patches`)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    p.add_argument("--arch", choices=("mobilenetv2", "inceptionv3"), default="mobilenetv2")
    p.add_argument("--weights", default=None,
                   help="'imagenet' (torchvision download, online machines) or a local state-dict file; "
                        "default: random initialisation")
    p.add_argument("--clusters", type=Path, default=None, help="clustering folder (from `h2gnet cluster`): CWCE loss")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--steps", type=int, default=500, help="training batches per epoch")
    p.add_argument("--val-steps", type=int, default=200, help="validation batches per epoch")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--input-size", type=int, default=None,
                   help="model input side in px (default: the index's patch size; smaller reads the same "
                        "field of view at a coarser µm/px)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes reading patches")
    p.add_argument("--threads", type=int, default=None, help="PyTorch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.set_defaults(func=_cmd_train_patch)

    p = sub.add_parser("cluster", help="fit the k-means tissue clustering used for cluster guiding")
    p.add_argument("manifest", type=Path)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="clustering folder")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=None, help="VGG16 input side in px (default: patch size)")
    p.add_argument("--weights", default=None, help="'imagenet' or a local VGG16 state-dict file")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_cluster)

    p = sub.add_parser("quantize", help="int8 patch classifier, calibrated on training patches (ONNX Runtime)")
    p.add_argument("model", type=Path, help="float32 patch classifier (.onnx)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="int8 model (.onnx)")
    p.add_argument("--patches", type=int, default=256, help="calibration patches")
    p.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="activation ranges: min/max of the calibration patches (default), entropy (KL), "
                        "or the 99.999th percentile (entropy and percentile keep every activation in memory: "
                        "~20 GB for 256 patches of 256 px)")
    p.add_argument("--float-ends", action="store_true",
                   help="keep the first convolution and the fully connected head in float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_quantize)


# -- stage 2 and inference ----------------------------------------------------------------
def _segment_config(args: argparse.Namespace, refine: Path | None):

    return SegmentConfig(patch_model=args.patch_model, refine_model=refine,
                         heatmap_dir=getattr(args, "heatmaps", None), device=args.device, precision=args.precision,
                         threads=args.threads, batch_size=args.batch_size, readers=args.readers,
                         progress=not args.quiet)


def _cmd_heatmap(args: argparse.Namespace) -> int:

    entries = read_manifest(args.manifest)
    check_writable(args.output)
    cfg = _segment_config(args, None)
    patch = Models.load(cfg).patch
    assert patch is not None  # --patch-model is required by this command
    with _engine(args) as engine:
        settings = HeatmapSettings(min_tissue=cfg.min_tissue, batch_size=cfg.batch_size, readers=cfg.readers)
        failures = heatmap_cohort(entries, args.output, patch, overwrite=args.overwrite, settings=settings,
                                  progress=cfg.progress, engine=engine)
    for message in failures:
        print(f"error: {message}", file=sys.stderr)
    print(f"heatmaps: {len(entries) - len(failures)} of {len(entries)} slide(s) in {args.output}")
    return 1 if failures else 0


def _cmd_train_refine(args: argparse.Namespace) -> int:
    from h2gnet.train.refiner import RefineTrainConfig, train_refiner

    cfg = RefineTrainConfig(manifest=str(Path(args.manifest).resolve()),
                            heatmaps=str(Path(args.heatmaps).resolve()) if args.heatmaps else None,
                            arch=args.arch, input_size=args.input_size, epochs=args.epochs, patience=args.patience,
                            batch_size=args.batch_size, accumulation=args.accumulation, lr=args.lr,
                            augment=not args.no_augment, seed=args.seed, threads=args.threads,
                            progress=not args.quiet)
    metrics = train_refiner(args.output, cfg, overwrite=args.overwrite)
    print(f"model: {Path(args.output) / 'model.onnx'} (best epoch {metrics['best_epoch']}, "
          f"validation Dice {metrics['val_dice']:.3f})")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:

    if args.no_refine == (args.refine_model is not None):
        raise H2GNetError(None, "give either --refine-model R.onnx or --no-refine (the patch-wise result)")
    if args.no_refine and args.patch_model is None:
        raise H2GNetError(None, "--no-refine needs --patch-model")
    cfg = _segment_config(args, args.refine_model)
    with _engine(args) as engine:
        status = segment_many(args.inputs, args.output, cfg, mpp=args.mpp, overwrite=args.overwrite, engine=engine)
    rows = [{"slide": Path(k).name, **{c: v[c] for c in ("status", "seconds", "error")}} for k, v in status.items()]
    print(format_rows(rows))
    failed = sum(1 for r in rows if r["status"] == "failed")
    if failed:
        print(f"{failed} of {len(rows)} slide(s) failed (see {args.output / 'status.csv'})", file=sys.stderr)
    return 1 if failed else 0


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(EngineConfig(workers=args.workers, scheduler=args.scheduler, retries=args.retries,
                               connect_timeout=args.connect_timeout))


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    """One task per slide, in this process (default) or on Dask (``pip install h2gnet[dask]``)."""
    d = EngineConfig()
    g = p.add_argument_group("many slides at once (Dask)")
    g.add_argument("--workers", type=int, default=d.workers,
                   help="start a local Dask cluster of N worker processes (127.0.0.1), cores/N threads each; "
                        "default 0: one slide after another in this process")
    g.add_argument("--scheduler", default=d.scheduler, metavar="ADDRESS",
                   help="run on an existing Dask cluster (e.g. tcp://host:8786, from dask-jobqueue); workers "
                        "must see the slides, models and output folder at the same paths")
    g.add_argument("--retries", type=int, default=d.retries,
                   help=f"extra attempts of a slide whose task crashed or lost its worker (default {d.retries})")
    g.add_argument("--connect-timeout", type=float, default=d.connect_timeout, metavar="SECONDS",
                   help=f"seconds to wait for --scheduler (default {d.connect_timeout:g})")


def _add_inference_options(p: argparse.ArgumentParser, *, patch_required: bool = True) -> None:
    p.add_argument("--patch-model", type=Path, required=patch_required,
                   help="patch classifier (.onnx, from train-patch)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "tensorrt", "openvino", "auto"),
                   help="ONNX Runtime execution provider (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="with --device openvino: bf16 lets OpenVINO compute in bfloat16 (int8: `h2gnet quantize`)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="patches per inference batch (memory grows with it: ~25 MB per 256-px patch)")
    p.add_argument("--readers", type=int, default=2, help="patch-reading threads")
    p.add_argument("--overwrite", action="store_true", help="redo slides that already have outputs")
    _add_engine_options(p)


def _add_stage2(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heatmap", help="stage-1 tumour heatmaps of a cohort's slides")
    p.add_argument("manifest", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="heatmap folder (NAME.heatmap.tiff)")
    _add_inference_options(p)
    p.set_defaults(func=_cmd_heatmap)

    p = sub.add_parser("train-refine", help="train the refinement network on low-res slides + heatmaps")
    p.add_argument("manifest", type=Path)
    p.add_argument("--heatmaps", type=Path, default=None, help="heatmap folder (not needed for unet-lr)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    p.add_argument("--arch", choices=("unet", "agunet", "dagunet", "doubleunet", "unet-lr"), default="unet")
    p.add_argument("--input-size", type=int, default=1024, help="network input side in px (paper: 1024)")
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--patience", type=int, default=100, help="early-stopping patience in epochs")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--accumulation", type=int, default=6, help="gradient-accumulation steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.set_defaults(func=_cmd_train_refine)

    p = sub.add_parser("segment", help="segment slides: masks, GeoJSON, heatmaps, overlays, summaries")
    p.add_argument("inputs", nargs="+", help="slide files, glob patterns or manifest .csv files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (flat, files named by slide)")
    p.add_argument("--refine-model", type=Path, default=None, help="refinement network (.onnx)")
    p.add_argument("--no-refine", action="store_true", help="patch-wise result: heatmap > 0.5")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for slides without it")
    p.add_argument("--heatmaps", type=Path, default=None, help="reuse stage-1 heatmaps from this folder")
    _add_inference_options(p, patch_required=False)
    p.set_defaults(func=_cmd_segment)


# -- FAST / FastPathology export --------------------------------------------------------------
def _cmd_export_fast(args: argparse.Namespace) -> int:

    patch, refine = split_models(args.runs)
    fpl = export_fast(patch, refine, args.output, tissue_threshold=args.tissue_threshold,
                      inference_engine=args.inference_engine)
    models = "patch.onnx" + (" + refine.onnx" if refine is not None else "")
    print(f"FAST pipeline: {fpl} ({models}); run it with h2gnet.fast.runner.run_fast_pipeline or FastPathology")
    return 0


def _add_export_fast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-fast", help="export trained models as a FAST / FastPathology pipeline (.fpl)")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIRS",
                   help="patch-classifier run (and optionally a refiner run): run folders or .onnx files, any order")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for h2gnet.fpl and the models")
    p.add_argument("--tissue-threshold", type=int, default=70,
                   help="FAST tissue threshold: RGB distance from white, 0-255 scale (default 70)")
    p.add_argument("--inference-engine", default=None,
                   help="FAST inference engine to name in the pipeline (e.g. OpenVINO, ONNXRuntime, TensorRT); "
                        "default: FAST's choice (OpenVINO, which computes in bfloat16 on CPUs with AVX512-BF16; "
                        "ONNXRuntime is float32)")
    p.set_defaults(func=_cmd_export_fast)


# -- evaluation ----------------------------------------------------------------------------
def _cmd_evaluate(args: argparse.Namespace) -> int:

    entries = select(read_manifest(args.manifest), None if args.split == "all" else args.split)
    with _engine(args) as engine:
        rows = evaluate_predictions(entries, args.predictions, args.mpp, args.design, progress=not args.quiet,
                                    engine=engine)
    summaries = write_evaluation(args.output, rows, args.mpp)
    print_table(summaries)
    print(f"\nper-slide CSV, Markdown and JSON summaries in {args.output} (at {args.mpp} µm/px)")
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from h2gnet.study.ablation import load_config, run_study

    config = load_config(args.config, "ablation-cpu")
    with _engine(args) as engine:
        result = run_study(config, args.output, progress=not args.quiet, engine=engine)
    return _report_study(result, args.output)


def _cmd_demo(args: argparse.Namespace) -> int:
    from h2gnet.study.ablation import load_config, run_study

    config = load_config(args.config, "demo")
    with _engine(args) as engine:
        result = run_study(config, args.output, progress=not args.quiet, engine=engine)
    return _report_study(result, args.output)


def _report_study(result: dict, out: Path) -> int:
    results = Path(out) / "results"
    print()
    print((results / "table1.md").read_text())
    print(f"wall time {result['timings'].get('total', float('nan')):.0f} s; report: {results / 'report.html'}")
    return 0


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-slide recall/precision/Dice of predicted masks against annotations")
    p.add_argument("manifest", type=Path)
    p.add_argument("--predictions", type=Path, required=True, help="folder of NAME.mask.tiff from `segment`")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for slides.csv, summary.md/json")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--mpp", type=float, default=EVAL_MPP, help=f"common resolution in µm/px (default {EVAL_MPP:g})")
    p.add_argument("--design", default=None, help="name of the design in the tables")
    _add_engine_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("ablation", help="the paper's ablation study (designs I–IX) on a cohort, resumable")
    p.add_argument("-o", "--output", type=Path, required=True, help="study folder")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML config (default: the built-in CPU config; see configs/ablation-paper.toml)")
    _add_engine_options(p)
    p.set_defaults(func=_cmd_ablation)

    p = sub.add_parser("demo", help="phantom cohort → training → segmentation → evaluation → HTML report")
    p.add_argument("output", type=Path, help="demo folder (run again to reuse what is done)")
    p.add_argument("--config", type=Path, default=None, help="TOML config (default: the built-in demo config)")
    _add_engine_options(p)
    p.set_defaults(func=_cmd_demo)



# -- parser ----------------------------------------------------------------------------
def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a phantom H&E cohort (slides, annotations, manifest)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--slides", type=int, default=24, help="number of slides (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="slide width in level-0 px")
    p.add_argument("--height", type=int, default=None, help="slide height in level-0 px")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px of every slide (default: varied)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of slides in the val split (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="share of slides in the test split (default 0.2)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("tissue", help="detect tissue on the ×1.25 plane (or Otsu's baseline)")
    p.add_argument("slide", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="mask image (.png/.tif), 255 = tissue")
    p.add_argument("--method", choices=("paper", "otsu"), default="paper")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px when the slide has none")
    p.set_defaults(func=_cmd_tissue)

    p = sub.add_parser("patches", help="index the 256×256 patches at 10× of a cohort")
    p.add_argument("manifest", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="index folder (one file per slide)")
    p.add_argument("--patch-size", type=int, default=256, help="patch side in px (default 256)")
    p.add_argument("--patch-mpp", type=float, default=1.0, help="patch resolution in µm/px (default 1.0 = 10×)")
    p.add_argument("--annotation-class", action="append", default=None,
                   help="use only GeoJSON features of this classification (repeatable; default: all)")
    p.add_argument("--overwrite", action="store_true", help="rebuild existing index files")
    p.set_defaults(func=_cmd_patches)


def build_parser() -> argparse.ArgumentParser:
    """The ``h2gnet`` argument parser: one subcommand per pipeline stage, in pipeline order."""
    parser = argparse.ArgumentParser(
        prog="h2gnet", description="Breast-cancer tumour region segmentation in H&E whole-slide images "
        "(H2G-Net cascade). Subcommands follow the pipeline; `h2gnet COMMAND --help` for each.")
    parser.add_argument("--version", action="version", version=f"h2gnet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_foundation(sub)
    _add_stage1(sub)
    _add_stage2(sub)
    _add_export_fast(sub)
    _add_evaluation(sub)
    for sub_parser in sub.choices.values():  # -q works before or after the subcommand
        sub_parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 some slides failed, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return int(args.func(args) or 0)
    except H2GNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
