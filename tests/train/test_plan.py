"""Training plans in optimizer steps (no training here) and the refiner's verdict line."""

from __future__ import annotations

import warnings

import pytest

from h2gnet.params import ParameterError
from h2gnet.train.config import PatchTrainConfig, RefineTrainConfig
from h2gnet.train.plan import MIN_OPTIMIZER_STEPS, plan_run


def _refine(**kw) -> RefineTrainConfig:
    return RefineTrainConfig(manifest="m.csv", heatmaps=None, **kw)


def test_issue_cohort_gets_one_step_per_epoch() -> None:
    pytest.importorskip("torch")
    from h2gnet.train.refiner import plan_refiner

    # issue 17: 10 training slides, batch 4 × accumulation 6, 40 epochs = 40 optimizer steps
    plan = plan_refiner(_refine(epochs=40), 10)
    assert (plan.samples, plan.batches, plan.steps, plan.epochs, plan.total_steps) == (10, 3, 1, 40, 40)
    assert "3 batches of 4" in plan.describe("slides") and "= 40 optimizer steps" in plan.describe("slides")
    # a step budget derives the epochs: 27 slides, batch 4, no accumulation = 7 steps/epoch
    plan = plan_refiner(_refine(epochs=40, total_steps=500, accumulation=1), 27)
    assert (plan.steps, plan.epochs, plan.total_steps) == (7, 72, 504)
    # the last, partial accumulation of an epoch is a step (as the training loop does)
    assert plan_run(26, 4, 1, accumulation=3).steps == 3  # 7 batches → 3 + 3 + 1


def test_world_size_splits_the_samples() -> None:
    plan = plan_run(40, 4, 10, accumulation=2, world_size=2)
    assert (plan.batches, plan.steps, plan.total_steps) == (5, 3, 30)
    assert "× 2 processes" in plan.describe()


def test_patch_plan() -> None:
    pytest.importorskip("torch")
    from h2gnet.train.patch_classifier import plan_patch_training

    plan = plan_patch_training(PatchTrainConfig(manifest="m", index_dir="i", epochs=6, steps=40, batch_size=32))
    assert (plan.samples, plan.batches, plan.steps, plan.total_steps) == (1280, 40, 40, 240)


def test_short_run_warns_with_numbers_and_advice() -> None:
    with pytest.warns(UserWarning, match=r"only 40 optimizer steps .*1/epoch × 40 epochs.*--total-steps"):
        assert plan_run(10, 4, 40, accumulation=6).warn_if_short("give --total-steps")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not plan_run(10, 4, MIN_OPTIMIZER_STEPS, accumulation=6).warn_if_short("x")
        assert not plan_run(27, 4, 70).warn_if_short("x")  # the CPU ablation's refiner: 490 steps


def test_total_steps_is_checked() -> None:
    with pytest.raises(ParameterError, match="total_steps"):
        _refine(total_steps=0)
    assert _refine().total_steps is None  # default: --epochs decides, as before


def test_verdict_lines() -> None:
    pytest.importorskip("torch")
    from h2gnet.train.refiner import verdict

    assert verdict(0.8, 0.7) == "refinement improves validation Dice from 0.700 to 0.800"
    assert verdict(0.33, 0.65).startswith("refinement makes validation Dice worse: 0.330 against 0.650")
    assert "not compared" in verdict(0.5, None)


def test_cosine_schedule_decays_to_zero_and_constant_stays() -> None:
    pytest.importorskip("torch")
    from h2gnet.train.refiner import lr_at

    cos = _refine(lr=1e-3, lr_schedule="cosine")
    rates = [lr_at(cos, e, 10) for e in range(10)]
    assert rates[0] == pytest.approx(1e-3) and rates[5] == pytest.approx(5e-4)
    assert all(a > b for a, b in zip(rates, rates[1:])) and 0 < rates[-1] < 3e-5
    assert {lr_at(_refine(lr=1e-3), e, 10) for e in range(10)} == {1e-3}
    with pytest.raises(ParameterError, match="lr_schedule"):
        _refine(lr_schedule="step")


def test_blur_augmentation_is_set_in_micrometres_and_checked() -> None:
    pytest.importorskip("torch")
    from types import SimpleNamespace

    from h2gnet.errors import H2GNetError
    from h2gnet.train.patch_classifier import blur_augment_config, describe_augmentation

    # 256-px patches at 1 µm/px seen by the model as 128 px: 2 µm per model px, so σ ≤ 3 µm is σ ≤ 1.5 px
    sampler = SimpleNamespace(indexes=[SimpleNamespace(patch_mpp=1.0, patch_size=256)] * 2)
    aug = blur_augment_config(sampler, 3.0, 128)  # type: ignore[arg-type]
    assert aug.p_blur == 0.5 and aug.blur_sigma == pytest.approx((0.0, 1.5))
    assert aug.p_hsv == 0.5 and aug.hue_shift == 20  # the paper's augmentations stay
    import pickle
    from functools import partial

    from h2gnet.train.augment import augment_patch

    pickle.dumps(partial(augment_patch, config=aug))  # DataLoader workers started by spawn receive it pickled
    mixed = SimpleNamespace(indexes=[SimpleNamespace(patch_mpp=1.0, patch_size=256),
                                     SimpleNamespace(patch_mpp=0.5, patch_size=256)])
    with pytest.raises(H2GNetError, match="field of view"):
        blur_augment_config(mixed, 3.0, 128)  # type: ignore[arg-type]
    cfg = PatchTrainConfig(manifest="m.csv", index_dir="ix", blur_um=2.0)
    assert "Gaussian blur σ ≤ 2 µm" in describe_augmentation(cfg)
    assert "blur" not in describe_augmentation(PatchTrainConfig(manifest="m.csv", index_dir="ix"))
    with pytest.raises(ParameterError, match="no-augment"):
        PatchTrainConfig(manifest="m.csv", index_dir="ix", blur_um=2.0, augment=False)
    with pytest.raises(ParameterError, match="blur_um"):
        PatchTrainConfig(manifest="m.csv", index_dir="ix", blur_um=-1.0)
