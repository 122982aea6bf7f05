from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from h2gnet.patches.grid import PatchIndex
from h2gnet.patches.sampling import HierarchicalSampler, PatchReader, sample_stream


def _index(grade: int | None, n_tumour: int, n_normal: int, name: str = "s") -> PatchIndex:
    n = n_tumour + n_normal
    return PatchIndex(slide=name, slide_mpp=0.5, extent_l0=(10_000, 10_000), patch_size=256, patch_mpp=1.0,
                      grade=grade, split="train", row=np.zeros(n, np.int32), col=np.arange(n, dtype=np.int32),
                      x=np.arange(n, dtype=np.int64) * 512, y=np.zeros(n, np.int64),
                      label=np.array([1] * n_tumour + [0] * n_normal, np.int8),
                      tissue=np.ones(n, np.float32), tumour=np.array([1.0] * n_tumour + [0.0] * n_normal, np.float32))


UNBALANCED = [  # grade 1: one slide; grade 2: three slides; grade 3: two slides, one tumour-free
    _index(1, 500, 20), _index(2, 5, 300), _index(2, 50, 50), _index(2, 1, 1000), _index(3, 80, 2), _index(3, 0, 40)]


def test_every_stage_is_uniform_despite_imbalance() -> None:
    sampler = HierarchicalSampler(UNBALANCED)
    rng = np.random.default_rng(1)
    draws = [sampler.draw(rng) for _ in range(30_000)]
    grades = Counter(UNBALANCED[d.slide].grade for d in draws)
    assert chisquare([grades[g] for g in (1, 2, 3)]).pvalue > 0.001
    assert all(abs(grades[g] / 30_000 - 1 / 3) < 0.02 for g in (1, 2, 3))
    # slide within grade 2 is uniform (1/3 each) although slide sizes differ 300-fold
    g2 = Counter(d.slide for d in draws if UNBALANCED[d.slide].grade == 2)
    assert chisquare([g2[s] for s in (1, 2, 3)]).pvalue > 0.001
    # class within a slide is 50/50 when both are present, even for 1 tumour patch vs 1000 normal
    s3 = Counter(d.label for d in draws if d.slide == 3)
    assert chisquare([s3[0], s3[1]]).pvalue > 0.001
    # the tumour-free slide gives only non-tumour patches, and is still drawn as often as its sibling
    assert Counter(d.label for d in draws if d.slide == 5) == Counter({0: sum(d.slide == 5 for d in draws)})
    g3 = Counter(d.slide for d in draws if UNBALANCED[d.slide].grade == 3)
    assert chisquare([g3[4], g3[5]]).pvalue > 0.001
    # patches within (slide, class) are uniform
    p = Counter(d.patch for d in draws if d.slide == 4 and d.label == 0)
    assert set(p) == {80, 81}


def test_without_grades_the_grade_stage_is_skipped() -> None:
    indexes = [_index(None, 10, 10), _index(None, 10, 1000), _index(None, 1, 1)]
    sampler = HierarchicalSampler(indexes)
    assert sampler.stages == ("slide", "class")
    rng = np.random.default_rng(0)
    counts = Counter(sampler.draw(rng).slide for _ in range(9000))
    assert chisquare([counts[i] for i in range(3)]).pvalue > 0.001


def test_cluster_stage() -> None:
    ix = _index(1, 100, 100)
    clusters = [np.array([0] * 190 + [1] * 10)]
    sampler = HierarchicalSampler([ix], stages=("slide", "class", "cluster"), clusters=clusters)
    rng = np.random.default_rng(0)
    draws = [sampler.draw(rng) for _ in range(8000)]
    normal = Counter(d.cluster for d in draws if d.label == 0)
    assert abs(normal[1] / sum(normal.values()) - 0.5) < 0.03  # rare cluster drawn as often as the common one
    with pytest.raises(ValueError, match="cluster ids"):
        HierarchicalSampler([ix], stages=("slide", "cluster"))


def test_same_seed_same_stream() -> None:
    sampler = HierarchicalSampler(UNBALANCED)
    a = [sampler.draw(np.random.default_rng(7)) for _ in range(3)]
    b = [sampler.draw(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [sampler.draw(r1) for _ in range(50)] == [sampler.draw(r2) for _ in range(50)]


def test_stream_reads_patches_from_the_slide(tiny_slide) -> None:
    from h2gnet.io.manifest import SlideEntry
    from h2gnet.patches.grid import index_slide

    slide, ann, _ = tiny_slide
    ix, _ = index_slide(SlideEntry(slide, ann, 2, "train"))
    sampler = HierarchicalSampler([ix])
    stream = sample_stream(sampler, PatchReader([ix], out_size=64), seed=3)
    imgs = [next(stream) for _ in range(20)]
    assert all(img.shape == (64, 64, 3) and img.dtype == np.uint8 for img, _ in imgs)
    # tumour patches are the purple disc: less green than the pink non-tumour tissue
    tumour = np.mean([img[..., 1].mean() for img, d in imgs if d.label == 1])
    normal = np.mean([img[..., 1].mean() for img, d in imgs if d.label == 0])
    assert tumour < normal - 20


def test_dataloader_workers_are_reproducible(tiny_slide) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from h2gnet.io.manifest import SlideEntry
    from h2gnet.patches.grid import index_slide
    from h2gnet.train.dataset import patch_stream

    slide, ann, _ = tiny_slide
    ix, _ = index_slide(SlideEntry(slide, ann, 2, "train"))
    sampler = HierarchicalSampler([ix])

    def run():
        loader = DataLoader(patch_stream(sampler, 11, length=16, out_size=32), batch_size=8, num_workers=2)
        return [(x.clone(), y.clone()) for x, y, _, _ in loader]

    a, b = run(), run()
    assert len(a) == 2 and a[0][0].shape == (8, 3, 32, 32) and float(a[0][0].max()) <= 1.0
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
