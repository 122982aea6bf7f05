"""Slide-level outputs: pyramidal mask TIFFs, QuPath GeoJSON and overlay PNGs.

Nothing here imports torch or matplotlib.
"""

from h2gnet.outputs.geojson import mask_to_geojson, write_geojson
from h2gnet.outputs.mask_tiff import load_mask_tiff, resample_nearest, write_mask_tiff
from h2gnet.outputs.overlay import render_overlay, write_png

__all__ = [
    "load_mask_tiff",
    "mask_to_geojson",
    "render_overlay",
    "resample_nearest",
    "write_geojson",
    "write_mask_tiff",
    "write_png",
]
