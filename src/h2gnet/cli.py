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
from h2gnet.errors import H2GNetError

Handler = Callable[[argparse.Namespace], int]


# -- foundation ------------------------------------------------------------------------
def _cmd_synth(args: argparse.Namespace) -> int:
    from h2gnet.synth import make_cohort

    manifest = make_cohort(args.out_dir, n_slides=args.slides, seed=args.seed, width=args.width,
                           height=args.height, mpp=args.mpp, progress=not args.quiet)
    print(f"phantom cohort: {manifest}")
    return 0


def _cmd_tissue(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from h2gnet.atomic import write_bytes
    from h2gnet.slides import open_slide
    from h2gnet.tissue import detect_tissue, otsu_tissue, tissue_area_mm2

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
    from h2gnet.manifest import read_manifest
    from h2gnet.patches import index_cohort
    from h2gnet.tables import format_table

    entries = read_manifest(args.manifest)
    rows, failures = index_cohort(entries, args.output, overwrite=args.overwrite, progress=not args.quiet,
                                  patch_size=args.patch_size, patch_mpp=args.patch_mpp,
                                  annotation_classes=args.annotation_class)
    if rows:
        total = {"slide": "TOTAL", "grade": "", "split": "", **{k: sum(r[k] for r in rows) for k in
                 ("patches", "tumour", "non_tumour", "unlabelled")}, "tissue_mm2": float("nan")}
        print(format_table([*rows, total]))
    for path, message in failures:
        print(f"error: {message}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(entries)} slide(s) failed; the others were indexed in {args.output}",
              file=sys.stderr)
        return 1
    return 0


# -- parser ----------------------------------------------------------------------------
def _add_foundation(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a phantom H&E cohort (slides, annotations, manifest)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--slides", type=int, default=24, help="number of slides (default 24)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="slide width in level-0 px")
    p.add_argument("--height", type=int, default=None, help="slide height in level-0 px")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px of every slide (default: varied)")
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
    parser = argparse.ArgumentParser(prog="h2gnet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"h2gnet {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_foundation(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]
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
