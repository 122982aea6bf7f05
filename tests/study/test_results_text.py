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
