"""int8 patch classifiers: ONNX Runtime static quantisation calibrated on training patches.

The float32 model is pre-processed (shape inference, fusions), then quantised
to QDQ int8 (per-channel weights, uint8 activations) with activation ranges
calibrated on patches drawn by the hierarchical sampler from the cohort's
*training* slides. The result is an ordinary h2gnet ONNX model (same inputs,
outputs and metadata, plus ``precision = int8``), so ``h2gnet segment`` runs it
as it is. Needs the ``[train]`` extra (the ``onnx`` package).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from h2gnet.errors import H2GNetError
from h2gnet.infer.runtime import OnnxModel
from h2gnet.io.atomic import atomic_path
from h2gnet.io.manifest import read_manifest, select
from h2gnet.params import Rule, check_fields, param
from h2gnet.patches.sampling import HierarchicalSampler, PatchReader, load_indexes, sample_stream

#: Activation-range calibration methods of ONNX Runtime's static quantisation.
CALIBRATIONS = ("minmax", "entropy", "percentile")


def calibration_batches(manifest: str | Path, index_dir: str | Path, input_size: int, n_patches: int = 256,
                        batch_size: int = 16, seed: int = 0) -> list[np.ndarray]:
    """float32 NCHW [0, 1] batches of training patches, drawn by the hierarchical sampler."""
    entries = [e for e in select(read_manifest(manifest), "train") if e.annotation is not None]
    if not entries:
        raise H2GNetError(manifest, "has no annotated training slides to calibrate on")
    indexes = load_indexes(entries, index_dir)
    stream = sample_stream(HierarchicalSampler(indexes), PatchReader(indexes, input_size), seed)
    imgs = np.stack([next(stream)[0] for _ in range(n_patches)]).astype(np.float32) / 255.0
    x = imgs.transpose(0, 3, 1, 2)
    return [x[i:i + batch_size] for i in range(0, n_patches, batch_size)]


@dataclass
class QuantizeConfig:
    """Calibration settings of :func:`quantize_patch_model`; checked when made.

    ``calibration``: how activation ranges come from the calibration patches —
    ``minmax`` (their extremes), ``entropy`` (KL divergence) or ``percentile`` (99.999th).
    ONNX Runtime's entropy and percentile calibrators keep every activation in memory
    (measured: ~21 GB peak for 256 MobileNetV2 patches of 256 px; a quarter at 128 px).
    ``float_ends``: keep the first convolution and the fully connected head in float32.
    """

    manifest: str | Path
    index_dir: str | Path
    patches: int = param(256, Rule(int, low=1, high=100_000, help="calibration patches"))
    seed: int = param(0, Rule(int, low=0, help="random seed"))
    calibration: str = param("minmax", Rule(str, choices=CALIBRATIONS, help=(
        "activation ranges: min/max of the calibration patches, entropy (KL), or the 99.999th percentile "
        "(entropy and percentile keep every activation in memory: ~20 GB for 256 patches of 256 px)")))
    float_ends: bool = param(False, Rule(bool))

    def __post_init__(self) -> None:
        check_fields(self)


def quantize_patch_model(model_path: str | Path, out_path: str | Path, cfg: QuantizeConfig) -> Path:
    """Write an int8 version of a patch classifier, calibrated on ``cfg.patches`` patches of the
    manifest's training slides; returns ``out_path``."""
    fp32 = OnnxModel(Path(model_path), "patch-classifier")
    batches = calibration_batches(cfg.manifest, cfg.index_dir, fp32.input_size, cfg.patches, seed=cfg.seed)
    return quantize_onnx(model_path, out_path, batches, cfg.calibration, float_ends=cfg.float_ends)


def end_nodes(model: object) -> list[str]:
    """Names of the first convolution and of the fully connected layers (Gemm/MatMul) of an ONNX
    model's graph — the layers most sensitive to int8 in small classifiers."""
    nodes = list(model.graph.node)  # type: ignore[attr-defined]
    first_conv = next((n.name for n in nodes if n.op_type == "Conv"), None)
    head = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return ([first_conv] if first_conv else []) + head


def quantize_onnx(model_path: str | Path, out_path: str | Path, batches: list[np.ndarray],
                  calibration: str = "minmax", *, float_ends: bool = False) -> Path:
    """int8 QDQ version of an h2gnet patch classifier, calibrated on ``batches`` (float32 NCHW in
    [0, 1]); the h2gnet metadata are kept, with ``precision = int8``. ``float_ends`` keeps the first
    convolution and the fully connected head in float32 (:func:`end_nodes`). Returns ``out_path``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if calibration not in methods:
        raise H2GNetError(None, f"unknown calibration method {calibration!r} (one of {', '.join(methods)})")
    fp32 = OnnxModel(Path(model_path), "patch-classifier")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._it, None)
            return None if batch is None else {fp32.input_name: batch}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(model_path), str(pre))
        keep = end_nodes(onnx.load(str(pre))) if float_ends else []
        q = Path(tmp) / "q.onnx"
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[calibration], nodes_to_exclude=keep)
        model = onnx.load(str(q))
    n_patches = sum(len(b) for b in batches)
    meta = {**fp32.metadata, "precision": "int8", "calibration_patches": str(n_patches),
            "calibration_method": calibration, "float32_nodes": ",".join(keep)}
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=str(value))
    with atomic_path(out_path) as tmp_out:
        onnx.save(model, str(tmp_out))
    return Path(out_path)
