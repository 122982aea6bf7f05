"""Helpers of the FAST tests: tiny exported models and their pipeline (fixtures), a reader of FAST's grammar.

The fixtures are imported by the test modules that use them (a ``conftest.py`` here would shadow
``tests/conftest.py``, which other tests import as ``conftest``).

The pipeline text is checked against FAST's grammar as pyFAST 4.18 parses it (blocks of
``ProcessObject`` / ``Attribute`` / ``Input`` lines, ``@@name=default@@`` variables,
``$CURRENT_PATH$``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from h2gnet.fast.fpl import FastModel, export_fast

PATCH_SIZE, PATCH_MPP, REFINE_SIZE = 64, 2.0, 64
#: The FAST engine of the exported test pipeline: float32 everywhere (see the ``exported`` fixture).
ENGINE = "ONNXRuntime"

VARIABLE = re.compile(r"@@([A-Za-z_][A-Za-z0-9_]*)=([^@]*)@@")


# -- a FAST-grammar reader ------------------------------------------------------------------------
def parse_fpl(text: str, variables: dict[str, str] | None = None, current: str = "/here") -> dict:
    """Objects, attributes, inputs and pipeline declarations of an .fpl, as FAST 4.18 reads it.

    Fails the test on anything FAST would reject: unknown keys, unclosed or default-less
    variables, inputs that name neither declared input data nor an earlier process object.
    """
    variables = dict(variables or {})
    objects: dict[str, dict] = {}
    declared: dict[str, list] = {"input": [], "output": [], "attributes": {}}
    current_id = None
    for raw in text.splitlines():
        line = raw.replace("$CURRENT_PATH$", current).strip()
        if not line or line.startswith("#"):
            continue
        assert line.count("@@") % 2 == 0, f"unclosed variable in {line!r}"
        for name, default in VARIABLE.findall(line):
            variables.setdefault(name, default)
        assert "@@" not in VARIABLE.sub("", line), f"variable without default in {line!r}"
        line = VARIABLE.sub(lambda m: variables[m.group(1)], line)
        key, _, rest = line.partition(" ")
        tokens = rest.split()
        if key == "ProcessObject":
            assert len(tokens) == 2, line
            current_id = tokens[0]
            assert current_id not in objects, f"duplicate id {current_id}"
            objects[current_id] = {"type": tokens[1], "attributes": {}, "inputs": {}}
        elif key == "Attribute" and current_id is not None:
            assert len(tokens) >= 2, line
            value = rest[len(tokens[0]):].strip()
            objects[current_id]["attributes"][tokens[0]] = value
        elif key == "Input":
            assert current_id is not None and len(tokens) in (2, 3), line
            port, source = int(tokens[0]), tokens[1]
            assert source in declared["input"] or (source in objects and source != current_id), \
                f"input {source} of {current_id} is neither pipeline input data nor an earlier object"
            objects[current_id]["inputs"][port] = (source, int(tokens[2]) if len(tokens) == 3 else 0)
        elif key in ("PipelineName", "PipelineDescription"):
            assert rest.startswith('"') and rest.endswith('"'), line
            declared[key] = rest.strip('"')
        elif key == "PipelineInputData":
            declared["input"].append(tokens[0])
        elif key == "PipelineOutputData":
            assert len(tokens) == 3, line
            declared["output"].append(tokens)
        elif key == "Attribute":  # a pipeline attribute (before any object)
            declared["attributes"][tokens[0]] = rest[len(tokens[0]):].strip().strip('"')
        else:
            pytest.fail(f"FAST does not know the line {line!r}")
    for name, obj, port in declared["output"]:
        assert obj in objects and port.isdigit(), f"output {name} names a missing object {obj}"
    return {"objects": objects, **declared, "variables": variables}


def fast_model(kind: str, size: int, channels: int, mpp: float | None) -> FastModel:
    return FastModel(Path(f"/x/{kind}.onnx"), kind, size, channels, mpp, ("non-tumour", "tumour"), "test")


def read_header_text(text: str) -> dict:
    first = text.splitlines()[0]
    assert first.startswith("# h2gnet-fast ")
    return json.loads(first.split(" ", 2)[2])


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A MobileNetV2 (64 px at 2 µm/px) and a 4-level U-Net (64 px), BatchNorm calibrated, as run folders."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from h2gnet.train.export import export_classifier_onnx, export_refiner_onnx
    from h2gnet.train.models.classifier import build_classifier
    from h2gnet.train.models.common import calibrate_batchnorm
    from h2gnet.train.models.unets import build_refiner

    root = tmp_path_factory.mktemp("fast-models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        with pytest.warns(UserWarning, match="random initialisation"):
            clf = build_classifier("mobilenetv2")
        calibrate_batchnorm(clf, [torch.rand(4, 3, PATCH_SIZE, PATCH_SIZE, generator=g)
                                  * torch.rand(4, 1, 1, 1, generator=g) for _ in range(3)])
        (root / "mob").mkdir()
        export_classifier_onnx(clf.eval(), root / "mob" / "model.onnx", PATCH_SIZE, mpp=PATCH_MPP)
        (root / "mob" / "config.json").write_text("{}")
        torch.manual_seed(0)
        unet = build_refiner("unet", filters=(4, 8, 8, 16))
        calibrate_batchnorm(unet, [torch.rand(2, 4, REFINE_SIZE, REFINE_SIZE, generator=g) for _ in range(2)])
        (root / "unet").mkdir()
        export_refiner_onnx(unet.eval(), root / "unet" / "model.onnx", REFINE_SIZE)
    finally:
        torch.set_num_threads(threads)
    return {"patch": root / "mob", "refine": root / "unet"}


@pytest.fixture(scope="session")
def exported(tiny_models: dict[str, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fast-export")
    # FAST's default engine (OpenVINO 2023.0) computes in bfloat16 on CPUs with AVX512-BF16 (this
    # AMD EPYC: a 1x1 convolution by 1 + 2^-9 returns 200/255 as 0.78515625, the bf16 value), which
    # moves this untrained MobileNetV2's probabilities by up to 0.56; its ONNX Runtime engine is float32.
    return export_fast(tiny_models["patch"], tiny_models["refine"] / "model.onnx", out,
                       inference_engine=ENGINE)
