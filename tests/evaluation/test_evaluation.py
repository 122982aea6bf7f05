"""Evaluation: slide metrics, summaries, Tukey's test, report writers."""

from __future__ import annotations

import csv
import io
import json
import math

import cv2
import numpy as np
import pytest
from scipy import stats

from h2gnet.evaluation.metrics import (
    binarise,
    mean_std,
    slide_metrics,
    summarise,
    summarise_designs,
    values_by_design,
)
from h2gnet.evaluation.stats import tukey_csv, tukey_markdown, tukey_table, write_tukey_csv
from h2gnet.evaluation.summary import (
    boxplot_png,
    format_mean_std,
    format_table,
    print_table,
    slides_csv,
    summary_json,
    summary_markdown,
    write_slides_csv,
    write_summary_json,
    write_summary_markdown,
)

# ----------------------------------------------------------------------------- slide metrics


def test_slide_metrics_counts_on_hand_made_masks():
    truth = np.zeros((10, 10), bool)
    truth[0:4, 0:5] = True  # 20 px
    pred = np.zeros((10, 10), bool)
    pred[2:6, 0:5] = True  # 20 px, 10 overlap
    pred[9, 9] = True  # +1 false positive
    m = slide_metrics(pred, truth)
    assert (m["tp"], m["fp"], m["fn"], m["pred_px"], m["truth_px"]) == (10, 11, 10, 21, 20)
    assert m["recall"] == pytest.approx(10 / 20)
    assert m["precision"] == pytest.approx(10 / 21)
    assert m["dice"] == pytest.approx(20 / 41)
    assert slide_metrics(truth, truth)["dice"] == 1.0


def test_empty_truth_and_empty_prediction_is_perfect():
    empty = np.zeros((4, 4), bool)
    m = slide_metrics(empty, empty)
    assert (m["recall"], m["precision"], m["dice"]) == (1.0, 1.0, 1.0)
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 0)


def test_empty_truth_with_prediction_has_undefined_recall():
    pred = np.zeros((4, 4), bool)
    pred[0, 0] = True
    m = slide_metrics(pred, np.zeros((4, 4), bool))
    assert math.isnan(m["recall"]) and m["precision"] == 0.0 and m["dice"] == 0.0
    assert m["fp"] == 1


def test_missed_tumour_has_undefined_precision():
    truth = np.zeros((4, 4), bool)
    truth[1:3, 1:3] = True
    m = slide_metrics(np.zeros((4, 4), bool), truth)
    assert m["recall"] == 0.0 and math.isnan(m["precision"]) and m["dice"] == 0.0
    assert m["fn"] == 4


def test_slide_metrics_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        slide_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_binarise_uses_greater_equal_half_and_nan_is_background():
    prob = np.array([0.2, 0.4999, 0.5, 0.9, np.nan])
    np.testing.assert_array_equal(binarise(prob), [False, False, True, True, False])
    np.testing.assert_array_equal(binarise(prob, 0.95), [False] * 5)


# ----------------------------------------------------------------------------- summaries


def make_rows(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    grades = ["II"] * 6 + ["I"] * 3 + ["III"] * 4 + [None]
    rows = []
    for i, grade in enumerate(grades):
        rows.append(
            {
                "slide": f"s{i}",
                "grade": grade,
                "recall": float(rng.uniform(0.5, 1)),
                "precision": float(rng.uniform(0.5, 1)),
                "dice": float(rng.uniform(0.5, 1)),
            }
        )
    rows[0]["recall"] = math.nan  # undefined for one slide
    return rows


def test_summarise_matches_numpy_overall_and_per_grade():
    rows = make_rows()
    s = summarise(rows, by="grade")
    dice = np.array([r["dice"] for r in rows])
    assert s["overall"]["n"] == 14
    assert s["overall"]["dice"]["mean"] == pytest.approx(dice.mean())
    assert s["overall"]["dice"]["std"] == pytest.approx(dice.std(ddof=0))
    recall = np.array([r["recall"] for r in rows[1:]])
    assert s["overall"]["recall"]["n"] == 13
    assert s["overall"]["recall"]["mean"] == pytest.approx(recall.mean())
    assert list(s["groups"]) == ["I", "II", "III"]  # natural order; no-grade row only overall
    assert [s["groups"][g]["n"] for g in ["I", "II", "III"]] == [3, 6, 4]
    grade3 = np.array([r["dice"] for r in rows if r["grade"] == "III"])
    assert s["groups"]["III"]["dice"]["mean"] == pytest.approx(grade3.mean())
    assert s["groups"]["III"]["dice"]["std"] == pytest.approx(grade3.std())


def test_summarise_numeric_grades_and_no_grouping():
    rows = [{"grade": g, "dice": v} for g, v in [(2.0, 0.8), (10, 0.6), (1, 0.9), (2, 0.7)]]
    s = summarise(rows, by="grade", metrics=("dice",))
    assert list(s["groups"]) == ["1", "2", "10"]
    assert s["groups"]["2"]["dice"]["mean"] == pytest.approx(0.75)
    assert summarise(rows, by=None, metrics=("dice",))["groups"] == {}


def test_long_table_split_by_design():
    rows = [dict(r, design="A") for r in make_rows(0)] + [dict(r, design="B") for r in make_rows(1)[:5]]
    summaries = summarise_designs(rows)
    assert list(summaries) == ["A", "B"]
    assert summaries["B"]["overall"]["n"] == 5
    assert summaries["A"]["groups"] == summarise(make_rows(0))["groups"]
    dice = values_by_design(rows)
    assert dice["B"] == [r["dice"] for r in make_rows(1)[:5]]


def test_mean_std_of_nothing_is_nan_with_n_zero():
    out = mean_std([math.nan, math.nan])
    assert out["n"] == 0 and math.isnan(out["mean"]) and math.isnan(out["std"])
    assert mean_std([0.5])["std"] == 0.0  # ddof = 0: one slide has no spread


# ----------------------------------------------------------------------------- Tukey


def test_tukey_detects_different_groups_and_not_identical_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(0.93, 0.03, 30)
    groups = {"A": a, "B": a.copy(), "C": rng.normal(0.70, 0.03, 30)}
    designs, p = tukey_table(groups)
    assert designs == ["A", "B", "C"]
    assert p.shape == (3, 3) and np.allclose(p, p.T) and np.all(np.diag(p) == 1.0)
    assert p[0, 1] == pytest.approx(1.0)
    assert p[0, 2] < 0.05 and p[1, 2] < 0.05
    expected = stats.tukey_hsd(*groups.values()).pvalue
    assert p[0, 2] == pytest.approx(expected[0, 2])


def test_tukey_similar_groups_are_not_significant():
    rng = np.random.default_rng(1)
    _, p = tukey_table({"X": rng.normal(0.9, 0.05, 40), "Y": rng.normal(0.9, 0.05, 40)})
    assert p[0, 1] > 0.05


def test_tukey_rejects_too_few_values():
    with pytest.raises(ValueError, match="two designs"):
        tukey_table({"only": [0.1, 0.2]})
    with pytest.raises(ValueError, match=">= 2"):
        tukey_table({"A": [0.1, 0.2], "B": [0.3, math.nan]})


def test_tukey_writers(tmp_path):
    _, p = tukey_table({"A": [0.9, 0.91, 0.92, 0.93], "B": [0.5, 0.52, 0.51, 0.49]})
    md = tukey_markdown(["A", "B"], p)
    assert "| A | – | <0.001* |" in md
    rows = list(csv.reader(io.StringIO(tukey_csv(["A", "B"], p))))
    assert rows[0] == ["design_a", "design_b", "p_value"] and rows[1][:2] == ["A", "B"]
    assert float(rows[1][2]) == pytest.approx(p[0, 1])
    path = write_tukey_csv(tmp_path / "tukey.csv", ["A", "B"], p)
    assert path.read_text() == tukey_csv(["A", "B"], p)


# ----------------------------------------------------------------------------- reports


def stat(mean: float, std: float, n: int) -> dict:
    return {"mean": mean, "std": std, "n": n}


def paper_like_summaries() -> dict:
    unet = {
        "overall": {
            "n": 90,
            "recall": stat(0.944, 0.074, 90),
            "precision": stat(0.929, 0.088, 90),
            "dice": stat(0.933, 0.069, 90),
        },
        "by": "grade",
        "groups": {
            "I": {"n": 11, "dice": stat(0.936, 0.073, 11)},
            "II": {"n": 48, "dice": stat(0.931, 0.058, 48)},
            "III": {"n": 31, "dice": stat(0.935, 0.083, 31)},
        },
    }
    otsu = {
        "overall": {
            "n": 90,
            "recall": stat(0.990, 0.027, 90),
            "precision": stat(0.534, 0.200, 88),
            "dice": stat(0.669, 0.179, 90),
        },
        "by": "grade",
        "groups": {
            "I": {"n": 11, "dice": stat(0.732, 0.151, 11)},
            "II": {"n": 48, "dice": stat(0.659, 0.186, 48)},
            "III": {"n": 31, "dice": stat(0.664, 0.174, 31)},
        },
    }
    return {"Mob-PW-UNet": unet, "Otsu": otsu}


def test_format_mean_std():
    assert format_mean_std(stat(0.9333, 0.0691, 5)) == "0.933 ± 0.069"
    assert format_mean_std(stat(0.9, 0.1, 4), n_expected=5) == "0.900 ± 0.100 (n=4)"
    assert format_mean_std(stat(math.nan, math.nan, 0)) == "–"


def test_summary_markdown_has_table_1_and_2_rows(tmp_path):
    md = summary_markdown(paper_like_summaries())
    assert "| Design | Recall | Precision | Dice |" in md
    assert "| Mob-PW-UNet | 0.944 ± 0.074 | 0.929 ± 0.088 | 0.933 ± 0.069 |" in md
    assert "| Otsu | 0.990 ± 0.027 | 0.534 ± 0.200 (n=88) | 0.669 ± 0.179 |" in md
    assert "| Design | Grade I (11) | Grade II (48) | Grade III (31) |" in md
    assert "| Mob-PW-UNet | 0.936 ± 0.073 | 0.931 ± 0.058 | 0.935 ± 0.083 |" in md
    path = write_summary_markdown(tmp_path / "summary.md", paper_like_summaries())
    assert path.read_text(encoding="utf-8") == md


def test_summary_markdown_from_real_summaries_round_trips_numbers():
    rows = make_rows()
    md = summary_markdown({"D": summarise(rows)})
    dice = np.array([r["dice"] for r in rows])
    assert f"{dice.mean():.3f} ± {dice.std():.3f}" in md
    assert "Grade I (3)" in md and "Grade II (6)" in md


def test_summary_json_turns_nan_into_null(tmp_path):
    summaries = {"D": summarise([{"grade": "I", "recall": math.nan, "precision": 1.0, "dice": 0.0}])}
    doc = json.loads(summary_json(summaries, extra={"mpp": 2.0}))
    assert doc["std_ddof"] == 0 and doc["mpp"] == 2.0
    assert doc["designs"]["D"]["overall"]["recall"] == {"mean": None, "std": None, "n": 0}
    assert doc["designs"]["D"]["groups"]["I"]["precision"]["mean"] == 1.0
    path = write_summary_json(tmp_path / "s.json", summaries)
    assert json.loads(path.read_text())["designs"]["D"]["overall"]["n"] == 1


def test_slides_csv_orders_columns_and_blanks_nan(tmp_path):
    rows = [
        {"extra": "x", "dice": 0.5, "slide": "a", "recall": math.nan, "tp": 3},
        {"slide": "b", "dice": 1 / 3, "recall": 1.0, "tp": 0, "grade": "II"},
    ]
    text = slides_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == ["slide", "grade", "recall", "dice", "tp", "extra"]
    assert parsed[0]["recall"] == "" and parsed[0]["grade"] == ""
    assert float(parsed[1]["dice"]) == 1 / 3  # full precision
    path = write_slides_csv(tmp_path / "slides.csv", rows)
    assert path.read_text() == text


def test_print_table_aligns_columns(capsys):
    print_table(paper_like_summaries())
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["Design", "Recall", "Precision", "Dice"]
    assert "0.933 ± 0.069" in out and "Grade III (31)" in out
    assert len({len(line) for line in lines[:4]}) == 1  # header, rule and rows equally wide
    assert out == format_table(paper_like_summaries())


def test_boxplot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    data = {f"design {i}": list(rng.uniform(0.6, 1.0, 12)) + [math.nan] for i in range(5)}
    path = boxplot_png(data, tmp_path / "dice.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["dice.png"]
