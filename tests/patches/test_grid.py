from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from h2gnet.errors import H2GNetError
from h2gnet.io.manifest import SlideEntry
from h2gnet.io.raster import Raster
from h2gnet.patches.grid import (
    LABEL_NON_TUMOUR,
    LABEL_TUMOUR,
    PatchGrid,
    PatchIndex,
    build_index,
    cell_fractions,
    index_cohort,
    index_slide,
)


def test_grid_geometry_in_level0_pixels() -> None:
    g = PatchGrid((10000, 6000), slide_mpp=0.25)
    assert g.side_l0 == 1024 and g.shape == (6, 10) and g.cell_mpp == 256
    x, y = g.locations(np.array([1]), np.array([2]))
    assert (x[0], y[0]) == (2048, 1024)
    odd = PatchGrid((2220, 2967), slide_mpp=0.499)
    assert odd.side_l0 == pytest.approx(513.03, abs=0.01)


def test_cell_fractions_exact() -> None:
    # slide 2048×1024 at 1 µm/px, 256-px patches -> 2×... grid; mask at 8 µm/px = 32 px per patch
    mask = np.zeros((128, 256), bool)
    mask[:32, :16] = True       # half of cell (0, 0)
    mask[32:64, 32:64] = True   # all of cell (1, 1)
    grid = PatchGrid((2048, 1024), 1.0)
    fr = cell_fractions(Raster(mask, 8.0, 1.0), grid)
    assert fr.shape == (4, 8)
    assert fr[0, 0] == pytest.approx(0.5) and fr[1, 1] == pytest.approx(1.0) and fr.sum() == pytest.approx(1.5)


def test_labels_follow_the_paper_thresholds() -> None:
    grid = PatchGrid((1024, 256), 1.0)  # 1 row, 4 patches; masks at 8 µm/px: 32 px per patch
    tissue = np.zeros((32, 128), bool)
    tissue[:, :] = True
    tissue[:, 96:] = False
    tissue[:8, 96:] = True  # patch 3: exactly 25 % tissue -> dropped (needs > 25 %)
    tumour = np.zeros((32, 128), bool)
    tumour[:, 0:32] = True           # patch 0: 100 % tumour
    tumour[:8, 32:64] = True         # patch 1: 25 % tumour -> discarded (needs > 25 %)
    idx = build_index("s", Raster(tissue, 8, 1), Raster(tumour, 8, 1), grid)
    assert list(idx.col) == [0, 2]
    assert list(idx.label) == [LABEL_TUMOUR, LABEL_NON_TUMOUR]
    assert list(idx.x) == [0, 512] and idx.tumour[0] == pytest.approx(1.0)


def test_index_roundtrip_and_bad_file(tmp_path: Path) -> None:
    grid = PatchGrid((1024, 256), 1.0)
    idx = build_index("s.tiff", Raster(np.ones((32, 128), bool), 8, 1), None, grid, grade=3, split="val")
    idx.save(tmp_path / "i.parquet")
    back = PatchIndex.load(tmp_path / "i.parquet")
    assert len(back) == 4 and back.grade == 3 and back.split == "val" and (back.label == -1).all()
    assert np.array_equal(back.x, idx.x)
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(H2GNetError, match="not an h2gnet patch index"):
        PatchIndex.load(tmp_path / "bad.parquet")


def test_index_slide_end_to_end(tiny_slide, tmp_path: Path) -> None:
    slide, ann, tumour = tiny_slide
    entry = SlideEntry(slide, ann, 2, "train")
    idx, area = index_slide(entry, annotation_classes=["Tumor"])
    counts = idx.counts()
    # 2048×1536 at 0.5 µm/px = 1024×768 µm -> 4×3 grid of 256 µm patches; the tumour disc is central
    assert idx.grid.shape == (3, 4)
    assert counts["tumour"] >= 1 and counts["non_tumour"] >= 1 and area > 0
    rows, failures = index_cohort([entry, SlideEntry(tmp_path / "gone.tiff", None, None, "test")], tmp_path / "idx")
    assert len(rows) == 1 and len(failures) == 1 and "no such file" in failures[0][1]
    assert (tmp_path / "idx" / "tiny.patches.parquet").exists()
