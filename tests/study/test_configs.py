"""The built-in study configs: each loads and passes the same checks as a user's config."""

from __future__ import annotations

import re
from importlib import resources

import pytest

pytest.importorskip("torch")

from h2gnet.study.ablation import DESIGNS, Study, load_config  # noqa: E402

BUILTINS = sorted(p.name.removesuffix(".toml") for p in resources.files("h2gnet.configs").iterdir()
                  if p.name.endswith(".toml"))


def test_the_builtins_include_the_alternative_cohort_config() -> None:
    assert {"ablation-cpu", "ablation-cpu-alt", "ablation-paper", "demo"} <= set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_config_loads(name: str, tmp_path) -> None:
    config = load_config(None, name)
    study = Study(config, tmp_path / "study", progress=False)
    assert set(study.designs) <= set(DESIGNS)
    if "manifest" not in study.section("cohort"):
        study.cohort()  # a phantom cohort's settings pass CohortConfig's rules


def test_alternative_config_is_another_generator_setting(tmp_path) -> None:
    study = Study(load_config(None, "ablation-cpu-alt"), tmp_path, progress=False)
    cohort = study.cohort()
    assert (cohort.slides, cohort.seed, cohort.stain_set, cohort.mpp) == (42, 1001, "alternative", 0.4)
    assert (cohort.val_fraction, cohort.test_fraction) == (0.1, 0.5)
    assert study.designs == ["otsu", "mob-pw", "mob-pw-unet"]
    # the CPU settings of the reference study, so only the cohort differs
    reference = load_config(None, "ablation-cpu")
    for section in ("patch", "refine", "evaluate"):
        assert study.section(section) == reference[section], section


def test_segment_and_adaptive_sections_are_checked() -> None:
    from h2gnet.errors import H2GNetError
    from h2gnet.study.ablation import check_config

    check_config({"segment": {"tta": True, "threshold": 0.4}, "adaptive": {"stride": 4, "radius": 2, "check": "mean"}})
    check_config({"adaptive": {}})  # present and empty: the defaults
    for bad, words in (({"segment": {"device": "cuda"}}, "[segment] unknown key 'device'"),
                       ({"segment": {"tta": "yes"}}, "[segment] tta"),
                       ({"adaptive": {"check": "max"}}, "[adaptive] check"),
                       ({"evaluate": {"adaptive": True}}, "[evaluate] unknown key 'adaptive'")):
        with pytest.raises(H2GNetError, match=re.escape(words)):
            check_config(bad, "s.toml")


def test_demo_scores_enough_test_slides_and_says_what_it_left_out(tmp_path) -> None:
    from collections import Counter

    from h2gnet.synth.cohort import plan_cohort

    study = Study(load_config(None, "demo"), tmp_path, progress=False)
    c = study.cohort()
    splits = Counter(s.split for s in plan_cohort(c.slides, c.seed, val_fraction=c.val_fraction,
                                                  test_fraction=c.test_fraction))
    assert splits["test"] >= 10 and splits["train"] >= 8, splits  # a mean over 3 slides meant little
    assert study.designs == ["mob-pw", "mob-pw-unet"]
    assert len(study.config["caveats"]) >= 3
