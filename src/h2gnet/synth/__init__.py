"""Phantom cohort generator: synthetic H&E breast-cancer whole-slide images with tumour annotations.

No annotated breast-cancer cohort ships with h2gnet, so this package renders one
that poses the H2G-Net problem (Pedersen et al. 2022): pyramidal JPEG TIFFs of
H&E sections (stroma, fat, normal lobules and ducts, lymphocyte aggregates,
vessels) with a tumour *region* whose annotation covers invasive nests of a
given Nottingham grade and the desmoplastic stroma between them.

Public API::

    make_cohort(out_dir, CohortConfig(slides=24, seed=0, width=None, height=None, mpp=None, stain_set="reference"),
                progress=True)
    make_slide_spec(seed, grade, width, height, mpp, pyramid, stain_set="reference") -> SlideSpec
    render_slide(path, spec, progress=False)
    tumour_geojson(spec) -> dict
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from h2gnet.synth.annotation import geojson_text, tumour_geojson
    from h2gnet.synth.cohort import CohortConfig, make_cohort, plan_cohort
    from h2gnet.synth.slide import render_slide
    from h2gnet.synth.spec import SlideSpec, make_slide_spec

#: Where each public name lives: imported on first use, so that commands which render nothing (``segment``)
#: do not pay for the renderer's imports.
_HOME = {"geojson_text": "annotation", "tumour_geojson": "annotation", "CohortConfig": "cohort",
         "make_cohort": "cohort", "plan_cohort": "cohort", "render_slide": "slide", "SlideSpec": "spec",
         "make_slide_spec": "spec"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'h2gnet.synth' has no attribute {name!r}")
    value = getattr(import_module(f"h2gnet.synth.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CohortConfig",
    "SlideSpec",
    "geojson_text",
    "make_cohort",
    "make_slide_spec",
    "plan_cohort",
    "render_slide",
    "tumour_geojson",
]
