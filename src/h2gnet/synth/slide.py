"""Render one phantom slide to an OpenSlide-readable pyramidal JPEG TIFF."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from h2gnet.io.atomic import atomic_path
from h2gnet.synth.pyramid import write_pyramid_tiff
from h2gnet.synth.scene import SceneRenderer
from h2gnet.synth.spec import SlideSpec


def slide_description(spec: SlideSpec) -> str:
    """The TIFF ImageDescription of a phantom slide (shown by OpenSlide as ``tiff.ImageDescription``);
    names the stain set unless it is the default (so reference slides keep their bytes)."""
    stain = "" if spec.stain_set == "reference" else f"; stain_set={spec.stain_set}"
    return (
        f"h2gnet synthetic H&E phantom slide; seed={spec.seed}; grade={spec.grade}; "
        f"mpp={spec.mpp}; pyramid={','.join(map(str, spec.pyramid))}{stain}"
    )


def render_slide(path: str | Path, spec: SlideSpec, *, progress: bool = False, bigtiff: bool | None = None,
                 threads: int = 1) -> None:
    """Render ``spec`` to ``path`` (a tiled pyramidal JPEG TIFF), tile by tile with bounded memory.

    The file appears atomically: on any error nothing is left at ``path``.
    Levels follow ``spec.pyramid``; level 0 is ``spec.width`` x ``spec.height`` px
    at ``spec.mpp`` µm/px. ``bigtiff`` defaults to on when level 0 holds over 2 GiB
    of raw RGB. Peak memory is about one row of tiles per level (a few hundred MB
    for a 100,000 px wide slide). ``threads`` > 1 renders the tiles of a row
    concurrently (same bytes; useful for one big slide, pointless inside a
    process pool that already fills the cores).
    """
    path = Path(path)
    renderer = SceneRenderer(spec)
    t = spec.tile
    starts = list(range(0, spec.width, t))
    pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def render_row(y: int, rows: int) -> np.ndarray:
        def one(x: int) -> np.ndarray:
            return renderer.render(x, y, min(t, spec.width - x), rows)

        tiles = list(pool.map(one, starts)) if pool is not None else [one(x) for x in starts]
        return np.concatenate(tiles, axis=1)

    n_tiles = len(starts) * -(-spec.height // t)
    try:
        with (tqdm(total=n_tiles, unit="tile", desc=path.name, disable=not progress, leave=False) as bar,
              atomic_path(path) as tmp):
            write_pyramid_tiff(
                tmp, (spec.width, spec.height), spec.pyramid, t, render_row, spec.mpp, spec.jpeg_quality,
                slide_description(spec), bigtiff=bigtiff, on_tile=bar.update,
            )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
