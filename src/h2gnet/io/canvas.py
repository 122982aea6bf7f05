"""Memory before work: every whole-slide canvas is sized before it is allocated.

A slide's header decides how large its low-resolution pictures are (tissue plane, annotation masks,
heatmaps, resampled rasters). A 788 KB file can claim 10⁶×10⁶ px; a wrong µm/px can ask for an
11 GiB array. :func:`check_canvas` refuses such a canvas with one clear error before any memory is
reserved or any tile is read.

The limit is :data:`h2gnet.conventions.MAX_CANVAS_GB` per array; the environment variable
:data:`h2gnet.conventions.MAX_CANVAS_ENV` (set by ``h2gnet --max-canvas-gb``) raises or lowers it for
this process and the workers it starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from h2gnet.conventions import MAX_CANVAS_ENV, MAX_CANVAS_GB
from h2gnet.errors import H2GNetError


def canvas_limit_bytes() -> int:
    """The largest canvas allowed, in bytes (from :data:`MAX_CANVAS_ENV`, else :data:`MAX_CANVAS_GB`)."""
    raw = os.environ.get(MAX_CANVAS_ENV, "")
    try:
        gb = float(raw) if raw.strip() else MAX_CANVAS_GB
    except ValueError:
        raise H2GNetError(None, f"environment variable {MAX_CANVAS_ENV}={raw!r} is not a number of GB") from None
    if not (math.isfinite(gb) and gb > 0):
        raise H2GNetError(None, f"environment variable {MAX_CANVAS_ENV}={raw!r} must be a positive number of GB")
    return int(gb * 1e9)


def check_canvas(shape: tuple[int, ...], itemsize: int, path: str | Path | None, what: str) -> None:
    """Refuse (:class:`H2GNetError` naming ``path``) an array of ``shape`` × ``itemsize`` bytes past the limit.

    ``what`` says which canvas it is (e.g. "the tissue plane at 8 µm/px").
    """
    need = math.prod(int(v) for v in shape) * int(itemsize)
    limit = canvas_limit_bytes()
    if need > limit:
        dims = "×".join(str(int(v)) for v in shape[:2])
        raise H2GNetError(path, f"{what} would be a {dims} px array of {need / 1e9:.1f} GB, over the "
                                f"{limit / 1e9:g} GB limit (wrong µm/px or a corrupt header?); raise it with "
                                f"`h2gnet --max-canvas-gb N` if the slide really is that large")
