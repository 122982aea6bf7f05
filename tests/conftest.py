"""Shared fixtures: tiny slides written on the fly, and the real slides in ../shared."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

REAL_SLIDES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-slides"


def real_slide(name: str) -> Path:
    """Path of a real slide in ../shared/data/real-slides, or skip the test."""
    path = REAL_SLIDES / name
    if not path.exists():
        pytest.skip(f"real slide {name} not available ({REAL_SLIDES} absent)")
    return path


def write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float | None, downsamples=(1,), tile: int = 256) -> Path:
    """A tiled JPEG pyramidal TIFF (reduced levels as top-level pages) OpenSlide opens as generic-tiff."""
    kwargs = {}
    if mpp is not None:
        kwargs = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for ds in downsamples:
            h, w = image.shape[0] // ds, image.shape[1] // ds
            level = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA) if ds != 1 else image
            level_kwargs = kwargs if mpp is None else {
                "resolution": (1e4 / (mpp * ds), 1e4 / (mpp * ds)), "resolutionunit": "CENTIMETER"}
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg",
                      compressionargs={"level": 95}, subfiletype=0 if ds == 1 else 1, **level_kwargs)
    return path


def write_aperio_svs(path: Path, image: np.ndarray, mpp: float, magnification: float | None,  # noqa: PLR0913
                     downsamples=(1, 4, 16), *, rounding: str = "floor", tile: int = 256) -> Path:
    """An Aperio-style SVS (tiled JPEG levels, 'Aperio Image Library' descriptions with ``MPP`` and, unless
    None, ``AppMag``) that OpenSlide opens with its aperio driver. Level sizes are level-0 size / downsample,
    rounded down (``rounding`` "floor", as most scanners write them) or up ("ceil")."""
    h0, w0 = image.shape[:2]

    def size(v: int, ds: int) -> int:
        return -(-v // ds) if rounding == "ceil" else v // ds

    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for ds in downsamples:
            level = image if ds == 1 else cv2.resize(image, (size(w0, ds), size(h0, ds)), interpolation=cv2.INTER_AREA)
            h, w = level.shape[:2]
            mag = "" if magnification is None else f"|AppMag = {magnification:g}"
            desc = (f"Aperio Image Library v12.0.16\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({tile}x{tile}) JPEG Q=90{mag}"
                    f"|MPP = {mpp}" if ds == 1 else
                    f"Aperio Image Library v12.0.16\r\n{w0}x{h0} -> {w}x{h} - ({tile}x{tile}) JPEG Q=90")
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      description=desc, metadata=None)
    return path


def phantom_image(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A white slide with a pink tissue ellipse and a purple 'tumour' disc inside it; returns (rgb, tumour)."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 245, np.uint8)
    tissue = np.zeros((height, width), np.uint8)
    cv2.ellipse(tissue, (width // 2, height // 2), (int(width * 0.35), int(height * 0.3)), 0, 0, 360, 1, -1)
    tumour = np.zeros((height, width), np.uint8)
    cv2.circle(tumour, (width // 2, height // 2), int(min(width, height) * 0.15), 1, -1)
    noise = rng.integers(-8, 8, size=(height, width, 3))
    pink = np.clip(np.array([230, 150, 190]) + noise, 0, 255)
    purple = np.clip(np.array([120, 60, 160]) + noise, 0, 255)
    img[tissue > 0] = pink[tissue > 0]
    img[tumour > 0] = purple[tumour > 0]
    return img, tumour.astype(bool)


def tumour_geojson(path: Path, centre: tuple[float, float], radius: float, hole: float = 0.0) -> Path:
    """A QuPath-style GeoJSON with one circular 'Tumor' polygon (optionally with a hole), level-0 px."""
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)

    def ring(r: float, reverse: bool = False) -> list:
        pts = [[centre[0] + r * np.cos(a), centre[1] + r * np.sin(a)] for a in angles]
        pts = pts[::-1] if reverse else pts
        return [*pts, pts[0]]

    rings = [ring(radius)] + ([ring(hole, reverse=True)] if hole else [])
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring(radius / 4)]},
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma"}}},
    ]}
    path.write_text(json.dumps(doc))
    return path


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging when the block runs longer than ``seconds``."""

    def fail(*_: object) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    before = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


@pytest.fixture
def tiny_slide(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A 2048×1536 slide at 0.5 µm/px with downsamples (1, 4, 16), its GeoJSON and tumour mask."""
    img, tumour = phantom_image(2048, 1536)
    slide = write_pyramid_tiff(tmp_path / "tiny.tiff", img, 0.5, downsamples=(1, 4, 16))
    ann = tumour_geojson(tmp_path / "tiny.geojson", (1024, 768), 1536 * 0.15)
    return slide, ann, tumour


@pytest.fixture(scope="module")
def torch_one_thread():
    """One PyTorch intra-op thread for a module of tiny-tensor tests (as fast, and fair to other processes)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mini_cohort(tmp_path_factory) -> Path:
    """Four small annotated slides (train ×2, val, test) with a manifest and a patch index; returns the folder."""
    from h2gnet.io.manifest import read_manifest
    from h2gnet.patches.grid import index_cohort

    root = tmp_path_factory.mktemp("cohort")
    rows = ["slide,annotation,grade,split"]
    for i, (split, grade) in enumerate([("train", 1), ("train", 2), ("val", 3), ("test", 2)]):
        img, _ = phantom_image(3072, 2048, seed=i)
        write_pyramid_tiff(root / f"s{i}.tiff", img, 0.5, (1, 4, 16))
        tumour_geojson(root / f"s{i}.geojson", (1536, 1024), 2048 * 0.15)
        rows.append(f"s{i}.tiff,s{i}.geojson,{grade},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    index_cohort(read_manifest(root / "manifest.csv"), root / "index", progress=False)
    return root


@pytest.fixture(scope="session")
def patch_run(mini_cohort: Path) -> Path:
    """A patch classifier trained for a few steps on the mini cohort (64-px input); returns its run folder."""
    pytest.importorskip("torch")
    from h2gnet.train.patch_classifier import PatchTrainConfig, train_patch_classifier

    cfg = PatchTrainConfig(manifest=str(mini_cohort / "manifest.csv"), index_dir=str(mini_cohort / "index"),
                           epochs=1, steps=2, val_steps=1, batch_size=8, input_size=64, workers=0,
                           eval_per_class=4, progress=False)
    run = mini_cohort / "patch-run"
    with pytest.warns(UserWarning, match="random"):
        train_patch_classifier(run, cfg)
    return run


#: Fixtures that train a model: every test using one (directly or through another fixture) is ``slow``.
TRAINING_FIXTURES = {"patch_run", "tiny_models", "exported"}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001 - pytest hook signature
    """Mark tests that train as ``slow`` so that ``pytest -m "not slow"`` is the quick loop."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
