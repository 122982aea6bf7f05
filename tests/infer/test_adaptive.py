from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from h2gnet.errors import H2GNetError
from h2gnet.infer.adaptive import AdaptiveConfig, adaptive_values


def _field(shape: tuple[int, int] = (40, 60)) -> tuple[np.ndarray, np.ndarray]:
    """(tissue, probabilities): an elliptic tissue region with a confident tumour disc, a soft rim, noise-free."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    tissue = ((yy - 20) / 17) ** 2 + ((xx - 30) / 27) ** 2 < 1
    d = np.hypot(yy - 18, xx - 26)
    prob = np.clip((9 - d) / 3, 0, 1) * 0.98 + 0.01  # 0.99 inside r 6, 0.01 beyond r 9
    return tissue, prob.astype(np.float32)


class Recorder:
    """classify callback over a fixed field; remembers every cell it was asked for."""

    def __init__(self, prob: np.ndarray) -> None:
        self.prob, self.calls = prob, []

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        self.calls.append((rows.copy(), cols.copy()))
        return self.prob[rows, cols]

    def asked(self) -> np.ndarray:
        out = np.zeros(self.prob.shape, int)
        for r, c in self.calls:
            np.add.at(out, (r, c), 1)
        return out


def test_same_decision_as_dense_with_fewer_patches() -> None:
    tissue, prob = _field()
    rec = Recorder(prob)
    res = adaptive_values(tissue, rec)
    asked = rec.asked()
    assert asked.max() == 1 and not asked[~tissue].any()  # each tissue patch at most once, none outside tissue
    assert np.array_equal(asked > 0, res.classified)
    assert np.array_equal(res.values[res.classified], prob[res.classified])  # classified cells keep their value
    assert np.array_equal(res.values > 0.5, tissue & (prob > 0.5))  # the decision is the dense one everywhere
    assert not res.values[~tissue].any()
    assert res.fraction < 0.45 and len(res.rounds) >= 2
    # uncertain cells (the soft rim) are all classified; the confident interior is partly filled
    rim = tissue & (prob > 0.1) & (prob < 0.9)
    assert res.classified[rim].all()
    assert not res.classified[tissue & (np.hypot(*np.mgrid[:40, :60] - np.array([18, 26])[:, None, None]) < 4)].all()


def test_stride_one_is_dense() -> None:
    tissue, prob = _field()
    rec = Recorder(prob)
    res = adaptive_values(tissue, rec, AdaptiveConfig(stride=1))
    assert res.classified.sum() == tissue.sum() and len(rec.calls) == 1
    assert np.array_equal(res.values, np.where(tissue, prob, 0))


def test_isolated_positive_on_the_lattice_is_explored_and_kept() -> None:
    tissue = np.ones((21, 21), bool)
    prob = np.full(tissue.shape, 0.02, np.float32)
    prob[10, 10] = prob[10, 11] = prob[11, 10] = 0.97  # a 3-patch focus with a lattice corner at (10, 10)
    res = adaptive_values(tissue, Recorder(prob))
    assert np.array_equal(res.values > 0.5, prob > 0.5)
    assert res.classified[9:13, 9:13].all()  # its neighbourhood was classified
    assert res.fraction < 0.5


def test_tissue_the_lattice_misses_is_classified() -> None:
    tissue = np.zeros((12, 12), bool)
    tissue[5, 1:12] = True  # a one-patch-thick strip on an odd row: no lattice cell on it
    prob = np.full(tissue.shape, 0.03, np.float32)
    res = adaptive_values(tissue, Recorder(prob))
    assert res.classified[tissue].any() and not res.values[~tissue].any()
    assert np.allclose(res.values[tissue], 0.03)


def test_a_border_cell_is_classified_not_extrapolated() -> None:
    # A tumour that fades out at the edge of the tissue: the last tissue row is uncertain, its lattice
    # neighbours (one row in) confident. Filling it from one side would make it tumour; it must be read.
    tissue = np.zeros((12, 12), bool)
    tissue[1:11, 1:11] = True
    prob = np.full(tissue.shape, 0.97, np.float32)
    prob[10, :] = 0.25  # the edge row, off the lattice (which sits on rows and columns 1, 3, 5, 7, 9)
    for check in ("any", "mean"):
        res = adaptive_values(tissue, Recorder(prob), AdaptiveConfig(check=check))
        assert res.classified[10, 1:11].all(), check
        assert np.array_equal(res.values > 0.5, tissue & (prob > 0.5)), check
        assert res.fraction < 0.9, check  # the enclosed interior is still filled


def test_mean_check_skips_a_lone_uncertain_neighbour_and_keeps_the_decision() -> None:
    tissue = np.ones((21, 21), bool)
    prob = np.full(tissue.shape, 0.03, np.float32)
    prob[10, 10] = 0.35  # one uncertain lattice patch among confident negatives: the decision is clear around it
    prob[:, 16:] = 0.97  # and a tumour border
    lone = np.zeros(tissue.shape, bool)
    lone[9:12, 9:12] = True
    lone[10, 10] = False
    res = {check: adaptive_values(tissue, Recorder(prob), AdaptiveConfig(check=check, low=0.3, high=0.7))
           for check in ("any", "mean")}
    assert res["any"].classified[lone].all()  # "any": every neighbour of the uncertain patch is classified
    assert not res["mean"].classified[lone].any()  # "mean": their filled value (<= 0.19) is confident
    assert res["mean"].classified.sum() < res["any"].classified.sum()
    for r in res.values():
        assert np.array_equal(r.values > 0.5, prob > 0.5)  # both keep the dense decision, border included
        assert r.classified[:, 15:17].all()


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"stride": 0}, {"low": 0.6}, {"high": 0.4}, {"radius": 0}, {"stride": 1.5}, {"check": "max"}):
        with pytest.raises(H2GNetError):
            AdaptiveConfig(**kwargs)


def test_segment_reports_the_fraction_classified(mini_cohort: Path, patch_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from h2gnet.cli import main

    slide = str(mini_cohort / "s3.tiff")
    model = str(patch_run / "model.onnx")
    for mode in ("--dense", "--adaptive"):
        assert main(["-q", "segment", slide, "--patch-model", model, "--no-refine", mode, "-o",
                     str(tmp_path / mode)]) == 0
    dense = json.loads((tmp_path / "--dense" / "s3.json").read_text())
    adapt = json.loads((tmp_path / "--adaptive" / "s3.json").read_text())
    assert dense["evaluation"]["mode"] == "dense" and dense["classified_fraction"] == 1.0
    assert adapt["evaluation"]["mode"] == "adaptive" and adapt["evaluation"]["stride"] == 2
    assert adapt["tissue_patches"] == dense["tissue_patches"] and adapt["patches"] <= dense["patches"]
    assert adapt["classified_fraction"] == pytest.approx(adapt["patches"] / adapt["tissue_patches"], abs=1e-4)


class _PurpleModel:
    """Stands in for an OnnxModel: tumour probability from how purple a 16-px patch at 4 µm/px is."""

    input_size, mpp, classes, path = 16, 4.0, ["non-tumour", "tumour"], Path("purple.onnx")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        red = batch[:, 0].mean(axis=(1, 2))  # tumour (120/255) is redder-poor next to stroma (230/255)
        p = np.clip((0.8 - red) / 0.3, 0.01, 0.99).astype(np.float32)
        return np.stack([1 - p, p], axis=1)


def test_heatmap_reads_only_the_classified_patches(tiny_slide) -> None:
    from h2gnet.infer.heatmap import HeatmapSettings, HeatmapStats, compute_heatmap
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.tissue import detect_tissue

    path, _, _ = tiny_slide
    reads, heat, stats = {}, {}, {}
    for mode, cfg in (("dense", None), ("adaptive", AdaptiveConfig())):
        with open_slide(path) as slide:
            tissue = detect_tissue(slide)
            calls = []
            original = slide.read_region
            slide.read_region = lambda loc, size, mpp, _f=original, _c=calls: (_c.append(loc), _f(loc, size, mpp))[1]
            stats[mode] = HeatmapStats()
            heat[mode] = compute_heatmap(slide, _PurpleModel(), tissue, HeatmapSettings(adaptive=cfg), progress=False,
                                         stats=stats[mode]).array
            reads[mode] = calls
    assert len(reads["dense"]) == stats["dense"].patches == stats["dense"].tissue_patches
    assert len(reads["adaptive"]) == stats["adaptive"].patches < stats["dense"].patches
    assert len(set(reads["adaptive"])) == len(reads["adaptive"])  # no patch read twice
    assert stats["adaptive"].tissue_patches == stats["dense"].tissue_patches
    assert np.array_equal(heat["adaptive"] > 0.5, heat["dense"] > 0.5)
    assert (heat["dense"] > 0.5).any() and (heat["dense"][heat["dense"] > 0] < 0.5).any()


def test_z_order_keeps_blocks_together() -> None:
    from h2gnet.infer.heatmap import z_order

    rows, cols = np.nonzero(np.ones((6, 8), bool))
    order = z_order(rows, cols)
    assert sorted(order.tolist()) == list(range(len(rows)))  # a permutation
    blocks = (rows[order] // 2) * 4 + cols[order] // 2  # aligned 2×2 blocks come in runs of four
    assert all(len(set(blocks[i:i + 4].tolist())) == 1 for i in range(0, len(blocks), 4))


def test_adaptive_reading_order_and_tile_cache_do_not_change_the_heatmap(tiny_slide,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from h2gnet.infer import heatmap as hm
    from h2gnet.io.slides import open_slide
    from h2gnet.patches.tissue import detect_tissue

    path, _, _ = tiny_slide
    heat = {}
    for order, cache_mb in (("grid", None), ("z", 512)):
        monkeypatch.setattr(hm, "ADAPTIVE_READ_ORDER", order)
        monkeypatch.setattr(hm, "ADAPTIVE_TILE_CACHE_MB", cache_mb)
        with open_slide(path) as slide:
            stats = hm.HeatmapStats()
            heat[order] = hm.compute_heatmap(slide, _PurpleModel(), detect_tissue(slide),
                                             hm.HeatmapSettings(adaptive=AdaptiveConfig()), progress=False,
                                             stats=stats).array
            assert stats.seconds["read_wait"] >= 0 and stats.seconds["inference"] > 0
    np.testing.assert_allclose(heat["z"], heat["grid"], atol=1e-6)


def test_cli_refuses_bad_adaptive_settings(tmp_path: Path, capsys) -> None:
    from h2gnet.cli import main

    for bad, word in ((["--stride", "0"], "--stride"), (["--uncertain", "0.6", "0.4"], "adaptive band")):
        assert main(["segment", str(tmp_path / "x.tiff"), "--patch-model", str(tmp_path / "m.onnx"),
                     "--no-refine", "-o", str(tmp_path / "out"), "--adaptive", *bad]) == 2
        assert word in capsys.readouterr().err
