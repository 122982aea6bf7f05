"""The torch dataset of training: the hierarchical sampler's stream as an ``IterableDataset``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from h2gnet.patches.sampling import HierarchicalSampler, PatchReader, sample_stream


def patch_stream(
    sampler: HierarchicalSampler,
    seed: int,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    length: int | None = None,
    out_size: int | None = None,
):
    """A torch ``IterableDataset`` of (float32 CHW [0, 1] image, label, cluster, slide) samples.

    Each DataLoader worker reads with its own slide handles and random stream
    (``seed`` combined with the worker id), so a run is reproducible for a
    given seed and worker count. ``length`` limits the number of samples
    (split evenly over workers); None is endless.
    """
    class _Stream(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
            reader = PatchReader(sampler.indexes, out_size)
            worker_seed = int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])
            stream = sample_stream(sampler, reader, seed=worker_seed, augment=augment)
            count = None if length is None else length // n_workers + (worker < length % n_workers)
            for n, (img, d) in enumerate(stream):
                if count is not None and n >= count:
                    return
                x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
                yield x, d.label, d.cluster, d.slide

    return _Stream()
