"""Fit the k-means tissue clustering on patches drawn by the hierarchical sampler (paper 2.3)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import write_text
from h2gnet.io.manifest import read_manifest, select
from h2gnet.patches.sampling import HierarchicalSampler, load_indexes
from h2gnet.train.clustering import fit_clustering_from_batches, save_clustering
from h2gnet.train.config import ClusterConfig
from h2gnet.train.dataset import patch_stream
from h2gnet.train.models.features import vgg16_features
from h2gnet.train.patch_classifier import CLUSTER_META


def fit_cohort_clustering(out_dir: str | Path, cfg: ClusterConfig) -> dict:
    """Sample training patches, extract VGG16 features, fit z-score → PCA → k-means, save to ``out_dir``."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise H2GNetError(out_dir, "is a file; a clustering folder is needed")
    entries = [e for e in select(read_manifest(cfg.manifest), "train") if e.annotation is not None]
    if not entries:
        raise H2GNetError(cfg.manifest, "has no annotated training slides to cluster")
    sampler = HierarchicalSampler(load_indexes(entries, cfg.index_dir))
    stream = patch_stream(sampler, cfg.seed, None, length=cfg.batches * cfg.batch_size)
    loader = DataLoader(stream, batch_size=cfg.batch_size, num_workers=cfg.workers)
    size = cfg.input_size

    def images():
        for x, *_ in loader:
            if size and x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            yield x

    torch.manual_seed(cfg.seed)
    extractor = vgg16_features(cfg.weights)
    model = fit_clustering_from_batches(images(), extractor, k=cfg.k, variance=cfg.variance, seed=cfg.seed,
                                       n_batches=cfg.batches)
    out = Path(out_dir)
    save_clustering(model, out)
    summary = {**asdict(cfg), "n_components": int(model.pca_components.shape[0]),
               "explained_variance": float(model.explained_variance_ratio.sum())}
    write_text(out / CLUSTER_META, json.dumps(summary, indent=2))
    return summary
