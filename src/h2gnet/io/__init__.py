"""Reading and writing: slides at physical resolution, TIFF tiles, rasters, annotations, manifests, atomic files.

The bottom layer: imports nothing else of h2gnet but ``h2gnet.errors``."""
