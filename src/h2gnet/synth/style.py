"""Per-grade tumour morphology and per-slide stain appearance of a phantom slide."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h2gnet.params import Rule

#: Reference optical-density vectors (R, G, B) of Ruifrok & Johnston, before normalisation.
HAEMATOXYLIN_OD = (0.65, 0.70, 0.29)
EOSIN_OD = (0.07, 0.99, 0.11)
#: Typical vectors estimated from scanned slides (the Macenko normalisation reference);
#: real eosin absorbs more blue than the Ruifrok vector, so it looks pinker.
HAEMATOXYLIN_OD_SCANNED = (0.5626, 0.7201, 0.4062)
EOSIN_OD_SCANNED = (0.2159, 0.8012, 0.5581)


@dataclass(frozen=True)
class GradeStyle:
    """How the tumour epithelium of one Nottingham grade looks. Lengths in µm.

    ``nucleus_radius_um`` is the mean semi-major axis; ``size_sd`` the log-normal
    spread of nuclear size (pleomorphism); ``tubule_cover`` / ``solid_cover`` the
    fraction of nest-dense tumour area taken by tubules / solid nests.
    """

    grade: int
    nucleus_radius_um: float
    size_sd: float
    max_aspect: float
    irregularity: float
    darkness: tuple[float, float]
    vesicular: float
    cell_spacing_um: float
    tubule_cover: float
    solid_cover: float
    nest_scale_um: float
    mitosis_rate: float
    cytoplasm_h: float


def grade_style(grade: int) -> GradeStyle:
    """The :class:`GradeStyle` for Nottingham grade 1, 2 or 3."""
    styles = {
        1: GradeStyle(1, 3.9, 0.10, 1.35, 0.04, (0.50, 0.70), 0.05, 10.5, 0.50, 0.20, 45.0, 0.002, 0.14),
        2: GradeStyle(2, 5.0, 0.20, 1.55, 0.10, (0.58, 0.82), 0.30, 11.5, 0.20, 0.40, 70.0, 0.008, 0.18),
        3: GradeStyle(3, 6.3, 0.28, 1.75, 0.18, (0.62, 0.95), 0.60, 12.5, 0.03, 0.60, 110.0, 0.025, 0.22),
    }
    return styles[grade]


@dataclass(frozen=True, eq=False)
class StainModel:
    """Beer-Lambert H&E model: ``RGB = 255 * exp(-(cH * h_od + cE * e_od + glass_od))``.

    ``h_od`` / ``e_od`` are unit optical-density vectors (R, G, B) for one slide;
    ``h_scale`` / ``e_scale`` multiply all stain concentrations (staining strength);
    ``glass_od`` is the optical density of bare glass (background tint).
    """

    h_od: np.ndarray
    e_od: np.ndarray
    h_scale: float
    e_scale: float
    glass_od: np.ndarray

    def od_matrix(self) -> np.ndarray:
        """(2, 3) float32 rows: scaled H and E optical densities."""
        return np.stack([self.h_od * self.h_scale, self.e_od * self.e_scale]).astype(np.float32)


def _unit(v: np.ndarray | tuple[float, ...]) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class StainSet:
    """The stain of one lab / scanner: what :func:`random_stain` draws a slide's :class:`StainModel` from.

    ``h_ref`` / ``h_scanned`` (and ``e_ref`` / ``e_scanned``): two optical-density vectors (R, G, B) of
    haematoxylin (eosin); a slide's vector lies between them (a share ``mix`` of the way to the second)
    plus a normal tilt of ``tilt_sd`` per channel. ``h_scale`` / ``e_scale``: ranges of the staining
    strengths. ``glass_od``: optical density (R, G, B) of bare glass, shifted per slide by a uniform
    ``glass_shift`` and per channel by a normal ``glass_sd``, then clipped to ``glass_clip``.
    ``blur_um``: the scanner's optical blur, a Gaussian's sigma in µm (0.3: a sharp scan).
    """

    name: str
    h_ref: tuple[float, float, float]
    h_scanned: tuple[float, float, float]
    e_ref: tuple[float, float, float]
    e_scanned: tuple[float, float, float]
    h_scale: tuple[float, float]
    e_scale: tuple[float, float]
    glass_od: tuple[float, float, float]
    mix: tuple[float, float] = (0.45, 1.0)
    tilt_sd: float = 0.04
    glass_shift: float = 0.015
    glass_sd: float = 0.006
    glass_clip: tuple[float, float] = (0.01, 0.08)
    blur_um: float = 0.3


#: Stain sets by name (``stain_set`` of :func:`h2gnet.synth.make_slide_spec` and the cohort).
STAIN_SETS: dict[str, StainSet] = {
    # the default: between Ruifrok & Johnston and a scanned reference, near-neutral glass
    "reference": StainSet(
        "reference", HAEMATOXYLIN_OD, HAEMATOXYLIN_OD_SCANNED, EOSIN_OD, EOSIN_OD_SCANNED,
        h_scale=(0.8, 1.25), e_scale=(0.75, 1.3), glass_od=(0.035, 0.035, 0.035),
    ),
    # another lab and scanner: bluer-purple haematoxylin (absorbs more red, less blue), an orange-pink
    # eosin (absorbs more blue, less red), stronger haematoxylin and lighter eosin, warm (yellowish) glass
    "alternative": StainSet(
        "alternative", (0.78, 0.60, 0.17), (0.70, 0.64, 0.31), (0.02, 0.88, 0.47), (0.06, 0.78, 0.62),
        h_scale=(1.0, 1.45), e_scale=(0.55, 0.95), glass_od=(0.025, 0.035, 0.055), glass_clip=(0.01, 0.1),
    ),
    # the alternative lab's stains scanned out of focus (a worn or badly focused scanner): a blur that the
    # trainers' augmentations (flips, turns, colour, stain, zoom) do not imitate
    "defocused": StainSet(
        "defocused", (0.78, 0.60, 0.17), (0.70, 0.64, 0.31), (0.02, 0.88, 0.47), (0.06, 0.78, 0.62),
        h_scale=(1.0, 1.45), e_scale=(0.55, 0.95), glass_od=(0.025, 0.035, 0.055), glass_clip=(0.01, 0.1),
        blur_um=1.5,
    ),
}
#: The accepted values of ``stain_set`` (the cohort config, ``h2gnet synth --stain-set``, make_slide_spec).
STAIN_SET_RULE = Rule(str, choices=tuple(STAIN_SETS),
                      help="stain colours and scan: reference, alternative (another lab and scanner), or "
                           "defocused (the alternative stains scanned out of focus)")


def _perturbed_unit(rng: np.random.Generator, ref: tuple[float, ...], scanned: tuple[float, ...],
                    sd: float, mix: tuple[float, float] = (0.45, 1.0)) -> np.ndarray:
    """A unit OD vector between ``ref`` and ``scanned`` (a share ``mix`` of the way), plus a small random tilt."""
    t = rng.uniform(*mix)
    v = (1.0 - t) * _unit(ref) + t * _unit(scanned)
    v = np.clip(_unit(v) + rng.normal(0.0, sd, 3), 0.02, None)
    return _unit(v)


def random_stain(rng: np.random.Generator, stain_set: str = "reference") -> StainModel:
    """A per-slide stain of ``stain_set`` (a key of :data:`STAIN_SETS`): perturbed H/E vectors and
    strengths, slightly tinted glass. Every set makes the same random draws in the same order."""
    s = STAIN_SETS[stain_set]
    glass = np.asarray(s.glass_od) + rng.uniform(-s.glass_shift, s.glass_shift) + rng.normal(0.0, s.glass_sd, 3)
    return StainModel(
        h_od=_perturbed_unit(rng, s.h_ref, s.h_scanned, s.tilt_sd, s.mix),
        e_od=_perturbed_unit(rng, s.e_ref, s.e_scanned, s.tilt_sd, s.mix),
        h_scale=float(rng.uniform(*s.h_scale)),
        e_scale=float(rng.uniform(*s.e_scale)),
        glass_od=np.clip(glass, *s.glass_clip),
    )
