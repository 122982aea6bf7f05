"""Bad options and run folders: every numeric option is checked by its parameter's one rule before any work.

Same shape as the bad-input corpus (tests/test_bad_inputs.py): each case ends with exit status 2, ONE
``error:`` line naming the option (or the file), no traceback, and no output left behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from h2gnet.cli import _patch_config, build_parser, main

Build = Callable[[Path], tuple[list[str], list[str], Path]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build


def _train_patch(t: Path, *extra: str) -> list[str]:
    return ["train-patch", str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(t / "out"), *extra]


def _seg(t: Path, *extra: str) -> list[str]:
    return ["segment", str(t / "s.tiff"), "-o", str(t / "out"), "--no-refine", "--patch-model", str(t / "p.onnx"),
            *extra]


def _toml(t: Path, text: str) -> Path:
    path = t / "study.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _option_cases(command: Callable[..., list[str]], option: str, values: list[str]) -> list[Case]:
    return [Case(f"{command.__name__.strip('_')}{option}={v}", lambda t, v=v: (
        command(t, option, v), [option, f"(got {v})"], t / "out")) for v in values]


_MPP = ["0", "nan", "inf", "-1", "1e6", "1e-6"]

CASES: list[Case] = [
    # -- train-patch: every numeric option, before the manifest is even read ----------------------
    *_option_cases(_train_patch, "--batch-size", ["0", "-5", "abc"]),
    *_option_cases(_train_patch, "--lr", ["-1", "0", "nan", "inf"]),
    *_option_cases(_train_patch, "--workers", ["-1"]),
    *_option_cases(_train_patch, "--epochs", ["0", "2.5"]),
    *_option_cases(_train_patch, "--input-size", ["7", "0"]),
    *_option_cases(_train_patch, "--steps", ["0"]),
    *_option_cases(_train_patch, "--val-steps", ["-1"]),
    *_option_cases(_train_patch, "--threads", ["0"]),
    *_option_cases(_train_patch, "--seed", ["-3"]),
    Case("train-patch-inception-too-small", lambda t: (
        _train_patch(t, "--arch", "inceptionv3", "--input-size", "64"), ["--input-size", "at least 75"], t / "out")),
    Case("train-patch-output-is-a-file", lambda t: (
        [*_train_patch(t)[:5], str(_file(t / "run.txt")), *_train_patch(t)[6:]], ["run.txt", "is a file"],
        t / "out")),
    Case("train-refine-output-is-a-file", lambda t: (
        ["train-refine", str(t / "m.csv"), "-o", str(_file(t / "run.txt"))], ["run.txt", "is a file"], t / "out")),
    Case("cluster-output-is-a-file", lambda t: (
        ["cluster", str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(_file(t / "c.txt"))],
        ["c.txt", "is a file"], t / "out")),
    Case("tissue-output-is-a-folder", lambda t: (
        _then((t / "out").mkdir(), (t / "mask.png").mkdir()),
        ["tissue", str(t / "s.tiff"), "-o", str(t / "mask.png")], ["mask.png", "is a folder"], t / "out")),
    # -- train-refine, cluster, quantize ------------------------------------------------------------
    Case("train-refine-input-size-not-multiple", lambda t: (
        ["train-refine", str(t / "m.csv"), "-o", str(t / "out"), "--input-size", "100"],
        ["--input-size", "multiples of"], t / "out")),
    *[Case(f"train-refine{o}={v}", lambda t, o=o, v=v: (
        ["train-refine", str(t / "m.csv"), "-o", str(t / "out"), o, v], [o, f"(got {v})"], t / "out"))
      for o, v in [("--accumulation", "0"), ("--patience", "0"), ("--lr", "2"), ("--batch-size", "-1"),
                   ("--epochs", "-2"), ("--input-size", "7")]],
    *[Case(f"cluster{o}={v}", lambda t, o=o, v=v: (
        ["cluster", str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(t / "out"), o, v], [o, f"(got {v})"],
        t / "out")) for o, v in [("-k", "1"), ("--variance", "0"), ("--variance", "1.5"), ("--batches", "0"),
                                 ("--workers", "-1"), ("--input-size", "7")]],
    *[Case(f"quantize{o}={v}", lambda t, o=o, v=v: (
        ["quantize", str(t / "p.onnx"), str(t / "m.csv"), "--index", str(t / "idx"), "-o", str(t / "out" / "q.onnx"),
         o, v], [o], t / "out")) for o, v in [("--patches", "0"), ("--calibration", "median")]],
    # -- inference -----------------------------------------------------------------------------------
    *_option_cases(_seg, "--batch-size", ["0", "-5"]),
    *_option_cases(_seg, "--readers", ["0"]),
    *_option_cases(_seg, "--threads", ["0", "-2"]),
    *_option_cases(_seg, "--mpp", _MPP),
    Case("segment-device-unknown", lambda t: (_seg(t, "--device", "tpu"), ["--device", "tpu"], t / "out")),
    *[Case(f"heatmap{o}={v}", lambda t, o=o, v=v: (
        ["heatmap", str(t / "m.csv"), "-o", str(t / "out"), "--patch-model", str(t / "p.onnx"), o, v],
        [o, f"(got {v})"], t / "out"))
      for o, v in [("--batch-size", "0"), ("--batch-size", "-5"), ("--readers", "-1")]],
    *[Case(f"segment{o}={v}", lambda t, o=o, v=v: (_seg(t, o, v), [o, f"(got {v})"], t / "out"))
      for o, v in [("--workers", "-1"), ("--retries", "-1"), ("--connect-timeout", "0"),
                   ("--connect-timeout", "nan")]],
    Case("segment-workers-and-scheduler", lambda t: (
        _seg(t, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"), ["--workers", "--scheduler"], t / "out")),
    # -- evaluate, tissue, patches, synth --------------------------------------------------------------
    *[Case(f"evaluate--mpp={v}", lambda t, v=v: (
        ["evaluate", str(t / "m.csv"), "--predictions", str(t / "pred"), "-o", str(t / "out"), "--mpp", v],
        ["--mpp", "µm/px", f"(got {v})"], t / "out")) for v in _MPP],
    *[Case(f"tissue--mpp={v}", lambda t, v=v: (
        ["tissue", str(t / "s.tiff"), "-o", str(t / "out" / "m.png"), "--mpp", v], ["--mpp", "µm/px"], t / "out"))
      for v in ("-1", "nan")],
    *[Case(f"patches{o}={v}", lambda t, o=o, v=v: (
        ["patches", str(t / "m.csv"), "-o", str(t / "out"), o, v], [o, f"(got {v})"], t / "out"))
      for o, v in [("--patch-size", "7"), ("--patch-size", "1e9"), ("--patch-mpp", "0"), ("--patch-mpp", "nan")]],
    *[Case(f"synth{o}={v}", lambda t, o=o, v=v: (
        ["synth", str(t / "out"), o, v], [o, f"(got {v})"], t / "out"))
      for o, v in [("--slides", "0"), ("--slides", "-3"), ("--width", "10"), ("--mpp", "9"), ("--mpp", "0"),
                   ("--val-fraction", "1.5"), ("--test-fraction", "-0.1")]],
    Case("synth-fractions-leave-no-training", lambda t: (
        ["synth", str(t / "out"), "--val-fraction", "0.6", "--test-fraction", "0.5"],
        ["--test-fraction", "leave training slides"], t / "out")),
    *[Case(f"export-fast--tissue-threshold={v}", lambda t, v=v: (
        ["export-fast", str(t / "run"), "-o", str(t / "out"), "--tissue-threshold", v], ["--tissue-threshold"],
        t / "out")) for v in ("-1", "500", "abc")],
    # -- study configs (ablation / demo): one rule per key, misspelt keys named ---------------------------
    Case("ablation-misspelt-key", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[patch]\nbatch_sise = 8\n"))],
        ["study.toml", "[patch]", "'batch_sise'"], t / "out")),
    Case("ablation-unknown-section", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[pach]\nlr = 0.1\n"))],
        ["study.toml", "'pach'"], t / "out")),
    Case("ablation-bad-value", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[refine]\nlr = -1\n"))],
        ["study.toml", "[refine] lr", "(got -1)"], t / "out")),
    Case("ablation-inception-too-small", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[inception]\ninput_size = 64\n"))],
        ["study.toml", "[inception] input_size", "at least 75"], t / "out")),
    Case("ablation-unknown-design", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, 'designs = ["mob-pw", "mob-pv"]\n'))],
        ["study.toml", "mob-pv"], t / "out")),
    Case("ablation-cohort-no-slides", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[cohort]\nslides = 0\n"))],
        ["study.toml", "[cohort] slides"], t / "out")),
    Case("ablation-evaluate-mpp", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "[evaluate]\nmpp = 0\n"))],
        ["study.toml", "[evaluate] mpp", "µm/px"], t / "out")),
    Case("ablation-section-not-table", lambda t: (
        ["ablation", "-o", str(t / "out"), "--config", str(_toml(t, "patch = 3\n"))],
        ["study.toml", "[patch]"], t / "out")),
    Case("demo-output-is-a-file", lambda t: (
        ["demo", str(_file(t / "demo.txt"))], ["demo.txt", "study folder"], t / "out")),
    Case("demo-config-not-toml", lambda t: (
        ["demo", str(t / "out"), "--config", str(_toml(t, "[patch\n"))], ["study.toml", "not valid TOML"], t / "out")),
    Case("demo-config-missing", lambda t: (
        ["demo", str(t / "out"), "--config", str(t / "none.toml")], ["none.toml", "no such config"], t / "out")),
]


def _then(*_effects: object) -> None:
    """Marks the file-making steps at the start of a case (their values are ignored)."""


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def _no_output_left(out: Path) -> None:
    if out.exists():
        assert out.is_dir() and not any(out.iterdir()), f"output left in {out}: {sorted(out.iterdir())}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_option_is_one_clear_error(case: Case, tmp_path: Path, capsys) -> None:
    argv, wanted, out = case.build(tmp_path)[-3:]  # a case may start with _then(file-making steps)
    capsys.readouterr()
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in wanted:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    _no_output_left(out)


# -- run folders ------------------------------------------------------------------------------------
def _resumable_run(t: Path, argv: list[str]) -> Path:
    """A run folder whose config.json is exactly what ``argv`` asks for, with a last checkpoint."""
    torch = pytest.importorskip("torch")
    from h2gnet import __version__
    from h2gnet.train.run_state import save_checkpoint

    run = t / "out"
    run.mkdir()
    cfg = _patch_config(build_parser().parse_args(argv))
    (run / "config.json").write_text(json.dumps({**asdict(cfg), "h2gnet_version": __version__}, default=str))
    save_checkpoint(run / "checkpoint_last.pt", {"model": {"w": torch.zeros(1)}, "optimizer": {}, "epoch": 1,
                                                 "best_val_loss": 1.0})
    return run


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_train_patch_refuses_a_planted_malicious_checkpoint(tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    argv = _train_patch(tmp_path)
    run = _resumable_run(tmp_path, argv)
    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker), "epoch": 1}, run / "checkpoint_last.pt")
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint_last.pt" in err and "never runs code" in err, err
    assert not marker.exists()


def test_train_patch_corrupt_config_json_is_a_clear_error(tmp_path: Path, capsys) -> None:
    argv = _train_patch(tmp_path)
    run = _resumable_run(tmp_path, argv)
    (run / "config.json").write_text('{"lr": 0.1,')
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err and "not valid JSON" in err, err


@pytest.mark.slow  # builds the mini cohort and its patch index
def test_a_failed_train_patch_start_leaves_nothing_that_blocks_the_rerun(mini_cohort: Path, tmp_path: Path,
                                                                        capsys) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    bad = ["train-patch", str(mini_cohort / "manifest.csv"), "--index", str(tmp_path / "no-index"), "-o", str(run),
           "--input-size", "64", "--workers", "0"]
    assert main(["-q", *bad]) == 2
    assert not run.exists() or not any(run.iterdir())
    from h2gnet.train.run_state import TrainingRun  # the corrected settings are accepted in the same folder

    fixed = _patch_config(build_parser().parse_args([*bad[:2], "--index", str(mini_cohort / "index"), *bad[4:]]))
    TrainingRun(run, fixed)
