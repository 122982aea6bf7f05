"""FAST's own published pipeline (pyFAST) against h2gnet's ``h2gnet-2022`` preset on slides h2gnet never saw:
the figures of ``docs/guide/compare-fast.md``.

Makes (cached in ``--cache``) the stand-in models in the published conventions (NHWC ``input_1``, softmax;
a two-input refiner, from ``tests/standins.py``) and a set of slides — an Aperio SVS 16000 × 12000 px at
0.5 µm/px, AppMag 20, levels 1/4/16 (the issue's first slide), 40× slides with level sizes rounded down and
up, a generic TIFF with µm/px only, sparse tissue — plus the real ``CMU-1-Small-Region.svs`` and its DICOM
from ``../shared/data/real-slides``, then runs :func:`h2gnet.fast.compare.compare_slide` on each, once with the
preset as shipped and once with a card beside the refiner that normalises its image as FAST 4.18 does on
OpenSlide slides (``minmax-red``). Prints a table per setting and, last, one JSON line with every result.

    python benchmarks/compare_fast.py --cache .bench/compare-fast
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from conftest import phantom_image, write_aperio_svs, write_pyramid_tiff  # noqa: E402
from h2gnet.fast.compare import compare_slide  # noqa: E402
from h2gnet.fast.runner import fast_available  # noqa: E402
from h2gnet.infer.model_card import load_preset  # noqa: E402
from h2gnet.io.text_table import format_rows  # noqa: E402
from standins import colour_classifier, heatmap_follower_refiner  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "real-slides"


def make_slides(folder: Path) -> dict[str, Path]:
    """The synthetic slides (written once) and the real ones that exist."""
    folder.mkdir(parents=True, exist_ok=True)
    slides = {
        "aperio-16000x12000-20x": folder / "aperio20x.svs", "aperio-40x-floor": folder / "aperio40x.svs",
        "aperio-40x-rounded-up": folder / "aperio40x-up.svs", "generic-tiff": folder / "generic.tiff",
        "sparse": folder / "sparse.svs"}
    if not all(p.exists() for p in slides.values()):
        big, _ = phantom_image(16000, 12000, seed=5)
        write_aperio_svs(slides["aperio-16000x12000-20x"], big, 0.5, 20, (1, 4, 16))
        del big
        img, _ = phantom_image(6000, 4500, seed=11)
        fine = cv2.resize(img[:3000, :4000], (8001, 6001), interpolation=cv2.INTER_LINEAR)
        write_aperio_svs(slides["aperio-40x-floor"], fine, 0.25, 40, (1, 4, 16))
        write_aperio_svs(slides["aperio-40x-rounded-up"], fine, 0.25, 40, (1, 4, 16), rounding="ceil")
        write_pyramid_tiff(slides["generic-tiff"], img, 0.5, downsamples=(1, 4, 16))
        rng = np.random.default_rng(3)
        for _ in range(40):
            cv2.circle(img, (int(rng.integers(0, 6000)), int(rng.integers(0, 4500))), int(rng.integers(75, 300)),
                       (245, 245, 245), -1)
        write_aperio_svs(slides["sparse"], img, 0.5, 20, (1, 4, 16))
    for name, rel in (("CMU-1-Small-Region.svs", "CMU-1-Small-Region.svs"),
                      ("CMU-1-Small-Region DICOM", "CMU-1-Small-Region-dicom/level-0-frames-0-30.dcm")):
        if (REAL / rel).exists():
            slides[name] = REAL / rel
    return slides


def make_models(folder: Path, normalisation: str | None) -> Path:
    """Stand-ins of the published files (and, with ``normalisation``, a card beside the refiner)."""
    folder.mkdir(parents=True, exist_ok=True)
    preset = load_preset("h2gnet-2022")
    colour_classifier(folder / preset.files["patch-classifier"], 256)
    refiner = heatmap_follower_refiner(folder / preset.files["refiner"], 1024)
    if normalisation is not None:
        doc = json.loads((ROOT / "src/h2gnet/infer/presets/h2gnet-2022.json").read_text())["cards"]["refiner"]
        doc["refiner"]["image_normalisation"] = normalisation
        refiner.with_name(refiner.stem + ".card.json").write_text(json.dumps(doc))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(".bench/compare-fast"))
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()
    if not fast_available():
        print("pyFAST is not installed (pip install pyfast): nothing to compare", file=sys.stderr)
        return 2
    slides = make_slides(args.cache / "slides")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}; date "
          f"{time.strftime('%Y-%m-%d')}")
    everything = {}
    for setting, normalisation in (("preset as shipped (minmax)", None), ("FAST's normalisation (minmax-red)",
                                                                          "minmax-red")):
        models = make_models(args.cache / f"models-{normalisation or 'preset'}", normalisation)
        rows, results = [], {}
        for name, slide in slides.items():
            r = compare_slide(slide, args.cache / "runs" / (normalisation or "preset") / name, models_dir=models,
                              timeout=args.timeout)
            results[name] = r.summary()
            rows.append({**r.row(), "slide": name})
        print(f"\n{setting}\n{format_rows(rows)}")
        everything[setting] = results
    print(json.dumps(everything))
    return 0


if __name__ == "__main__":
    sys.exit(main())
