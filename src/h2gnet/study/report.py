"""A single self-contained HTML report (pictures embedded) and the paper's Figure 4, for studies and the demo."""

from __future__ import annotations

import base64
import contextlib
import html
import time
from pathlib import Path

import cv2
import numpy as np

from h2gnet import __version__
from h2gnet.conventions import slide_outputs
from h2gnet.infer.heatmap import load_heatmap
from h2gnet.io.annotations import load_annotation
from h2gnet.io.atomic import atomic_path, write_text
from h2gnet.io.manifest import SlideEntry
from h2gnet.io.slides import open_slide
from h2gnet.outputs.mask_tiff import load_mask_tiff
from h2gnet.study.layout import StudyLayout

MAX_SLIDES_IN_FIGURE = 4


def _img_tag(path: Path, alt: str, width: str = "100%", max_side: int | None = None) -> str:
    """An <img> with the picture embedded; ``max_side`` shrinks it and embeds a JPEG (keeps reports small)."""
    if not path.exists():
        return ""
    if max_side is None:
        mime, raw = "png", path.read_bytes()
    else:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            return ""
        scale = max_side / max(img.shape[:2])
        if scale < 1:
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
        mime, raw = "jpeg", cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    data = base64.b64encode(raw).decode("ascii")
    return f'<img alt="{html.escape(alt)}" style="max-width:{width}" src="data:image/{mime};base64,{data}">'


def markdown_table_to_html(md: str) -> str:
    """The pipe tables and ``- `` lists of our own Markdown output as HTML (other lines become paragraphs)."""
    out: list[str] = []
    rows: list[list[str]] = []
    items: list[str] = []

    def flush() -> None:
        if items:
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead>"
                       "<tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                           for r in body) + "</tbody></table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif line.startswith("- "):
            items.append(line[2:].strip())
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def training_curves_png(logs: dict[str, list[dict]], path: Path) -> Path | None:
    """Validation/training loss per epoch: ``logs`` maps a run's name to the rows of its log.csv."""
    logs = {k: v for k, v in logs.items() if v}
    if not logs:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 * len(logs), 3), dpi=100)
    for i, (name, rows) in enumerate(logs.items()):
        ax = fig.add_subplot(1, len(logs), i + 1)
        epochs = [int(r["epoch"]) for r in rows]
        for key in ("train_loss", "val_loss"):
            ax.plot(epochs, [float(r[key]) for r in rows], label=key.replace("_", " "))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_figure4(out: Path, entries: list[SlideEntry], refined: tuple[str, str], path: Path) -> Path | None:
    """Slide, annotation, Mob-PW heatmap and refined segmentation for a few test slides (paper Figure 4).

    ``out`` is the study folder (``heatmaps/mob/``, ``predictions/<design>/``), ``entries`` its test slides,
    ``refined`` the (design key, label) of the refined design shown.
    """
    from matplotlib.figure import Figure

    layout = StudyLayout(out)
    by_grade: dict = {}
    for e in entries:
        by_grade.setdefault(e.grade, e)
    chosen = (list(by_grade.values()) + [e for e in entries if e not in by_grade.values()])[:MAX_SLIDES_IN_FIGURE]
    fig = Figure(figsize=(12, 3 * len(chosen)), dpi=90)
    titles = ["", "annotation", "heatmap (Mob-PW)", f"segmentation ({refined[1]})"]
    for row, e in enumerate(chosen):
        with open_slide(e.slide, e.mpp) as slide:
            mpp = max(slide.extent_um()) / 512
            thumb = slide.read_whole(mpp)
            truth = load_annotation(e.annotation, slide.dimensions, slide.mpp, mpp,
                                    tumour_free=e.tumour_free).array
            heat_file = slide_outputs(layout.heatmaps("mob"), e.key).heatmap
            heat = None
            if heat_file.exists():  # nearest: one block per patch, as the classifier saw it
                heat = load_heatmap(heat_file)[0].to_mpp(mpp, slide.dimensions, cv2.INTER_NEAREST).array
            pred_file = slide_outputs(layout.predictions(refined[0]), e.key).mask
            pred = load_mask_tiff(pred_file, slide.mpp).to_mpp(mpp, slide.dimensions).array
        panels = [thumb, truth, heat, pred]
        for col, panel in enumerate(panels):
            ax = fig.add_subplot(len(chosen), 4, row * 4 + col + 1)
            ax.axis("off")
            if panel is None:
                continue
            if panel.ndim == 3:
                ax.imshow(panel)
            else:
                ax.imshow(thumb)
                shown = np.ma.masked_where(~(panel > (0 if panel.dtype == bool else 0.0)), panel.astype(float))
                ax.imshow(shown, cmap="inferno" if col == 2 else "autumn", alpha=0.55, vmin=0, vmax=1)
            title = f"{e.key} (grade {e.grade})" if col == 0 else titles[col] if row == 0 else ""
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_html_report(out: Path, entries: list[SlideEntry], designs: dict[str, str], logs: dict[str, list[dict]],
                      table1_md: str, path: Path) -> Path:
    """One HTML file that opens offline: tables, figures, per-slide overlays, training curves.

    ``out`` is the study folder, ``entries`` its test slides, ``designs`` maps design key to label, ``logs``
    the training logs by run name; the tables and figures are read from ``path``'s folder.
    """
    results = path.parent
    with contextlib.suppress(ImportError):  # matplotlib is in the [train] extra
        training_curves_png(logs, results / "training_curves.png")
    parts = [f"<h1>h2gnet report</h1><p>h2gnet {__version__}, {time.strftime('%Y-%m-%d %H:%M')}, "
             f"output folder <code>{html.escape(str(out))}</code>.</p>",
             "<h2>Table 1 — test-set segmentation</h2>", markdown_table_to_html(table1_md)]
    for name, title in (("table2.md", "Table 2 — Dice per histological grade"),
                        ("tukey.md", "Tukey's range test on per-slide Dice (p-values)")):
        if (results / name).exists():
            parts += [f"<h2>{title}</h2>", markdown_table_to_html((results / name).read_text())]
    for name, title in (("dice_boxplot.png", "Per-slide Dice"), ("figure4.png", "Qualitative results (Figure 4)"),
                        ("training_curves.png", "Training curves")):
        tag = _img_tag(results / name, title)
        if tag:
            parts += [f"<h2>{title}</h2>", tag]
    parts.append("<h2>Test slides</h2><p>Heatmap (colour), predicted outline (green).</p>")
    for e in entries:
        cells = []
        for d, label in designs.items():
            overlay = slide_outputs(StudyLayout(out).predictions(d), e.key).overlay
            if overlay.exists():
                cells.append(f"<figure>{_img_tag(overlay, d, '360px', max_side=720)}<figcaption>{html.escape(label)}"
                             "</figcaption></figure>")
        if cells:
            parts.append(f"<h3>{html.escape(e.key)} (grade {e.grade})</h3><div class='row'>{''.join(cells)}</div>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,"
             "th:first-child{text-align:left}.row{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}"
             "figcaption{font-size:80%;text-align:center}")
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>h2gnet report</title><style>{style}</style>"
           f"</head><body>{''.join(parts)}</body></html>")
    write_text(path, doc)
    return path
