"""Patches per second delivered by the hierarchical sampler from raw slides, with 0, 1 and 2 workers.

Usage: python benchmarks/sampler_throughput.py [--cohort DIR] [--batches 20] [--batch-size 32]

Makes (once, cached in .bench/) a small phantom cohort and its patch index, then
times DataLoader iteration (read + augment + to tensor) for each worker count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from torch.utils.data import DataLoader

from h2gnet.io.manifest import read_manifest, select
from h2gnet.patches.grid import index_cohort
from h2gnet.patches.sampling import HierarchicalSampler, load_indexes
from h2gnet.train.augment import augment_patch
from h2gnet.train.dataset import patch_stream


def cohort(root: Path) -> tuple[Path, Path]:
    manifest = root / "cohort" / "manifest.csv"
    if not manifest.exists():
        from h2gnet.synth import CohortConfig, make_cohort

        make_cohort(root / "cohort", CohortConfig(slides=6, seed=1))
    index_cohort(read_manifest(manifest), root / "index", progress=False)
    return manifest, root / "index"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, default=Path(".bench/sampler"))
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    manifest, index = cohort(args.cohort)
    entries = [e for e in select(read_manifest(manifest), "train") if e.annotation]
    sampler = HierarchicalSampler(load_indexes(entries, index))
    results = {}
    for workers in (0, 1, 2):
        loader = DataLoader(patch_stream(sampler, 0, augment_patch, length=args.batches * args.batch_size),
                            batch_size=args.batch_size, num_workers=workers)
        t0, n = time.perf_counter(), 0
        for x, *_ in loader:
            n += len(x)
        rate = n / (time.perf_counter() - t0)
        results[workers] = rate
        print(f"workers={workers}: {rate:7.1f} patches/s (256×256 at 1 µm/px, augmented, {n} patches)")
    print(json.dumps({"patches_per_second": results}))


if __name__ == "__main__":
    main()
