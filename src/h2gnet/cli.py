"""The ``h2gnet`` command line; subcommands mirror the pipeline stages.

Each subcommand parses its arguments and calls one function of the package;
bad input surfaces as ``error: <file>: <problem>`` with exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from h2gnet import __version__
from h2gnet.cohort import Engine, EngineConfig
from h2gnet.conventions import MAX_CANVAS_ENV, MAX_CANVAS_GB, PATCH_MPP
from h2gnet.errors import H2GNetError
from h2gnet.evaluation.predictions import EvaluateConfig, evaluate_predictions, write_evaluation
from h2gnet.evaluation.summary import print_table
from h2gnet.fast.fpl import FAST_TISSUE_THRESHOLD, TISSUE_THRESHOLD_RULE, export_fast, split_models
from h2gnet.infer.adaptive import AdaptiveConfig
from h2gnet.infer.heatmap import heatmap_cohort, is_upsampling_refusal
from h2gnet.infer.model_card import preset_model, preset_names
from h2gnet.infer.quantize import QuantizeConfig, quantize_patch_model
from h2gnet.infer.segment import Models, SegmentConfig, check_writable, expand_inputs, segment_many
from h2gnet.io.atomic import DISK_FULL_ERRNOS, disk_full_from, write_bytes
from h2gnet.io.lock import folder_lock
from h2gnet.io.manifest import read_manifest, select
from h2gnet.io.slides import SLIDE_MPP_RULE, open_slide
from h2gnet.io.text_table import format_rows
from h2gnet.params import ParameterError, add_param, add_rule_option, config_from_args, default_of, rule_of
from h2gnet.patches.grid import PATCH_MPP_RULE, PATCH_SIZE, PATCH_SIZE_RULE, index_cohort
from h2gnet.patches.tissue import detect_tissue, otsu_tissue, tissue_area_mm2
from h2gnet.study.layout import StudyLayout
from h2gnet.synth import CohortConfig, make_cohort
from h2gnet.train.config import ClusterConfig, PatchTrainConfig, RefineTrainConfig
from h2gnet.view.config import ViewConfig

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: --option: problem`` and exit status 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _option_name(parser: argparse.ArgumentParser, args: argparse.Namespace, name: str) -> str:
    """The command-line flag of config field ``name`` (``--batch-size``), else the name itself."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    chosen = sub.choices.get(getattr(args, "command", ""), parser) if sub is not None else parser
    for action in chosen._actions:
        if action.dest == name and action.option_strings:
            return max(action.option_strings, key=len)
    return name


# -- foundation ------------------------------------------------------------------------
def _cmd_synth(args: argparse.Namespace) -> int:

    cfg = config_from_args(CohortConfig, args)
    manifest = make_cohort(args.out_dir, cfg, progress=not args.quiet)
    print(f"phantom cohort ({cfg.stain_set} stains): {manifest}")
    return 0


def _cmd_tissue(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    out = Path(args.output)
    if out.suffix.lower() not in {".png", ".tif", ".tiff"}:
        raise H2GNetError(out, "the tissue mask is written as .png or .tif")
    if out.is_dir():
        raise H2GNetError(out, "is an existing folder; -o names the mask image file to write")
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
def _patch_config(args: argparse.Namespace) -> PatchTrainConfig:
    return config_from_args(
        PatchTrainConfig, args, manifest=str(Path(args.manifest).resolve()), index_dir=str(Path(args.index).resolve()),
        clusters=str(Path(args.clusters).resolve()) if args.clusters else None, augment=not args.no_augment,
        progress=not args.quiet, init=_init_arg(args.init))


def _init_arg(init: str | None) -> str | None:
    """``--init``: a path made absolute (the run folder's config.json must name the same model on resume), or a
    preset's name as given."""
    if init is None:
        return None
    return str(Path(init).resolve()) if Path(init).exists() or init not in preset_names() else init


def _add_init_options(p: argparse.ArgumentParser, cls: type) -> None:
    """``--init``, ``--preset`` and ``--freeze-backbone-steps``: fine-tuning a trained model."""
    from h2gnet.train.config import INIT_HELP, PRESET_HELP

    g = p.add_argument_group("fine-tuning a trained model (see docs/guide/fine-tune.md)")
    g.add_argument("--init", default=None, metavar="MODEL", help=INIT_HELP)
    g.add_argument("--preset", default=None, choices=preset_names(), help=PRESET_HELP)
    add_param(g, cls, "freeze_backbone_steps")


def _rank_zero() -> bool:
    """False on the other processes of a ``torchrun`` training (``RANK`` > 0)."""
    return os.environ.get("RANK", "0") == "0"


def _cmd_train_patch(args: argparse.Namespace) -> int:
    from h2gnet.train.patch_classifier import train_patch_classifier

    metrics = train_patch_classifier(args.output, _patch_config(args), overwrite=args.overwrite)
    if not _rank_zero():
        return 0  # under torchrun, rank 0 reports
    print(f"model: {Path(args.output) / 'model.onnx'} (best epoch {metrics['best_epoch']}, "
          f"val loss {metrics['best_val_loss']:.4f})")
    test = metrics.get("test")
    if test:
        print(f"test patches: balanced accuracy {test['balanced_accuracy']:.3f} "
              f"(tumour {test['accuracy_tumour']:.3f} on {test['tumour_patches']}, "
              f"non-tumour {test['accuracy_non_tumour']:.3f} on {test['non_tumour_patches']})")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from h2gnet.train.cluster_guiding import fit_cohort_clustering

    cfg = config_from_args(ClusterConfig, args, manifest=str(args.manifest), index_dir=str(args.index),
                           progress=not args.quiet)
    summary = fit_cohort_clustering(args.output, cfg)
    print(f"clustering: k={summary['k']}, {summary['n_components']} principal components "
          f"({summary['explained_variance']:.1%} of variance) -> {args.output}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:

    cfg = config_from_args(QuantizeConfig, args, index_dir=args.index)
    out = quantize_patch_model(args.model, args.output, cfg)
    print(f"int8 model: {out}")
    return 0


def _add_stage1(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-patch", help="train the patch classifier from raw slides (hierarchical sampling)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--index", type=Path, required=True, help="patch index folder (from `h2gnet patches`)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    add_param(p, PatchTrainConfig, "arch")
    p.add_argument("--weights", default=None,
                   help="'imagenet' (torchvision download, online machines) or a local state-dict file; "
                        "default: random initialisation")
    p.add_argument("--clusters", type=Path, default=None, help="clustering folder (from `h2gnet cluster`): CWCE loss")
    for name in ("epochs", "steps", "total_steps", "val_steps", "batch_size", "lr", "input_size"):
        add_param(p, PatchTrainConfig, name)
    p.add_argument("--no-augment", action="store_true")
    for name in ("blur_um", "workers", "threads", "seed"):
        add_param(p, PatchTrainConfig, name)
    _add_init_options(p, PatchTrainConfig)
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.set_defaults(func=_cmd_train_patch)

    p = sub.add_parser("cluster", help="fit the k-means tissue clustering used for cluster guiding")
    p.add_argument("manifest", type=Path)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="clustering folder")
    add_param(p, ClusterConfig, "k", "-k")
    for name in ("batches", "batch_size", "variance", "input_size"):
        add_param(p, ClusterConfig, name)
    p.add_argument("--weights", default=None, help="'imagenet' or a local VGG16 state-dict file")
    add_param(p, ClusterConfig, "workers")
    add_param(p, ClusterConfig, "seed")
    p.set_defaults(func=_cmd_cluster)

    p = sub.add_parser("quantize", help="int8 patch classifier, calibrated on training patches (ONNX Runtime)")
    p.add_argument("model", type=Path, help="float32 patch classifier (.onnx)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="int8 model (.onnx)")
    add_param(p, QuantizeConfig, "patches")
    add_param(p, QuantizeConfig, "calibration")
    p.add_argument("--float-ends", action="store_true",
                   help="keep the first convolution and the fully connected head in float32")
    add_param(p, QuantizeConfig, "seed")
    p.set_defaults(func=_cmd_quantize)


# -- stage 2 and inference ----------------------------------------------------------------
def _adaptive_config(args: argparse.Namespace) -> AdaptiveConfig | None:
    if not args.adaptive:
        return None
    return config_from_args(AdaptiveConfig, args, low=args.uncertain[0], high=args.uncertain[1])


def _segment_config(args: argparse.Namespace, refine: Path | None):

    patch = args.patch_model
    if patch is None and args.preset is not None:
        patch = preset_model(args.preset, "patch-classifier", args.models_dir)
    return config_from_args(SegmentConfig, args, patch_model=patch, refine_model=refine,
                            heatmap_dir=getattr(args, "heatmaps", None), progress=not args.quiet,
                            adaptive=_adaptive_config(args))


def _cmd_heatmap(args: argparse.Namespace) -> int:

    entries = read_manifest(args.manifest)
    check_writable(args.output)
    cfg = _segment_config(args, None)
    if cfg.patch_model is None:
        raise H2GNetError(None, "give --patch-model (or --preset with fetched models)")
    patch = Models.load(cfg).patch
    assert patch is not None
    with _engine(args) as engine:
        failures = heatmap_cohort(entries, args.output, patch, overwrite=args.overwrite, settings=cfg.heatmap(),
                                  progress=cfg.progress, engine=engine)
    for message in failures:
        print(f"error: {message}", file=sys.stderr)
    print(f"heatmaps: {len(entries) - len(failures)} of {len(entries)} slide(s) in {args.output}")
    return 2 if any(is_upsampling_refusal(m) for m in failures) else 1 if failures else 0


def _cmd_train_refine(args: argparse.Namespace) -> int:
    from h2gnet.train.refiner import train_refiner

    cfg = config_from_args(RefineTrainConfig, args, manifest=str(Path(args.manifest).resolve()),
                           heatmaps=str(Path(args.heatmaps).resolve()) if args.heatmaps else None,
                           augment=not args.no_augment, progress=not args.quiet, init=_init_arg(args.init))
    metrics = train_refiner(args.output, cfg, overwrite=args.overwrite)
    if not _rank_zero():
        return 0
    print(f"model: {Path(args.output) / 'model.onnx'} (best epoch {metrics['best_epoch']}, "
          f"validation Dice {metrics['val_dice']:.3f})")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:

    refine_model = args.refine_model
    if refine_model is None and args.preset is not None and not args.no_refine:
        refine_model = preset_model(args.preset, "refiner", args.models_dir)
    if args.no_refine == (refine_model is not None):
        raise H2GNetError(None, "give either --refine-model R.onnx or --no-refine (the patch-wise result)")
    if args.no_refine and args.patch_model is None and args.preset is None:
        raise H2GNetError(None, "--no-refine needs --patch-model")
    if args.heatmaps is not None and not args.heatmaps.is_dir():  # not a silent recomputation of every heatmap
        raise H2GNetError(args.heatmaps, "--heatmaps: no such folder; give the folder `h2gnet heatmap` wrote, or "
                                         "leave the option out to compute the heatmaps")
    cfg = _segment_config(args, refine_model)
    with _engine(args) as engine:
        status = segment_many(args.inputs, args.output, cfg, mpp=args.mpp, overwrite=args.overwrite, engine=engine)
    rows = [{"slide": Path(k).name, **{c: v[c] for c in ("status", "seconds", "error")}} for k, v in status.items()]
    print(format_rows(rows))
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(rows)} slide(s) failed (see {args.output / 'status.csv'})", file=sys.stderr)
    refused = [r for r in failed if is_upsampling_refusal(r["error"])]
    for r in refused:  # bad input: one line each, exit 2
        print(f"error: {r['error']}", file=sys.stderr)
    return 2 if refused else 1 if failed else 0


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(config_from_args(EngineConfig, args))


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    """One task per slide, in this process (default) or on Dask (``pip install h2gnet[dask]``)."""
    g = p.add_argument_group("many slides at once (Dask)")
    add_param(g, EngineConfig, "workers")
    g.add_argument("--scheduler", default=EngineConfig().scheduler, metavar="ADDRESS",
                   help="run on an existing Dask cluster (e.g. tcp://host:8786, from dask-jobqueue); workers "
                        "must see the slides, models and output folder at the same paths")
    add_param(g, EngineConfig, "retries")
    add_param(g, EngineConfig, "connect_timeout", metavar="SECONDS")


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patch-model", type=Path, required=False,
                   help="patch classifier (.onnx: from train-patch, or a model with NAME.card.json beside it)")
    add_param(p, SegmentConfig, "preset")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of a preset's files (default: where fetch-models puts them)")
    for name in ("device", "threads", "precision", "batch_size", "readers"):
        add_param(p, SegmentConfig, name)
    add_param(p, SegmentConfig, "max_upsampling", metavar="FACTOR")
    p.add_argument("--allow-upsampling", action="store_true", default=default_of(SegmentConfig, "allow_upsampling"),
                   help=rule_of(SegmentConfig, "allow_upsampling").help)
    p.add_argument("--overwrite", action="store_true", help="redo slides that already have outputs")
    _add_engine_options(p)


def _add_adaptive_options(p: argparse.ArgumentParser, *, adaptive: bool) -> None:
    """--adaptive / --dense and the coarse-to-fine settings (defaults and rules: :class:`AdaptiveConfig`'s)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--adaptive", dest="adaptive", action="store_true", default=adaptive,
                   help="coarse-to-fine: classify a sparse lattice of patches, then only where the result could "
                        "change (uncertain or disagreeing neighbours, tissue edges), fill the rest from the "
                        "neighbours around" + (" (default)" if adaptive else ""))
    g.add_argument("--dense", dest="adaptive", action="store_false",
                   help="classify every tissue patch" + ("" if adaptive else " (default)"))
    add_param(p, AdaptiveConfig, "stride")
    add_param(p, AdaptiveConfig, "radius")
    low, high = default_of(AdaptiveConfig, "low"), default_of(AdaptiveConfig, "high")
    p.add_argument("--uncertain", type=rule_of(AdaptiveConfig, "low").parse, nargs=2, default=(low, high),
                   metavar=("LOW", "HIGH"), help=f"adaptive: tumour probabilities strictly between LOW and HIGH "
                                                 f"are uncertain (default {low:g} {high:g})")
    add_param(p, AdaptiveConfig, "check")


def _add_stage2(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heatmap", help="stage-1 tumour heatmaps of a cohort's slides")
    p.add_argument("manifest", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="heatmap folder (NAME.heatmap.tiff)")
    _add_inference_options(p)
    _add_adaptive_options(p, adaptive=False)  # heatmaps are train-refine's input: dense unless asked
    p.set_defaults(func=_cmd_heatmap)

    p = sub.add_parser("train-refine", help="train the refinement network on low-res slides + heatmaps")
    p.add_argument("manifest", type=Path)
    p.add_argument("--heatmaps", type=Path, default=None, help="heatmap folder (not needed for unet-lr)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    add_param(p, RefineTrainConfig, "arch")
    for name in ("input_size", "epochs", "total_steps", "patience", "batch_size", "accumulation", "lr", "lr_schedule"):
        add_param(p, RefineTrainConfig, name)
    p.add_argument("--no-augment", action="store_true")
    add_param(p, RefineTrainConfig, "threads")
    add_param(p, RefineTrainConfig, "seed")
    _add_init_options(p, RefineTrainConfig)
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.set_defaults(func=_cmd_train_refine)

    p = sub.add_parser("segment", help="segment slides: masks, GeoJSON, heatmaps, overlays, summaries")
    p.add_argument("inputs", nargs="+", help="slide files, glob patterns or manifest .csv files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (flat, files named by slide)")
    p.add_argument("--refine-model", type=Path, default=None, help="refinement network (.onnx)")
    p.add_argument("--no-refine", action="store_true", help="patch-wise result: heatmap > 0.5")
    add_rule_option(p, SLIDE_MPP_RULE, "--mpp")
    p.add_argument("--heatmaps", type=Path, default=None, help="reuse stage-1 heatmaps from this folder")
    p.add_argument("--tta", action="store_true", default=default_of(SegmentConfig, "tta"),
                   help=rule_of(SegmentConfig, "tta").help)
    _add_inference_options(p)
    _add_adaptive_options(p, adaptive=SegmentConfig(patch_model=None).adaptive is not None)
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
    add_rule_option(p, TISSUE_THRESHOLD_RULE, "--tissue-threshold", default=FAST_TISSUE_THRESHOLD,
                    help=f"{TISSUE_THRESHOLD_RULE.help} (default {FAST_TISSUE_THRESHOLD})")
    p.add_argument("--inference-engine", default=None,
                   help="FAST inference engine to name in the pipeline (e.g. OpenVINO, ONNXRuntime, TensorRT); "
                        "default: FAST's choice (OpenVINO, which computes in bfloat16 on CPUs with AVX512-BF16; "
                        "ONNXRuntime is float32)")
    p.set_defaults(func=_cmd_export_fast)


def _cmd_compare_fast(args: argparse.Namespace) -> int:
    from h2gnet.fast.compare import KNOWN_DIFFERENCES, compare_slide
    from h2gnet.fast.runner import fast_available

    if not fast_available():
        raise H2GNetError(None, "compare-fast runs FAST's pipeline with pyFAST, which is not installed (pip install "
                                "pyfast; Debian also needs pocl-opencl-icd ocl-icd-libopencl1 libusb-1.0-0)")
    fpl_text = None
    if args.fpl is not None:
        try:
            fpl_text = Path(args.fpl).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise H2GNetError(args.fpl, f"cannot read the pipeline text ({exc})") from None
    for kind in ("patch-classifier", "refiner"):  # the preset's files exist: a one-line error before any slide
        preset_model(args.preset, kind, args.models_dir)
    slides = expand_inputs(args.inputs)
    check_writable(args.output)
    results, failures = [], 0
    for path, slide_mpp in slides:
        try:
            results.append(compare_slide(path, Path(args.output) / path.stem, preset=args.preset,
                                         models_dir=args.models_dir, fpl_text=fpl_text, mpp=slide_mpp or args.mpp,
                                         timeout=args.timeout, threads=args.threads))
        except H2GNetError as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.summary() for r in results], indent=2))
    else:
        rows = [r.row() for r in results]
        if rows:
            print(format_rows(rows))
        for r in results:  # the reasons, and what each known FAST fault is, under the table
            if r.verdict != "agree":
                print(f"{Path(r.slide).name}: {r.verdict}")
        for key in sorted({k for r in results for k in r.notes}):
            print(f"  {key}: {KNOWN_DIFFERENCES[key]}")
    if failures:
        return 1
    return 0 if all(r.verdict == "agree" for r in results) else 3


def _add_compare_fast(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare-fast", help="run FAST's published pipeline and h2gnet's preset on your slides and "
                                            "compare patches, heatmaps and masks (needs pyFAST)")
    p.add_argument("inputs", nargs="+", help="slide files, glob patterns or manifest .csv files")
    p.add_argument("--preset", choices=preset_names(), default="h2gnet-2022")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="folder of the preset's files (default: where fetch-models puts them)")
    p.add_argument("--fpl", type=Path, default=None,
                   help="the pipeline text FAST runs (e.g. FastPathology's copy of breast_tumour_segmentation.fpl; "
                        "default: FAST's published text as h2gnet ships it); only its model paths are changed")
    add_rule_option(p, SLIDE_MPP_RULE, "--mpp")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder for both runs' outputs and NAME/NAME.compare.json")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS", help="limit of one FAST run")
    add_param(p, SegmentConfig, "threads")
    p.add_argument("--json", action="store_true", help="print the comparisons as JSON")
    p.set_defaults(func=_cmd_compare_fast)


def _cmd_fetch_models(args: argparse.Namespace) -> int:
    from h2gnet.fast.datahub import fetch_models

    r = fetch_models(args.preset, args.models_dir, args.source, download=not args.no_download,
                     fast_storage=args.fast_storage)
    print(f"{args.preset}: from {r.source} into {r.folder} (graphs match the preset's card)")
    for kind, info in r.files.items():
        print(f"  {kind}: {info['file']}  sha256 {info['sha256']}")
    if r.licence:
        print(f"licence of the weights ({r.licence_file}):\n{r.licence}")
    else:
        print("no licence file beside the files: check the data-hub item's licence before using the weights")
    return 0


def _add_fetch_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch-models", help="get published models (pyFAST data hub, FAST's storage folder or "
                                            "--from), check them against their card, record SHA-256 and licence")
    p.add_argument("preset", choices=preset_names())
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help="folder holding the files (e.g. a copy of FAST's data-hub item)")
    p.add_argument("--models-dir", type=Path, default=None, help="where to put them (default: h2gnet's models folder)")
    p.add_argument("--fast-storage", type=Path, default=None, help="FAST's data-hub folder (default: pyFAST's)")
    p.add_argument("--no-download", action="store_true", help="never ask pyFAST's data hub to download")
    p.set_defaults(func=_cmd_fetch_models)


# -- evaluation ----------------------------------------------------------------------------
def _cmd_evaluate(args: argparse.Namespace) -> int:

    entries = select(read_manifest(args.manifest), None if args.split == "all" else args.split)
    failures: list[str] = []
    mpp = config_from_args(EvaluateConfig, args).mpp
    with folder_lock(args.output, "evaluate"):  # one evaluation per output folder
        with _engine(args) as engine:
            rows = evaluate_predictions(entries, args.predictions, mpp, args.design,
                                        progress=not args.quiet, engine=engine, failures=failures)
        if not rows and len(failures) == 1:
            raise H2GNetError(None, failures[0])
        for message in failures:
            print(f"error: {message}", file=sys.stderr)
        if not rows:
            raise H2GNetError(args.predictions, f"no slide could be evaluated ({len(failures)} failed)")
        summaries = write_evaluation(args.output, rows, args.mpp)
    print_table(summaries)
    print(f"\nper-slide CSV, Markdown and JSON summaries in {args.output} (at {args.mpp} µm/px)")
    if failures:
        print(f"{len(failures)} of {len(rows) + len(failures)} slide(s) failed; the others are scored",
              file=sys.stderr)
        return 1
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
    layout = StudyLayout(Path(out))
    print()
    print(layout.table1.read_text())
    print(f"wall time {result['timings'].get('total', float('nan')):.0f} s; report: {layout.report}")
    return 0


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="per-slide recall/precision/Dice of predicted masks against annotations")
    p.add_argument("manifest", type=Path)
    p.add_argument("--predictions", type=Path, required=True, help="folder of NAME.mask.tiff from `segment`")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for slides.csv, summary.md/json")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    add_param(p, EvaluateConfig, "mpp")
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


# -- review ----------------------------------------------------------------------------
def _cmd_view(args: argparse.Namespace) -> int:
    from h2gnet.view import load_catalogue

    cfg = config_from_args(ViewConfig, args)
    catalogue = load_catalogue(args.results, args.slides, args.evaluation)
    from h2gnet.view.app import LOOPBACK_NAMES, build_app, is_loopback, serve  # needs the [view] extra

    app = build_app(catalogue, cache_mb=cfg.cache_mb, allowed_hosts=LOOPBACK_NAMES if is_loopback(cfg.host) else None)
    failed = sum(r.status == "failed" for r in catalogue.records.values())
    missing = sum(r.slide is None for r in catalogue.records.values())

    def ready(url: str) -> None:
        print(f"{len(catalogue.records)} slides ({failed} failed, {missing} without a slide file) from "
              f"{catalogue.results}; serving read-only at {url}/ (Ctrl+C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        serve(app, cfg.host, cfg.port, on_ready=ready)
    return 0


def _add_view(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="review a results folder in the browser: cohort table, slides with the mask, "
                                    "heatmap and outlines (the [view] extra)")
    p.add_argument("results", type=Path, help="output folder of `segment` (status.csv, NAME.json, ...)")
    p.add_argument("--slides", type=Path, default=None, metavar="DIR_OR_MANIFEST",
                   help="where the slides are: a folder of slide files, or a manifest (.csv, which also gives the "
                        "annotations); default: the paths the results recorded")
    p.add_argument("--evaluation", type=Path, default=None, metavar="DIR",
                   help="an `h2gnet evaluate -o` folder whose Dice/recall/precision to show (default: the "
                        "results folder or its evaluation/ sub-folder, when one holds slides.csv)")
    for name in ("host", "port", "cache_mb"):
        add_param(p, ViewConfig, name)
    p.set_defaults(func=_cmd_view)


# -- parser ----------------------------------------------------------------------------
def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a phantom H&E cohort (slides, annotations, manifest)")
    p.add_argument("out_dir", type=Path)
    for name in ("slides", "seed", "width", "height", "mpp", "val_fraction", "test_fraction", "stain_set"):
        add_param(p, CohortConfig, name)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("tissue", help="detect tissue on the ×1.25 plane (or Otsu's baseline)")
    p.add_argument("slide", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="mask image (.png/.tif), 255 = tissue")
    p.add_argument("--method", choices=("paper", "otsu"), default="paper")
    add_rule_option(p, SLIDE_MPP_RULE, "--mpp")
    p.set_defaults(func=_cmd_tissue)

    p = sub.add_parser("patches", help="index the 256×256 patches at 10× of a cohort")
    p.add_argument("manifest", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="index folder (one file per slide)")
    add_rule_option(p, PATCH_SIZE_RULE, "--patch-size", default=PATCH_SIZE,
                    help=f"{PATCH_SIZE_RULE.help} (default {PATCH_SIZE})")
    add_rule_option(p, PATCH_MPP_RULE, "--patch-mpp", default=PATCH_MPP,
                    help=f"{PATCH_MPP_RULE.help} (default {PATCH_MPP:g})")
    p.add_argument("--annotation-class", action="append", default=None,
                   help="use only GeoJSON features of this classification (repeatable; default: all)")
    p.add_argument("--overwrite", action="store_true", help="rebuild existing index files")
    p.set_defaults(func=_cmd_patches)


def build_parser() -> argparse.ArgumentParser:
    """The ``h2gnet`` argument parser: one subcommand per pipeline stage, in pipeline order."""
    parser = _Parser(
        prog="h2gnet", description="Breast-cancer tumour region segmentation in H&E whole-slide images "
        "(H2G-Net cascade). Subcommands follow the pipeline; `h2gnet COMMAND --help` for each.")
    parser.add_argument("--version", action="version", version=f"h2gnet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--max-canvas-gb", type=float, default=None, metavar="GB",
                        help=f"largest whole-slide array any step may allocate (default {MAX_CANVAS_GB:g} GB; "
                             "slides asking more are refused before any work)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_foundation(sub)
    _add_stage1(sub)
    _add_stage2(sub)
    _add_export_fast(sub)
    _add_compare_fast(sub)
    _add_fetch_models(sub)
    _add_evaluation(sub)
    _add_view(sub)
    for sub_parser in sub.choices.values():  # -q works before or after the subcommand
        sub_parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 some slides failed, 2 bad input or usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad option (one "error:" line, status 2), --help or --version
        return int(exc.code or 0)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    before = os.environ.get(MAX_CANVAS_ENV)
    try:
        if args.max_canvas_gb is not None:
            if not (math.isfinite(args.max_canvas_gb) and args.max_canvas_gb > 0):
                raise H2GNetError(None, f"--max-canvas-gb {args.max_canvas_gb} must be a positive number of GB")
            os.environ[MAX_CANVAS_ENV] = repr(args.max_canvas_gb)  # for this run and the workers it starts
        return int(args.func(args) or 0)
    except ParameterError as exc:  # a config dataclass refused a value: name the option the user typed
        print(f"error: {_option_name(parser, args, exc.name)}: {exc.problem}", file=sys.stderr)
        return 2
    except H2GNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory (MemoryError); lower --batch-size or free memory", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        print(f"error: {disk_full_from(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if before is None:
            os.environ.pop(MAX_CANVAS_ENV, None)
        else:
            os.environ[MAX_CANVAS_ENV] = before


if __name__ == "__main__":
    sys.exit(main())
