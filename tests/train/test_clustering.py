"""Clustering: scikit-learn fit, frozen torch assignment, storage, VGG16 extractor."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from h2gnet.errors import H2GNetError
from h2gnet.train.clustering import (
    ARRAYS_FILE,
    METADATA_FILE,
    ClusterAssigner,
    ImageClusterAssigner,
    fit_clustering,
    fit_clustering_from_batches,
    load_clustering,
    load_image_cluster_assigner,
    save_clustering,
    vgg16_features,
)
from h2gnet.train.models.features import RandomFeaturesWarning, VGG16Features, _load_features_state


@pytest.fixture(scope="module", autouse=True)
def single_threaded():  # noqa: ANN201
    """One BLAS/OpenMP/torch thread: tiny problems, and a shared 2-core machine punishes busy-waiting pools."""
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


def sklearn_reference(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, PCA]:
    """Labels of the paper's pipeline built directly with scikit-learn."""
    scaler = StandardScaler().fit(x)
    pca = PCA(n_components=0.95, svd_solver="full").fit(scaler.transform(x))
    kmeans = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(pca.transform(scaler.transform(x)))
    return kmeans.predict(pca.transform(scaler.transform(x))), pca


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    x, _ = make_blobs(n_samples=500, n_features=64, centers=10, cluster_std=4.0, random_state=0)
    return x.astype(np.float32)  # like VGG features


@pytest.fixture(scope="module")
def fitted(blobs: np.ndarray):  # noqa: ANN201
    return fit_clustering(blobs, k=10, variance=0.95, seed=0)


def test_torch_assigner_matches_sklearn_on_every_sample(blobs: np.ndarray, fitted) -> None:  # noqa: ANN001
    expected, pca = sklearn_reference(blobs.astype(np.float64), k=10, seed=0)
    assert fitted.n_components == pca.n_components_ and fitted.k == 10
    ids = ClusterAssigner(fitted)(torch.from_numpy(blobs))
    assert ids.dtype == torch.int64 and ids.shape == (500,)
    assert np.array_equal(ids.numpy(), expected)
    assert np.array_equal(fitted.predict(blobs), expected)
    assert len(np.unique(expected)) == 10


def test_torch_assigner_matches_sklearn_without_cluster_structure() -> None:
    # unstructured Gaussian features put many samples close to cluster boundaries
    x = np.random.default_rng(1).normal(size=(400, 32)) * np.linspace(0.5, 3.0, 32)
    model = fit_clustering(x, k=10, seed=3)
    expected, _ = sklearn_reference(x, k=10, seed=3)
    assert np.array_equal(ClusterAssigner(model)(torch.from_numpy(x)).numpy(), expected)


def test_pca_keeps_the_fewest_components_reaching_95_percent(fitted) -> None:  # noqa: ANN001
    kept = float(fitted.explained_variance_ratio.sum())
    assert kept >= 0.95
    assert float(fitted.explained_variance_ratio[:-1].sum()) < 0.95
    assert 1 < fitted.n_components < 64


def test_assigner_is_frozen_and_stays_in_eval(fitted) -> None:  # noqa: ANN001
    assigner = ClusterAssigner(fitted)
    parent = torch.nn.Sequential(assigner)
    parent.train()
    assert not assigner.training
    assert list(assigner.parameters()) == []
    features = torch.randn(4, 64, requires_grad=True)
    assert not assigner(features).requires_grad
    with pytest.raises(ValueError):
        assigner(torch.randn(4, 63))


def test_save_load_round_trip(tmp_path: Path, blobs: np.ndarray, fitted) -> None:  # noqa: ANN001
    save_clustering(fitted, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted([ARRAYS_FILE, METADATA_FILE])
    metadata = json.loads((tmp_path / "model" / METADATA_FILE).read_text())
    assert metadata["k"] == 10 and metadata["n_components"] == fitted.n_components
    assert metadata["variance"] == 0.95 and metadata["weights"] == "unknown"
    loaded = load_clustering(tmp_path / "model")
    for name in ("scaler_mean", "scaler_scale", "pca_mean", "pca_components", "centroids"):
        assert np.array_equal(getattr(loaded, name), getattr(fitted, name))
    x = torch.from_numpy(blobs)
    assert torch.equal(ClusterAssigner(loaded)(x), ClusterAssigner(fitted)(x))
    with np.load(tmp_path / "model" / ARRAYS_FILE, allow_pickle=False) as archive:
        assert all(archive[name].dtype == np.float64 for name in archive.files)


def test_load_missing_folder_or_files(tmp_path: Path, fitted) -> None:  # noqa: ANN001
    with pytest.raises(H2GNetError) as err:
        load_clustering(tmp_path / "nowhere")
    assert err.value.path == str(tmp_path / "nowhere")
    save_clustering(fitted, tmp_path)
    (tmp_path / ARRAYS_FILE).unlink()
    with pytest.raises(H2GNetError) as err:
        load_clustering(tmp_path)
    assert err.value.path == str(tmp_path / ARRAYS_FILE)


def test_load_malformed_json_names_it(tmp_path: Path, fitted) -> None:  # noqa: ANN001
    save_clustering(fitted, tmp_path)
    (tmp_path / METADATA_FILE).write_text("{not json")
    with pytest.raises(H2GNetError) as err:
        load_clustering(tmp_path)
    assert err.value.path == str(tmp_path / METADATA_FILE)
    (tmp_path / METADATA_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(H2GNetError, match="format"):
        load_clustering(tmp_path)
    save_clustering(fitted, tmp_path)
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata["k"] = "ten"
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(H2GNetError, match="malformed") as err:
        load_clustering(tmp_path)
    assert err.value.path == str(tmp_path / METADATA_FILE)


def test_load_corrupt_or_inconsistent_npz_names_it(tmp_path: Path, fitted) -> None:  # noqa: ANN001
    save_clustering(fitted, tmp_path)
    arrays = tmp_path / ARRAYS_FILE
    arrays.write_bytes(arrays.read_bytes()[:100])  # truncated
    with pytest.raises(H2GNetError) as err:
        load_clustering(tmp_path)
    assert err.value.path == str(arrays)

    # a well-formed pair whose arrays disagree with the metadata shapes
    bad = tmp_path / "bad"
    save_clustering(fitted, bad)
    metadata = json.loads((bad / METADATA_FILE).read_text())
    metadata["n_components"] += 1
    (bad / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(H2GNetError, match="shape") as err:
        load_clustering(bad)
    assert err.value.path == str(bad / ARRAYS_FILE)

    # garbage with a matching checksum: reaches the .npz parser
    import hashlib

    garbage = tmp_path / "garbage"
    save_clustering(fitted, garbage)
    (garbage / ARRAYS_FILE).write_bytes(b"this is not a zip archive")
    metadata = json.loads((garbage / METADATA_FILE).read_text())
    metadata["arrays_sha256"] = hashlib.sha256(b"this is not a zip archive").hexdigest()
    (garbage / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(H2GNetError, match="npz") as err:
        load_clustering(garbage)
    assert err.value.path == str(garbage / ARRAYS_FILE)


def test_fit_clustering_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_clustering(np.zeros((5, 4)), k=10)
    with pytest.raises(ValueError):
        fit_clustering(np.full((50, 4), np.nan))


# --------------------------------------------------------------------------- VGG16 extractor


@pytest.fixture(scope="module")
def random_extractor() -> VGG16Features:
    with pytest.warns(RandomFeaturesWarning, match="random features"):
        return vgg16_features(None)


def test_vgg16_features_shape_frozen_and_normalised(random_extractor: VGG16Features) -> None:
    images = torch.rand(2, 3, 32, 32)
    out = random_extractor(images)
    assert out.shape == (2, 512) and out.dtype == torch.float32
    assert all(not p.requires_grad for p in random_extractor.parameters())
    random_extractor.train()
    assert not random_extractor.training
    # ImageNet normalisation happens inside: equal to running the conv stack on normalised input
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    manual = random_extractor.features((images - mean) / std).mean(dim=(2, 3))
    assert torch.allclose(out, manual)
    assert random_extractor.weights_source == "random(seed=0)"


def test_random_extractor_is_reproducible_from_its_seed(random_extractor: VGG16Features) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(RandomFeaturesWarning):
        again = vgg16_features(None)
        other = vgg16_features(None, random_seed=1)
    assert torch.equal(torch.rand(3), expected_next), "global torch RNG must be left alone"
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(again(images), random_extractor(images))
    assert not torch.equal(other(images), random_extractor(images))
    assert other.weights_source == "random(seed=1)"


def test_vgg16_layout_matches_torchvision(random_extractor: VGG16Features) -> None:
    from torchvision.models import vgg16

    with torch.device("meta"):  # structure only: no weight initialisation cost
        reference = vgg16(weights=None)
    ours, theirs = list(random_extractor.features), list(reference.features)
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    for a, b in zip(ours, theirs):
        if isinstance(a, torch.nn.Conv2d):
            assert (a.in_channels, a.out_channels, a.kernel_size, a.stride, a.padding) == (
                b.in_channels, b.out_channels, b.kernel_size, b.stride, b.padding)
        if isinstance(a, torch.nn.MaxPool2d):
            assert (a.kernel_size, a.stride) == (b.kernel_size, b.stride)
    ref_state = reference.state_dict()
    our_state = {f"features.{k}": v for k, v in random_extractor.features.state_dict().items()}
    assert {k: v.shape for k, v in ref_state.items() if k.startswith("features.")} == {
        k: v.shape for k, v in our_state.items()}


def test_full_torchvision_format_state_dict_loads(random_extractor: VGG16Features) -> None:
    # torchvision checkpoints also hold classifier.* entries; only features.* are used
    state = {f"features.{k}": v.clone() for k, v in random_extractor.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)
    module = VGG16Features()
    _load_features_state(module, state, "torchvision")
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(module(images), random_extractor(images))


def test_vgg16_imagenet_offline_falls_back_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import VGG16_Weights

    def offline(*args: object, **kwargs: object) -> dict:
        raise OSError("network unreachable")

    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.warns(RandomFeaturesWarning, match="network unreachable"):
        module = vgg16_features("imagenet")
    assert module.weights_source == "random(seed=0)"


def test_vgg16_imagenet_uses_torchvision_weights(
    monkeypatch: pytest.MonkeyPatch, random_extractor: VGG16Features
) -> None:
    from torchvision.models import VGG16_Weights

    state = {f"features.{k}": v.clone() for k, v in random_extractor.features.state_dict().items()}

    def cached(*args: object, **kwargs: object) -> dict:
        return state

    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", cached)
    module = vgg16_features("imagenet")
    assert module.weights_source == "imagenet"
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(module(images), random_extractor(images))


def test_vgg16_weights_from_file(tmp_path: Path, random_extractor: VGG16Features) -> None:
    path = tmp_path / "vgg.pt"
    torch.save(random_extractor.state_dict(), path)
    loaded = vgg16_features(path)
    images = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(images), random_extractor(images))
    assert loaded.weights_source == str(path)


def test_vgg16_bad_weights_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(H2GNetError) as err:
        vgg16_features(missing)
    assert err.value.path == str(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(H2GNetError) as err:
        vgg16_features(garbage)
    assert err.value.path == str(garbage)
    wrong = tmp_path / "wrong.pt"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3), "features.0.bias": torch.zeros(8)}, wrong)
    with pytest.raises(H2GNetError, match="do not fit") as err:
        vgg16_features(wrong)
    assert err.value.path == str(wrong)
    other = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2)}, other)
    with pytest.raises(H2GNetError, match="features"):
        vgg16_features(other)


def test_fit_from_endless_batches_and_image_assigner(tmp_path: Path, random_extractor: VGG16Features) -> None:
    generator = torch.Generator().manual_seed(0)

    def endless():  # noqa: ANN202 - like the hierarchical sampler: never stops
        for i in itertools.count():
            tint = torch.tensor([1.0, 0.6, 0.8]) if i % 2 else torch.tensor([0.6, 0.9, 0.5])
            images = torch.rand(4, 3, 32, 32, generator=generator) * tint.view(1, 3, 1, 1)
            yield images, torch.zeros(4, dtype=torch.long)

    model = fit_clustering_from_batches(endless(), random_extractor, k=3, n_batches=3)
    assert model.k == 3 and model.weights == "random(seed=0)" and model.extractor == VGG16Features.name
    images = torch.rand(6, 3, 32, 32, generator=generator)
    assigner = ImageClusterAssigner(random_extractor, ClusterAssigner(model))
    ids = assigner(images)
    assert ids.shape == (6,) and ids.dtype == torch.int64
    assert np.array_equal(ids.numpy(), model.predict(random_extractor(images).double().numpy()))
    # reloaded for training: the recorded random extractor is rebuilt, so ids agree
    save_clustering(model, tmp_path)
    with pytest.warns(RandomFeaturesWarning):
        reloaded = load_image_cluster_assigner(tmp_path)
    assert torch.equal(reloaded(images), ids)


def test_image_assigner_warns_on_weights_mismatch(
    fitted, random_extractor: VGG16Features  # noqa: ANN001
) -> None:
    from dataclasses import replace

    imagenet_model = replace(fitted, weights="imagenet")
    with pytest.warns(UserWarning, match="meaningless"):
        ImageClusterAssigner(random_extractor, ClusterAssigner(imagenet_model))
