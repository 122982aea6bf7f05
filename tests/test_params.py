"""``params.config_from_args``: every option a command builds from a config field comes back in its config."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from h2gnet.cli import build_parser
from h2gnet.cohort import EngineConfig
from h2gnet.evaluation.predictions import EvaluateConfig
from h2gnet.infer.adaptive import AdaptiveConfig
from h2gnet.infer.quantize import QuantizeConfig
from h2gnet.infer.segment import SegmentConfig
from h2gnet.params import ParameterError, Rule, config_from_args
from h2gnet.synth import CohortConfig
from h2gnet.train.config import ClusterConfig, PatchTrainConfig, RefineTrainConfig
from h2gnet.view.config import ViewConfig

#: (command line, config dataclass, what the command gives itself rather than from a same-named option)
COMMANDS = [
    (["synth", "out"], CohortConfig, {}),
    (["view", "results"], ViewConfig, {}),
    (["evaluate", "m.csv", "--predictions", "p", "-o", "o"], EvaluateConfig, {}),
    (["evaluate", "m.csv", "--predictions", "p", "-o", "o"], EngineConfig, {}),
    (["quantize", "m.onnx", "m.csv", "--index", "i", "-o", "o"], QuantizeConfig, {"index_dir": "i"}),
    (["cluster", "m.csv", "--index", "i", "-o", "o"], ClusterConfig, {"manifest": "m.csv", "index_dir": "i"}),
    (["train-patch", "m.csv", "--index", "i", "-o", "o"], PatchTrainConfig, {"manifest": "m.csv", "index_dir": "i"}),
    (["train-refine", "m.csv", "-o", "o"], RefineTrainConfig, {"manifest": "m.csv", "heatmaps": None}),
    (["segment", "s.tiff", "-o", "o", "--no-refine"], SegmentConfig, {"patch_model": None, "adaptive": None}),
    (["heatmap", "m.csv", "-o", "o"], SegmentConfig, {"patch_model": None, "adaptive": None}),
    (["segment", "s.tiff", "-o", "o", "--no-refine"], AdaptiveConfig, {"low": 0.1, "high": 0.9}),
]


def _other_value(rule: Rule, default: object) -> str:
    """A valid value of ``rule`` other than ``default``, as typed on the command line."""
    if rule.choices is not None:
        return next(c for c in rule.choices if c != default)
    if rule.kind is str:
        return f"other-than-{default}"
    base = default if isinstance(default, (int, float)) else rule.low if rule.low is not None else 1
    for candidate in (base + 1, base - 1, base * 0.75, base * 1.25, base + 0.5):
        value = int(candidate) if rule.kind is int else float(candidate)
        if value != default:
            try:
                return str(rule.check("", value))
            except ParameterError:
                continue
    raise AssertionError(f"no value other than {default!r} for {rule}")


def _options(parser: argparse.ArgumentParser, cls: type) -> list[argparse.Action]:
    """The options of ``parser`` whose dest is a checked field of ``cls``."""
    ruled = {f.name for f in fields(cls) if "rule" in f.metadata}
    return [a for a in parser._actions if a.option_strings and a.dest in ruled]


def _subparser(command: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize(("argv", "cls", "given"), COMMANDS, ids=lambda v: getattr(v, "__name__", None))
def test_every_option_of_a_config_field_round_trips(argv: list[str], cls: type, given: dict) -> None:
    actions = _options(_subparser(argv[0]), cls)
    assert actions, f"{argv[0]} has no option of {cls.__name__}"
    typed, expected = list(argv), {}
    for action in actions:
        flag = max(action.option_strings, key=len)
        rule = next(f.metadata["rule"] for f in fields(cls) if f.name == action.dest)
        if action.nargs == 0:  # a flag: --float-ends, --allow-upsampling, --tta
            typed.append(flag)
            expected[action.dest] = action.const
        else:
            text = _other_value(rule, action.default)
            typed += [flag, text]
            expected[action.dest] = rule.parse(text)
    if cls is PatchTrainConfig or cls is ClusterConfig:
        typed += ["--input-size", "256"]  # within every architecture's minimum
        expected["input_size"] = 256
    args = build_parser().parse_args(typed)
    config = config_from_args(cls, args, **given)
    for name, value in expected.items():
        assert getattr(config, name) == value, f"{cls.__name__}.{name}: {getattr(config, name)!r} != {value!r}"
    for name, value in given.items():
        assert getattr(config, name) == value


def test_fields_no_option_sets_keep_their_defaults() -> None:
    args = build_parser().parse_args(["segment", "s.tiff", "-o", "o", "--no-refine", "--batch-size", "5"])
    cfg = config_from_args(SegmentConfig, args, patch_model=None, adaptive=None)
    assert cfg.batch_size == 5 and cfg.threshold == 0.5 and cfg.min_tissue == SegmentConfig(None).min_tissue


def test_a_wrong_or_missing_field_fails_loudly() -> None:
    args = build_parser().parse_args(["synth", "out"])
    with pytest.raises(TypeError, match="CohortConfig has no field 'n_slides'"):
        config_from_args(CohortConfig, args, n_slides=3)
    with pytest.raises(TypeError, match="PatchTrainConfig: no value for field 'manifest'"):
        config_from_args(PatchTrainConfig, args)
    with pytest.raises(ParameterError, match="slides: must be an integer"):  # values are still checked
        config_from_args(CohortConfig, argparse.Namespace(slides=0))
