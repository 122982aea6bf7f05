"""The first page of a small TIFF (a mask, a heatmap, a mask-image annotation), read with one clear error.

Whole slides are read elsewhere (:mod:`h2gnet.io.slides`, :mod:`h2gnet.io.tifftiles`); this reads one page
whole, after sizing it with :func:`h2gnet.io.canvas.check_canvas`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.io.canvas import check_canvas


@dataclass(frozen=True)
class TiffPage:
    """A TIFF's first page: its pixels, its ImageDescription (as read by the caller's ``description``) and
    the values of the tags asked for (name -> value, e.g. ``XResolution`` in pixels per unit)."""

    array: np.ndarray
    description: Any = ""
    tags: dict[str, Any] = field(default_factory=dict)


def read_tiff_page(path: str | Path, what: str, bytes_per_pixel: int, unreadable: str, *,
                   tags: tuple[str, ...] = (), description: Callable[[str], Any] | None = None) -> TiffPage:
    """The first page of TIFF ``path``, whole.

    ``description`` reads the ImageDescription text (e.g. ``json.loads``) before the pixels; the page is sized
    by :func:`check_canvas` (``what``: the array's name in its error, ``bytes_per_pixel`` as stored). A file
    that cannot be read so (not a TIFF, truncated, a tag of ``tags`` missing, ``description`` failing) is an
    :class:`H2GNetError` naming ``path`` with ``unreadable``, where ``{error}`` becomes the exception's type
    name and ``{detail}`` its text; no library traceback.
    """
    import tifffile

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert isinstance(page, tifffile.TiffPage)  # the first page is never a frame
            text = description(page.description) if description is not None else page.description
            check_canvas(page.shape, bytes_per_pixel, path, what)
            array = page.asarray()
            values = {name: page.tags[name].value for name in tags}
    except H2GNetError:
        raise
    except Exception as exc:  # tifffile (and the description's reader) raise many types for bad files
        raise H2GNetError(path, unreadable.format(error=type(exc).__name__, detail=exc)) from None
    return TiffPage(array, text, values)
