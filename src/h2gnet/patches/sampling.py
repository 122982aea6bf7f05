"""Hierarchical patch sampling straight from the slides (paper section 2.3, Figure 2).

Every draw walks a tree, uniformly at each stage: pick a histological grade,
then a slide of that grade, then a class present in that slide, then a patch
of that class (optionally a k-means cluster before the patch). Each outcome at
each stage is equally likely, whatever the imbalance of grades, slides,
classes or clusters.

Patches are read on the fly by DataLoader worker processes, each with its own
slide handles and its own random stream derived from the seed; nothing is
stored on disk. This module needs no PyTorch; :func:`h2gnet.train.dataset.patch_stream` wraps
the sampler in a ``torch.utils.data.IterableDataset`` for training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.io.slides import Slide
from h2gnet.patches.grid import PatchIndex, index_path

#: Stages in the paper's order. "cluster" needs per-patch cluster ids.
DEFAULT_STAGES = ("grade", "slide", "class")


@dataclass
class Draw:
    """One sampled patch: slide number (into the sampler's list), patch row in its index, and keys."""

    slide: int
    patch: int
    label: int
    cluster: int = -1


@dataclass
class HierarchicalSampler:
    """Uniform-per-stage sampling over labelled patches of several slides.

    ``stages``: ordered subset of ("grade", "slide", "class", "cluster");
    ``clusters``: optional per-slide arrays of cluster ids (needed for the
    "cluster" stage). The last stage is always a uniform pick of a patch.
    """

    indexes: list[PatchIndex]
    stages: tuple[str, ...] = DEFAULT_STAGES
    clusters: list[np.ndarray] | None = None
    tree: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        unknown = set(self.stages) - {"grade", "slide", "class", "cluster"}
        if unknown:
            raise ValueError(f"unknown sampling stage(s): {', '.join(sorted(unknown))}")
        if "cluster" in self.stages and self.clusters is None:
            raise ValueError("the 'cluster' stage needs per-patch cluster ids")
        if "grade" in self.stages and any(ix.grade is None for ix in self.indexes if len(ix)):
            # The manifest has no (or incomplete) grades: skip the stage, as the paper's scheme allows.
            self.stages = tuple(s for s in self.stages if s != "grade")
        self.tree = self._build()
        if not self.tree:
            raise H2GNetError(None, "no labelled patches to sample from (do the slides have annotations?)")

    def _keys(self, s: int, p: np.ndarray) -> dict[str, np.ndarray]:
        ix = self.indexes[s]
        n = len(p)
        return {
            "grade": np.full(n, ix.grade if ix.grade is not None else 0),
            "slide": np.full(n, s),
            "class": ix.label[p].astype(np.int64),
            "cluster": self.clusters[s][p] if self.clusters is not None else np.full(n, -1),
        }

    def _build(self) -> dict:
        """Nested dict: stage key -> ... -> array of (slide, patch) rows."""
        tree: dict = {}
        for s, ix in enumerate(self.indexes):
            patches = np.nonzero(ix.label >= 0)[0]
            if len(patches) == 0:
                continue
            keys = self._keys(s, patches)
            combo = np.stack([keys[st] for st in self.stages], axis=1) if self.stages else np.zeros((len(patches), 0))
            uniq, inverse = np.unique(combo, axis=0, return_inverse=True)
            for u, row in enumerate(uniq):
                node = tree
                for value in row[:-1]:
                    node = node.setdefault(int(value), {})
                leaf_key = int(row[-1]) if len(row) else 0
                chosen = patches[inverse.ravel() == u]
                rows = np.stack([np.full(len(chosen), s), chosen], axis=1)
                node[leaf_key] = np.concatenate([node[leaf_key], rows]) if leaf_key in node else rows
        return tree

    def draw(self, rng: np.random.Generator) -> Draw:
        """One uniformly-per-stage random patch."""
        node = self.tree
        while isinstance(node, dict):
            keys = list(node.keys())
            node = node[keys[int(rng.integers(len(keys)))]]
        s, p = node[int(rng.integers(len(node)))]
        ix = self.indexes[int(s)]
        cluster = int(self.clusters[int(s)][int(p)]) if self.clusters is not None else -1
        return Draw(int(s), int(p), int(ix.label[int(p)]), cluster)


def load_indexes(entries: Sequence, index_dir: str | Path) -> list[PatchIndex]:
    """The patch indexes of manifest ``entries`` from ``index_dir`` (clear error when missing)."""
    out = []
    missing = []
    for e in entries:
        path = index_path(index_dir, e.key)
        if not path.exists():
            missing.append(e.key)
            continue
        ix = PatchIndex.load(path)
        ix.slide = str(e.slide)
        ix.grade, ix.split = e.grade, e.split
        out.append(ix)
    if missing:
        raise H2GNetError(index_dir, f"no patch index for {len(missing)} slide(s) ({', '.join(missing[:5])}); "
                          "run `h2gnet patches MANIFEST -o INDEX_DIR` first")
    return out


class PatchReader:
    """Reads sampled patches as uint8 RGB, caching one slide handle per slide (per process).


    ``out_size``: side of the returned patches in px; the same field of view is
    read at a coarser µm/px when it is smaller than the index's patch size.
    """

    def __init__(self, indexes: list[PatchIndex], out_size: int | None = None) -> None:
        self.indexes = indexes
        self.out_size = out_size
        self._slides: dict[int, Slide] = {}

    def read(self, slide: int, patch: int) -> np.ndarray:
        """The RGB uint8 pixels of patch ``patch`` of slide ``slide`` (indexes into the sampler), read now."""
        ix = self.indexes[slide]
        handle = self._slides.get(slide)
        if handle is None:
            handle = self._slides[slide] = Slide(ix.slide, ix.slide_mpp)
        side = self.out_size or ix.patch_size
        mpp = ix.patch_mpp * ix.patch_size / side
        return handle.read_region((int(ix.x[patch]), int(ix.y[patch])), (side, side), mpp)


def sample_stream(
    sampler: HierarchicalSampler,
    reader: PatchReader,
    seed: int,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, Draw]]:
    """Endless (patch, draw) pairs from one random stream."""
    rng = np.random.default_rng(seed)
    while True:
        d = sampler.draw(rng)
        img = reader.read(d.slide, d.patch)
        if augment is not None:
            img = augment(img, rng)
        yield img, d
