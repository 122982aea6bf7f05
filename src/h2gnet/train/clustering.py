"""Tissue-type clustering that guides the patch classifier (paper section 2.3).

Fitting (once, offline): VGG16 ImageNet features (512-d, global average
pooled) of patches drawn by the hierarchical sampler (paper: 100 batches of
32) → z-score standardisation → PCA keeping 95 % of the variance → k-means
with k = 10, all with scikit-learn.

The feature network itself is :mod:`h2gnet.train.models.features`.

Use (during classifier training): :class:`ClusterAssigner` is a frozen torch
module reproducing standardise → PCA projection → nearest centroid, so every
training patch gets a cluster id for the CWCE loss without any scikit-learn
object in the training loop.  The fitted model is stored as plain arrays
(``clustering.npz``) plus metadata (``clustering.json``), no pickles.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from h2gnet.errors import H2GNetError
from h2gnet.io.atomic import atomic_path
from h2gnet.train.models.features import EXTRACTOR_NAME, RANDOM_PREFIX, vgg16_features

ARRAYS_FILE = "clustering.npz"
METADATA_FILE = "clustering.json"
FORMAT_NAME = "h2gnet-clustering"
FORMAT_VERSION = 1
RECORDED = "recorded"  # load_image_cluster_assigner: use the weights recorded with the clustering

_ARRAY_NAMES = (
    "scaler_mean", "scaler_scale", "pca_mean", "pca_components", "explained_variance_ratio", "centroids",
)


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True, eq=False)  # eq=False: holds arrays, compare fields explicitly
class ClusterModel:
    """A fitted standardise → PCA → k-means model, as plain float64 arrays.

    Attributes:
        scaler_mean, scaler_scale: (D,) StandardScaler ``mean_`` / ``scale_``.
        pca_mean: (D,) PCA ``mean_`` (in standardised units).
        pca_components: (n_components, D) PCA ``components_`` (rows, unit length).
        explained_variance_ratio: (n_components,) share of variance per component.
        centroids: (k, n_components) k-means ``cluster_centers_`` in PCA space.
        variance: requested explained-variance share (0.95 in the paper).
        seed: k-means ``random_state``.
        extractor: name of the feature extractor the features came from.
        weights: where its weights came from ("imagenet", "random(seed=N)", a path, or "unknown").
    """

    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    explained_variance_ratio: np.ndarray
    centroids: np.ndarray
    variance: float
    seed: int = 0
    extractor: str = EXTRACTOR_NAME
    weights: str = "unknown"

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])

    @property
    def n_components(self) -> int:
        """PCA components kept."""
        return int(self.pca_components.shape[0])

    @property
    def n_features(self) -> int:
        """Length of the feature vectors the model was fitted on."""
        return int(self.pca_components.shape[1])

    def transform(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features → (N, n_components) standardised PCA scores, float64."""
        z = (np.asarray(features, dtype=np.float64) - self.scaler_mean) / self.scaler_scale
        return (z - self.pca_mean) @ self.pca_components.T

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, D) features → (N,) int64 cluster ids (nearest centroid, squared Euclidean)."""
        scores = self.transform(features)
        distances = ((scores[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int64)


def fit_clustering(
    features: np.ndarray,
    k: int = 10,
    variance: float = 0.95,
    seed: int = 0,
    *,
    extractor: str = EXTRACTOR_NAME,
    weights: str = "unknown",
) -> ClusterModel:
    """Fit StandardScaler → PCA(``variance``) → KMeans(``k``) on (N, D) features (float64 internally).

    PCA keeps the smallest number of components explaining at least
    ``variance`` of the standardised features' variance (``svd_solver='full'``);
    KMeans uses ``n_init=10`` restarts and ``random_state=seed``.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinity")
    if not 0.0 < variance < 1.0:
        raise ValueError(f"variance must be a share in (0, 1), got {variance}")
    if k < 1 or x.shape[0] < k:
        raise ValueError(f"need at least k={k} samples (k >= 1), got {x.shape[0]}")

    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    pca = PCA(n_components=variance, svd_solver="full").fit(z)
    scores = pca.transform(z)
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(scores)
    return ClusterModel(
        scaler_mean=scaler.mean_.astype(np.float64),
        scaler_scale=scaler.scale_.astype(np.float64),
        pca_mean=pca.mean_.astype(np.float64),
        pca_components=pca.components_.astype(np.float64),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
        centroids=kmeans.cluster_centers_.astype(np.float64),
        variance=float(variance),
        seed=int(seed),
        extractor=extractor,
        weights=weights,
    )


def _images_of(batch: Tensor | tuple | list) -> Tensor:
    """The image tensor of a batch: the batch itself or the first item of an (images, ...) tuple."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, Tensor):
        raise TypeError(
            f"expected a tensor of images (or a tuple starting with one), got {type(images).__name__}"
        )
    return images


def extract_features(
    batches: Iterable[Tensor | tuple | list],
    extractor: nn.Module,
    *,
    n_batches: int | None = 100,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Run ``extractor`` over up to ``n_batches`` image batches; returns (N, D) float64 features.

    Each batch is a float32 (B, 3, H, W) RGB tensor in [0, 1], or a tuple
    whose first item is one (e.g. ``(images, labels)`` from a DataLoader).
    ``n_batches=None`` consumes the whole iterable (do not use on an endless sampler).
    """
    from tqdm import tqdm

    extractor = extractor.to(device).eval()
    chunks: list[np.ndarray] = []
    limited = batches if n_batches is None else itertools.islice(batches, n_batches)
    with torch.inference_mode():
        for batch in tqdm(limited, total=n_batches, desc="clustering features", unit="batch"):
            chunks.append(extractor(_images_of(batch).to(device)).double().cpu().numpy())
    if not chunks:
        raise ValueError("no batches to extract features from")
    return np.concatenate(chunks, axis=0)


def fit_clustering_from_batches(
    batches: Iterable[Tensor | tuple | list],
    extractor: nn.Module,
    k: int = 10,
    variance: float = 0.95,
    seed: int = 0,
    *,
    n_batches: int | None = 100,
    device: str | torch.device = "cpu",
) -> ClusterModel:
    """Extract features from image batches (paper: 100 batches of 32) and fit the clustering."""
    features = extract_features(batches, extractor, n_batches=n_batches, device=device)
    return fit_clustering(
        features, k=k, variance=variance, seed=seed,
        extractor=str(getattr(extractor, "name", type(extractor).__name__)),
        weights=str(getattr(extractor, "weights_source", "unknown")),
    )


# --------------------------------------------------------------------------- storage


def _npz_bytes(model: ClusterModel) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {name: np.asarray(getattr(model, name), dtype=np.float64) for name in _ARRAY_NAMES}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_clustering(model: ClusterModel, directory: str | Path) -> Path:
    """Write ``clustering.npz`` (arrays) and ``clustering.json`` (metadata) into ``directory``.

    Each file is written atomically; the JSON, written last, records the
    SHA-256 of the arrays file so a mismatched pair is detected on load.
    Returns the directory.
    """
    directory = Path(directory)
    data = _npz_bytes(model)
    metadata = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "k": model.k,
        "n_components": model.n_components,
        "n_features": model.n_features,
        "variance": model.variance,
        "explained_variance": float(np.sum(model.explained_variance_ratio)),
        "seed": model.seed,
        "extractor": model.extractor,
        "weights": model.weights,
        "arrays_sha256": hashlib.sha256(data).hexdigest(),
    }
    with atomic_path(directory / ARRAYS_FILE) as tmp:
        tmp.write_bytes(data)
    with atomic_path(directory / METADATA_FILE) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return directory


def _read_metadata(path: Path) -> dict:
    if not path.is_file():
        raise H2GNetError(path, "clustering metadata file not found")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise H2GNetError(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise H2GNetError(path, f"not an h2gnet clustering metadata file (format != {FORMAT_NAME!r})")
    if metadata.get("version") != FORMAT_VERSION:
        raise H2GNetError(path, f"unsupported clustering format version {metadata.get('version')!r}")
    required = (
        "k", "n_components", "n_features", "variance", "seed", "extractor", "weights", "arrays_sha256",
    )
    missing = [key for key in required if key not in metadata]
    if missing:
        raise H2GNetError(path, f"missing metadata keys: {', '.join(missing)}")
    return metadata


def _read_arrays(path: Path, expected_sha256: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise H2GNetError(path, "clustering arrays file not found")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise H2GNetError(path, f"does not match {METADATA_FILE} (checksum differs); re-run the clustering")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            missing = [name for name in _ARRAY_NAMES if name not in archive.files]
            if missing:
                raise H2GNetError(path, f"missing arrays: {', '.join(missing)}")
            return {name: np.asarray(archive[name], dtype=np.float64) for name in _ARRAY_NAMES}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise H2GNetError(path, f"not a readable .npz archive ({exc})") from None


def _check_shapes(arrays: dict[str, np.ndarray], metadata: dict, path: Path) -> None:
    k, n_comp, n_feat = int(metadata["k"]), int(metadata["n_components"]), int(metadata["n_features"])
    expected = {
        "scaler_mean": (n_feat,), "scaler_scale": (n_feat,), "pca_mean": (n_feat,),
        "pca_components": (n_comp, n_feat), "explained_variance_ratio": (n_comp,), "centroids": (k, n_comp),
    }
    for name, shape in expected.items():
        if arrays[name].shape != shape:
            raise H2GNetError(path, f"array {name!r} has shape {arrays[name].shape}, expected {shape}")
        if not np.isfinite(arrays[name]).all():
            raise H2GNetError(path, f"array {name!r} contains NaN or infinity")
    if np.any(arrays["scaler_scale"] <= 0):
        raise H2GNetError(path, "array 'scaler_scale' must be positive")


def load_clustering(directory: str | Path) -> ClusterModel:
    """Read a model written by :func:`save_clustering`.

    Raises:
        H2GNetError: naming the folder or file that is missing or malformed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise H2GNetError(
            directory, f"clustering model folder not found (expected {ARRAYS_FILE} and {METADATA_FILE})"
        )
    metadata = _read_metadata(directory / METADATA_FILE)
    arrays_path = directory / ARRAYS_FILE
    arrays = _read_arrays(arrays_path, str(metadata["arrays_sha256"]))
    try:
        _check_shapes(arrays, metadata, arrays_path)
        return ClusterModel(
            **arrays,
            variance=float(metadata["variance"]),
            seed=int(metadata["seed"]),
            extractor=str(metadata["extractor"]),
            weights=str(metadata["weights"]),
        )
    except (TypeError, ValueError) as exc:  # e.g. non-numeric k / variance in the JSON
        raise H2GNetError(directory / METADATA_FILE, f"malformed metadata ({exc})") from None


# --------------------------------------------------------------------------- frozen torch modules


class ClusterAssigner(nn.Module):
    """Frozen features → cluster id module: z-score → PCA projection → nearest centroid.

    Holds the fitted arrays as buffers (no parameters, so nothing to train; it
    also stays in eval mode).  Computes in ``dtype`` (default float64, which
    reproduces scikit-learn's ``kmeans.predict(pca.transform(scaler.transform(X)))``
    exactly; float32 is faster but may flip near-ties).

    Input: (N, D) float features.  Output: (N,) int64 cluster ids in [0, k).
    """

    # buffers registered in __init__ (declared for type checkers)
    scaler_mean: Tensor
    scaler_scale: Tensor
    pca_mean: Tensor
    pca_components: Tensor
    centroids: Tensor

    def __init__(self, model: ClusterModel, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.k = model.k
        self.weights = model.weights
        self.extractor_name = model.extractor
        self.compute_dtype = dtype
        for name in ("scaler_mean", "scaler_scale", "pca_mean", "pca_components", "centroids"):
            self.register_buffer(name, torch.as_tensor(getattr(model, name), dtype=dtype))
        self.eval()

    def train(self, mode: bool = True) -> ClusterAssigner:  # noqa: ARG002, FBT001, FBT002 - overrides nn.Module.train: frozen, always eval
        """Stay in eval mode whatever a parent module asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        """(N, n_features) features -> (N,) int64 cluster ids."""
        if features.ndim != 2 or features.shape[1] != self.scaler_mean.shape[0]:
            raise ValueError(
                f"expected (N, {self.scaler_mean.shape[0]}) features, got shape {tuple(features.shape)}"
            )
        z = (features.to(self.compute_dtype) - self.scaler_mean) / self.scaler_scale
        scores = (z - self.pca_mean) @ self.pca_components.T
        distances = ((scores[:, None, :] - self.centroids[None, :, :]) ** 2).sum(dim=2)
        return distances.argmin(dim=1)


class ImageClusterAssigner(nn.Module):
    """Frozen images → cluster id module: feature extractor followed by :class:`ClusterAssigner`.

    Input: (N, 3, H, W) float32 RGB in [0, 1].  Output: (N,) int64 cluster ids.
    Warns if the extractor's weights differ from those the clustering was fitted on.
    """

    def __init__(self, extractor: nn.Module, assigner: ClusterAssigner) -> None:
        super().__init__()
        source = getattr(extractor, "weights_source", None)
        if source is not None and assigner.weights not in ("unknown", source):
            warnings.warn(
                f"clustering was fitted on features with weights {assigner.weights!r} but the extractor "
                f"has {source!r}; cluster ids will be meaningless",
                UserWarning,
                stacklevel=2,
            )
        self.extractor = extractor.requires_grad_(False)
        self.assigner = assigner
        self.eval()

    def train(self, mode: bool = True) -> ImageClusterAssigner:  # noqa: ARG002, FBT001, FBT002 - overrides nn.Module.train: frozen, always eval
        """Stay in eval mode whatever a parent module asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) RGB images in [0, 1] -> (N,) int64 cluster ids."""
        return self.assigner(self.extractor(images))


def _recorded_weights(record: str) -> tuple[str | None, int]:
    """(weights, random_seed) arguments of :func:`vgg16_features` that rebuild a recorded extractor."""
    if record.startswith(RANDOM_PREFIX) and record.endswith(")"):
        try:
            return None, int(record[len(RANDOM_PREFIX):-1])
        except ValueError:
            pass
    if record == "unknown":
        return None, 0
    return record, 0


def load_image_cluster_assigner(
    directory: str | Path, weights: str | Path | None = RECORDED
) -> ImageClusterAssigner:
    """Images → cluster ids from a saved clustering: :func:`load_clustering` + :func:`vgg16_features`.

    By default (``weights=RECORDED``) the extractor is rebuilt from the source
    recorded in ``clustering.json`` ("imagenet", a weights file, or the seed of
    a random initialisation), so the features match those the clustering was
    fitted on.  Pass ``weights`` explicitly to override (a mismatch warns).
    """
    model = load_clustering(directory)
    if isinstance(weights, str) and weights == RECORDED:
        chosen, seed = _recorded_weights(model.weights)
        extractor = vgg16_features(chosen, random_seed=seed)
    else:
        extractor = vgg16_features(weights)
    return ImageClusterAssigner(extractor, ClusterAssigner(model))
