"""What a study's Table 1 says beyond the table: refined against patch-wise, and what the run left out."""

from __future__ import annotations

import pytest

from h2gnet.errors import H2GNetError
from h2gnet.study.ablation import check_config, refinement_lines
from h2gnet.study.report import markdown_table_to_html


def _rows(pw: list[float], refined: list[float]) -> list[dict]:
    rows = [{"design": "(IV) Mob-PW", "slide": f"s{i}", "dice": d} for i, d in enumerate(pw)]
    return rows + [{"design": "(VI) Mob-PW-UNet", "slide": f"s{i}", "dice": d} for i, d in enumerate(refined)]


def test_refinement_line_counts_paired_gains_and_gives_tukey_p() -> None:
    rows = _rows([0.80, 0.70, 0.90], [0.85, 0.72, 0.88])
    tukey = {"designs": ["(IV) Mob-PW", "(VI) Mob-PW-UNet"], "p": [[1.0, 0.0123], [0.0123, 1.0]]}
    line = refinement_lines(rows, ["mob-pw", "mob-pw-unet"], tukey)
    assert "Dice higher on 2 of 3 slides" in line
    assert "mean change +0.017" in line
    assert "Tukey p = 0.0123" in line


def test_refinement_line_needs_both_designs() -> None:
    assert refinement_lines(_rows([0.8], [0.9]), ["mob-pw-unet"], None) == ""
    line = refinement_lines(_rows([0.8], [0.9]), ["mob-pw", "mob-pw-unet"], None)
    assert "1 of 1" in line and "Tukey" not in line


def test_caveats_are_checked_and_rendered_as_a_list() -> None:
    check_config({"designs": ["mob-pw"], "caveats": ["no 1024 px refiner"]})
    for bad in ("one string", [""], [3]):
        with pytest.raises(H2GNetError, match="caveats"):
            check_config({"caveats": bad}, "demo.toml")
    html = markdown_table_to_html("Left out:\n- a <b>\n- c\n")
    assert "<ul><li>a &lt;b&gt;</li><li>c</li></ul>" in html


def test_a_study_folder_resumes_only_with_its_own_settings(tmp_path) -> None:
    from h2gnet.study.ablation import Study, check_resumed_config

    config = {"designs": ["mob-pw"], "cohort": {"slides": 16, "seed": 0}, "refine": {"epochs": 150}}
    check_resumed_config(Study(config, tmp_path, progress=False))  # first run: records the settings
    assert (tmp_path / "study-config.json").is_file()
    # designs, caveats and the evaluation may change between runs
    check_resumed_config(Study({**config, "designs": ["mob-pw", "mob-pw-unet"], "caveats": ["x"],
                                "evaluate": {"mpp": 4.0}}, tmp_path, progress=False))
    changed = {**config, "cohort": {"slides": 24, "seed": 0}}
    with pytest.raises(H2GNetError, match=r"cohort\.slides: 16 then, 24 now"):
        check_resumed_config(Study(changed, tmp_path, progress=False))
    with pytest.raises(H2GNetError, match=r"refine\.lr_schedule: None then, 'cosine' now"):
        check_resumed_config(Study({**config, "refine": {"epochs": 150, "lr_schedule": "cosine"}}, tmp_path,
                                   progress=False))


def test_a_folder_from_before_the_record_is_checked_by_its_cohort_size(tmp_path) -> None:
    from h2gnet.study.ablation import Study, check_resumed_config

    (tmp_path / "cohort").mkdir()
    rows = "".join(f"slides/p{i}.tiff,annotations/p{i}.geojson,1,train\n" for i in range(16))
    (tmp_path / "cohort" / "manifest.csv").write_text("slide,annotation,grade,split\n" + rows)
    with pytest.raises(H2GNetError, match="phantom cohort of 16 slides, the config asks for 24"):
        check_resumed_config(Study({"cohort": {"slides": 24}}, tmp_path, progress=False))
    assert not (tmp_path / "study-config.json").exists()
    with pytest.warns(UserWarning, match="made before studies recorded their settings"):
        check_resumed_config(Study({"cohort": {"slides": 16}}, tmp_path, progress=False))
    assert (tmp_path / "study-config.json").is_file()
