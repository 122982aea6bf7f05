"""``h2gnet view``: a local, read-only web app to review a results folder in the browser (``[view]`` extra).

The cohort page lists every slide of ``status.csv`` and the ``NAME.json`` summaries; a slide's page shows the
slide itself as Deep Zoom tiles (OpenSeadragon, served from this package) with the tumour mask, the heatmap and
the outlines. :mod:`~h2gnet.view.catalogue` reads the folder (no web framework needed);
:mod:`~h2gnet.view.app` serves it (Starlette and uvicorn).

>>> from h2gnet.view import load_catalogue
>>> from h2gnet.view.app import build_app, serve  # doctest: +SKIP
>>> serve(build_app(load_catalogue("results/", slides="cohort.csv")))  # doctest: +SKIP
"""

from h2gnet.view.catalogue import Catalogue, SlideRecord, load_catalogue

__all__ = ["Catalogue", "SlideRecord", "load_catalogue"]
