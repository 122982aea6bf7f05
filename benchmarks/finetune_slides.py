"""How many slides does a new lab need? Fine-tuning vs training from scratch on a phantom stain shift (issue 23).

Usage:
    python benchmarks/finetune_slides.py OUT [--config cpu-small|cpu|cpu-defocus|cpu-defocus-blur|cpu-defocus-tuneblur]
        [--arms A,B] [--prepare-only] [--reuse-cohorts RUN]

Steps (each leaves its result in OUT and is skipped when run again, so an interrupted run resumes):

1. ``OUT/reference``: the cascade (Mob-PW-UNet) trained on a phantom cohort with the *reference* stain set
   (h2gnet's ablation machinery, ``study.ablation.run_study``), with its in-domain test Dice.
2. ``OUT/target``: a phantom cohort of the *alternative* stain set (another lab and scanner: bluer haematoxylin,
   orange-pink eosin, warm glass, 0.4 µm/px) and its patch index. Its test split is the evaluation set of
   every arm; its val split selects the models; its train split is the pool the arms draw slides from (nested:
   the first k of one seeded permutation).
3. Arms, all scored by refined Dice on the target's test slides at 8 µm/px:
   ``zero-shot`` (the reference models as they are), ``finetune-k`` (``train-patch --init`` and
   ``train-refine --init`` from the reference runs on k target slides), ``scratch-k`` (both stages from
   random weights on the same k slides) and, in the ``cpu`` config, ``finelong-k`` (fine-tuned with the
   from-scratch step budget, at the fine-tuning learning rates).
4. ``OUT/results``: ``table.md`` (mean ± std per arm), ``tukey.md`` (every arm against zero-shot, and each
   fine-tuned arm against from-scratch on the same slides), ``results.json``.

The configs are sized for a 2-core CPU: ``cpu`` (the alternative stain set), ``cpu-defocus`` (the same stains
scanned out of focus: a shift the paper's augmentations do not cover) and ``cpu-defocus-blur`` (that study with
Gaussian blur added to every patch classifier's augmentations, ``--blur-um 2``) and ``cpu-defocus-tuneblur``
(the ``cpu-defocus`` reference, trained without blur, fine-tuned with it) are what the guide's figures were
measured with; ``cpu-small`` the earlier, shorter recipe (the changelog's figures). ``paired.md`` compares arms
on the same test slides (paired t-test): each arm with zero-shot, each fine-tuned arm with from scratch on the
same slides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from h2gnet.conventions import METRICS_FILE, MODEL_FILE  # noqa: E402
from h2gnet.io.manifest import read_manifest  # noqa: E402

REFINE_SIZE = 256
#: The CPU study's patch classifier (configs/ablation-cpu.toml) with 180 optimizer steps instead of 480: what two
#: shared cores allowed (the reference run reached validation balanced accuracy 0.96 after 180).
PATCH = {"input_size": 128, "epochs": 3, "steps": 60, "val_steps": 5, "batch_size": 32, "lr": 1e-3, "workers": 1,
         "eval_per_class": 100}
CONFIGS: dict[str, dict] = {
    # measured on 2 cores shared with other work (docs/guide/fine-tune.md): about 2.5 h
    "cpu-small": {
        "reference": {"designs": ["mob-pw-unet"],
                      "cohort": {"slides": 24, "seed": 0, "val_fraction": 0.125, "test_fraction": 0.125},
                      "patch": PATCH,
                      "refine": {"input_size": REFINE_SIZE, "total_steps": 300, "patience": 1000,
                                 "accumulation": 1, "lr_schedule": "cosine"},
                      "evaluate": {"mpp": 8.0}},
        # 14 train (the pool), 3 val, 9 test slides
        "target": {"slides": 26, "seed": 1001, "stain_set": "alternative", "mpp": 0.4, "val_fraction": 0.08,
                   "test_fraction": 0.35},
        "finetune": [2, 5, 10],
        "scratch": [5, 10],
        # fine-tuning: a fixed step budget whatever the number of slides, a tenth of the from-scratch learning
        # rate (the trainers' --init default for the refiner; the classifier's from-scratch rate here is 1e-3);
        # the classifier's head alone for its first epoch
        "finetune_patch": {"input_size": 128, "epochs": 2, "steps": 40, "val_steps": 5, "batch_size": 32,
                           "lr": 1e-4, "workers": 1, "eval_per_class": 50, "freeze_backbone_steps": 40},
        "finetune_refine": {"total_steps": 100, "patience": 1000, "accumulation": 1, "lr_schedule": "cosine"},
        # from scratch: the reference's recipe
        "scratch_patch": {**PATCH, "eval_per_class": 50},
        "scratch_refine": {"input_size": REFINE_SIZE, "total_steps": 300, "patience": 1000, "accumulation": 1,
                           "lr_schedule": "cosine"},
        "seed": 0,
    },
}
#: The study's classifier budget (480 steps) and twice the refiner steps: a reference worth adapting (cpu-small's
#: reached in-domain Dice 0.888); 48 target slides, 14 of them test slides (cpu-small's 9 left Tukey weak).
PATCH_480 = {**PATCH, "epochs": 8}
REFINE_600 = {"input_size": REFINE_SIZE, "total_steps": 600, "patience": 1000, "accumulation": 1,
              "lr_schedule": "cosine"}
CONFIGS["cpu"] = {**CONFIGS["cpu-small"], "finetune": [2, 5, 10], "scratch": [5, 10, 20],
                  "reference": {**CONFIGS["cpu-small"]["reference"], "patch": PATCH_480, "refine": REFINE_600},
                  "target": {**CONFIGS["cpu-small"]["target"], "slides": 48, "test_fraction": 0.3},
                  "finetune_refine": {**CONFIGS["cpu-small"]["finetune_refine"], "total_steps": 150},
                  "scratch_patch": {**PATCH_480, "eval_per_class": 50}, "scratch_refine": REFINE_600,
                  # fine-tuned with the from-scratch step budget (480 + 600 steps) at the fine-tuning learning rates
                  "finelong": [5],
                  "finelong_patch": {**PATCH_480, "lr": 1e-4, "eval_per_class": 50, "freeze_backbone_steps": 60},
                  "finelong_refine": {k: v for k, v in REFINE_600.items() if k != "input_size"}}
#: A shift that augmentation does not cover: the alternative stains scanned out of focus (``defocused``: optical
#: blur sigma 1.5 µm, against 0.3 µm). The reference is the ``cpu`` config's (the same folder can be reused);
#: the short fine-tune on 5 slides only (it lowered Dice in the ``cpu`` study; here: what 2 minutes of training
#: recover); 60 target slides, 24 of them test; from scratch on 2 slides too, the pair of the fine-tune on 2.
CONFIGS["cpu-defocus"] = {**CONFIGS["cpu"], "finetune": [5], "scratch": [2, 5, 10], "finelong": [2, 5, 10],
                          "target": {**CONFIGS["cpu"]["target"], "slides": 60, "stain_set": "defocused",
                                     "test_fraction": 0.4}}

#: The augmentation lever: the same study with Gaussian blur added to every patch classifier's augmentations
#: (``--blur-um 2``: half of the patches blurred with σ uniform in [0, 2] µm) — the reference as well as every
#: arm, so zero-shot measures a reference trained to expect other focus, and the arms the recipe with blur.
#: The target cohort is the ``cpu-defocus`` one (a link to its folder saves rendering it again: same seed).
BLUR_UM = 2.0
CONFIGS["cpu-defocus-blur"] = {
    **CONFIGS["cpu-defocus"], "finetune": [5], "finelong": [5, 2, 10], "scratch": [5, 2, 10],
    "reference": {**CONFIGS["cpu-defocus"]["reference"], "patch": {**PATCH_480, "blur_um": BLUR_UM}},
    **{f"{arm}_patch": {**CONFIGS["cpu-defocus"][f"{arm}_patch"], "blur_um": BLUR_UM}
       for arm in ("finetune", "finelong", "scratch")}}

#: The recipe for a source trained *without* blur (the published model's case): the ``cpu-defocus`` reference as
#: it is, fine-tuned with blur in the classifier's augmentations (short and full budget, 5 slides); compare with
#: ``cpu-defocus``'s finetune-5 / finelong-5 on the same slides.
CONFIGS["cpu-defocus-tuneblur"] = {
    **CONFIGS["cpu-defocus"], "finetune": [5], "finelong": [5], "scratch": [],
    **{f"{arm}_patch": {**CONFIGS["cpu-defocus"][f"{arm}_patch"], "blur_um": BLUR_UM}
       for arm in ("finetune", "finelong")}}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(out: Path, cfg: dict) -> tuple[Path, Path, Path]:
    """Reference cascade (trained, evaluated), target cohort and index; (reference folder, target manifest,
    target index)."""
    from h2gnet.patches.grid import index_cohort
    from h2gnet.study.ablation import check_config, run_study
    from h2gnet.synth import CohortConfig, make_cohort

    ref = out / "reference"
    if not (ref / "results" / "results.json").exists():
        log("reference cascade (reference stains)")
        run_study(check_config(cfg["reference"], "reference"), ref, progress=False)
    target = out / "target"
    manifest = target / "cohort" / "manifest.csv"
    if not manifest.exists():
        t = cfg["target"]
        log(f"target cohort: {t['slides']} slides, {t['stain_set']} stains")
        make_cohort(target / "cohort", CohortConfig(slides=t["slides"], seed=t["seed"], mpp=t["mpp"],
                                                    val_fraction=t["val_fraction"], test_fraction=t["test_fraction"],
                                                    stain_set=t["stain_set"]), progress=False)
    index = target / "index"
    _, failures = index_cohort(read_manifest(manifest), index, progress=False)
    if failures:
        raise SystemExit(f"indexing failed: {failures[0]}")
    return ref, manifest, index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="cpu-small", choices=sorted(CONFIGS))
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--reuse-cohorts", type=Path, default=None, metavar="RUN",
                        help="link the reference and target cohorts (slides, annotations, patch indexes) of another "
                             "run folder whose config made the same cohorts (cpu-defocus for cpu-defocus-blur), and "
                             "its reference cascade when trained with this config's settings (cpu-defocus for "
                             "cpu-defocus-tuneblur), instead of making them again")
    parser.add_argument("--arms", default=None,
                        help="comma-separated arms to run (e.g. finetune-5,scratch-5; default: all of the config)")
    args = parser.parse_args(argv)
    cfg = CONFIGS[args.config]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reuse_cohorts is not None:
        link_cohorts(args.out, args.reuse_cohorts.resolve(), cfg)
    ref, manifest, index = prepare(args.out, cfg)
    log(f"prepared: {ref}, {manifest}, {index}")
    if args.prepare_only:
        return 0
    return run_arms(args.out, cfg, ref, manifest, index, args.arms.split(",") if args.arms else None)


def link_cohorts(out: Path, other: Path, cfg: dict) -> None:
    """Link ``other``'s reference cohort and index and its target folder into ``out``, after checking that they
    are the cohorts ``cfg`` makes (the reference's cohort settings, the target's slide count); when ``other``'s
    reference cascade was also trained with ``cfg``'s settings, link the whole reference (models included)."""
    recorded = json.loads((other / "reference" / "study-config.json").read_text())
    reference = cfg["reference"]
    if recorded.get("cohort") != reference["cohort"]:
        raise SystemExit(f"{other}: its reference cohort {recorded.get('cohort')} is not this config's "
                         f"{reference['cohort']}")
    slides = len(read_manifest(other / "target" / "cohort" / "manifest.csv"))
    if slides != cfg["target"]["slides"]:
        raise SystemExit(f"{other}: its target cohort has {slides} slides, this config's {cfg['target']['slides']}")
    same_models = all(recorded.get(k) == reference[k] for k in ("patch", "refine"))
    if same_models and (other / "reference" / "results" / "results.json").exists():
        links = [(out / "reference", other / "reference")]
    else:
        (out / "reference").mkdir(parents=True, exist_ok=True)
        links = [(out / "reference" / "cohort", other / "reference" / "cohort"),
                 (out / "reference" / "index", other / "reference" / "index")]
    for link, source in links + [(out / "target", other / "target")]:
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)


def arm_manifest(out: Path, manifest: Path, k: int | None, seed: int) -> Path:
    """A manifest with the first ``k`` of the target's training slides (one seeded permutation, so the arms'
    slide sets are nested) and all its validation slides."""
    from h2gnet.io.manifest import select, write_manifest

    entries = read_manifest(manifest)
    pool = select(entries, "train")
    order = np.random.default_rng(seed).permutation(len(pool))
    if k is not None and k > len(pool):
        raise SystemExit(f"{k} training slides asked, the target cohort has {len(pool)}")
    chosen = [pool[i] for i in order[:k]]
    path = out / "manifests" / f"train{k}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, chosen + select(entries, "val"))
    return path


def train_arm(out: Path, cfg: dict, ref: Path, manifest: Path, index: Path, arm: str, k: int) -> tuple[Path, Path]:
    """Both stages of one arm on ``k`` target slides: fine-tuned from the reference runs, or from scratch."""
    from h2gnet.infer.heatmap import heatmap_cohort
    from h2gnet.infer.runtime import OnnxModel
    from h2gnet.train.config import PatchTrainConfig, RefineTrainConfig
    from h2gnet.train.patch_classifier import train_patch_classifier
    from h2gnet.train.refiner import train_refiner

    folder = out / "arms" / f"{arm}-{k}"
    subset = arm_manifest(out, manifest, k, cfg["seed"])
    finetune = arm != "scratch"  # "finetune", or "finelong": fine-tuned with the from-scratch step budget
    patch_run = folder / "patch"
    if not (patch_run / METRICS_FILE).exists():
        log(f"{arm}-{k}: patch classifier")
        settings = cfg[f"{arm}_patch"]
        init = {"init": str(ref / "runs" / "mob")} if finetune else {}
        train_patch_classifier(patch_run, PatchTrainConfig(manifest=str(subset), index_dir=str(index),
                                                           progress=False, **init, **settings))
    heat = folder / "heatmaps"
    failures = heatmap_cohort(read_manifest(subset), heat, OnnxModel(patch_run / MODEL_FILE, "patch-classifier"),
                              progress=False)
    if failures:
        raise SystemExit(f"heatmaps failed: {failures[0]}")
    refine_run = folder / "refine"
    if not (refine_run / METRICS_FILE).exists():
        log(f"{arm}-{k}: refiner")
        settings = cfg[f"{arm}_refine"]
        init = {"init": str(ref / "runs" / "unet")} if finetune else {}
        train_refiner(refine_run, RefineTrainConfig(manifest=str(subset), heatmaps=str(heat), arch="unet",
                                                    progress=False, **init, **settings))
    return patch_run / MODEL_FILE, refine_run / MODEL_FILE


def score(out: Path, manifest: Path, name: str, patch: Path, refine: Path) -> list[dict]:
    """Segment the target's test slides with (patch, refine) and score them (refined Dice at 8 µm/px)."""
    from h2gnet.evaluation.predictions import evaluate_predictions
    from h2gnet.infer.segment import SegmentConfig, segment_many
    from h2gnet.io.manifest import select

    tests = select(read_manifest(manifest), "test")
    predictions = out / "predictions" / name
    status = segment_many([str(e.slide) for e in tests], predictions,
                          SegmentConfig(patch_model=patch, refine_model=refine, progress=False,
                                        adaptive=None))  # dense, as the study's figures
    failed = [v["error"] for v in status.values() if v["status"] == "failed"]
    if failed:
        raise SystemExit(f"{name}: segmentation failed: {failed[0]}")
    return evaluate_predictions(tests, predictions, 8.0, name, progress=False)


def write_results(out: Path, rows: list[dict], names: list[str], timings: dict[str, float],
                  stain_set: str = "alternative") -> dict:
    """table.md (recall, precision, Dice: mean ± std), tukey.md/.csv, results.json."""
    from h2gnet.evaluation.metrics import summarise_designs, values_by_design
    from h2gnet.evaluation.stats import format_p, write_tukey
    from h2gnet.evaluation.summary import format_mean_std, write_slides_csv
    from h2gnet.io.atomic import write_text

    res = out / "results"
    res.mkdir(parents=True, exist_ok=True)
    summaries = summarise_designs(rows)
    write_slides_csv(res / "slides.csv", rows)
    lines = ["| Arm | Recall | Precision | Dice | minutes (train + segment) |", "|---|---|---|---|---|"]
    for name in names:
        s = summaries[name]["overall"]
        lines.append(f"| {name} | {format_mean_std(s['recall'])} | {format_mean_std(s['precision'])} | "
                     f"{format_mean_std(s['dice'])} | {timings.get(name, float('nan')) / 60:.1f} |")
    n = summaries[names[0]]["overall"]["n"]
    write_text(res / "table.md", "\n".join(lines) + f"\n\nTarget ({stain_set} stain set) test slides: n = {n}.\n")
    tukey = write_tukey(res, values_by_design(rows)) if len(names) > 1 else None
    paired = paired_comparisons(rows, names)
    write_text(res / "paired.md", "\n".join(
        ["| arm | against | slides higher | mean difference | paired t-test p |", "|---|---|---|---|---|"]
        + [f"| {c['arm']} | {c['against']} | {c['higher']} of {c['n']} | {c['mean_difference']:+.4f} | "
           f"{format_p(c['p'])} |" for c in paired]) + "\n")
    result = {"summaries": summaries, "tukey": tukey, "paired": paired, "timings": timings, "arms": names}
    write_text(res / "results.json", json.dumps(result, indent=2, default=lambda o: o.tolist() if hasattr(
        o, "tolist") else str(o)))
    return result


def paired_comparisons(rows: list[dict], names: list[str]) -> list[dict]:
    """Per-slide refined Dice compared on the same test slides (paired t-test): every arm against zero-shot,
    and each fine-tuned arm (finetune-k, finelong-k) against scratch-k."""
    from scipy import stats

    dice = {name: {r["slide"]: float(r["dice"]) for r in rows if r["design"] == name} for name in names}
    pairs = [(name, "zero-shot") for name in names if name != "zero-shot"]
    for name in names:
        kind, _, k = name.partition("-")
        if kind in ("finetune", "finelong") and f"scratch-{k}" in dice:
            pairs.append((name, f"scratch-{k}"))
    out = []
    for arm, against in pairs:
        slides = sorted(set(dice[arm]) & set(dice[against]))
        a = np.array([dice[arm][k] for k in slides])
        b = np.array([dice[against][k] for k in slides])
        out.append({"arm": arm, "against": against, "n": len(slides), "higher": int((a > b).sum()),
                    "mean_difference": float(np.mean(a - b)), "p": float(stats.ttest_rel(a, b).pvalue)})
    return out


def run_arms(out: Path, cfg: dict, ref: Path, manifest: Path, index: Path, only: list[str] | None = None) -> int:
    """Zero-shot, then the arms in the order of the comparisons that matter (5 slides first); results after
    each arm, so an interrupted run still has a table. ``only``: these arms (zero-shot is always scored)."""
    kinds = [("finetune", cfg["finetune"]), ("finelong", cfg.get("finelong", [])), ("scratch", cfg["scratch"])]
    arms = [(a, 5) for a, ks in kinds if 5 in ks] + [(a, k) for a, ks in kinds for k in ks if k != 5]
    if only is not None:
        arms = [(a, k) for a, k in arms if f"{a}-{k}" in only]
    timings_path = out / "results" / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    t = time.perf_counter()
    rows = score(out, manifest, "zero-shot", ref / "runs" / "mob" / MODEL_FILE, ref / "runs" / "unet" / MODEL_FILE)
    timings.setdefault("zero-shot", time.perf_counter() - t)
    names = ["zero-shot"]
    write_results(out, rows, names, timings, cfg["target"]["stain_set"])
    for arm, k in arms:
        name = f"{arm}-{k}"
        t = time.perf_counter()
        patch, refine = train_arm(out, cfg, ref, manifest, index, arm, k)
        rows += score(out, manifest, name, patch, refine)
        timings.setdefault(name, time.perf_counter() - t)
        timings_path.write_text(json.dumps(timings))
        names.append(name)
        result = write_results(out, rows, names, timings, cfg["target"]["stain_set"])
        log(f"{name}: Dice {result['summaries'][name]['overall']['dice']['mean']:.3f}")
    print((out / "results" / "table.md").read_text())
    print((out / "results" / "tukey.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
