"""The two HTML pages: the cohort table and a slide's viewer. Every value is escaped; data for scripts travel as
JSON in a ``<script type="application/json">`` block (no inline script runs: the pages' scripts are static files).
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

from h2gnet import __version__
from h2gnet.view.catalogue import Catalogue, SlideRecord


def slide_url(key: str) -> str:
    """The slide page's address of slide ``key`` (percent-encoded: any file name is safe in it)."""
    return f"/slide/{quote(key, safe='')}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _json_block(element_id: str, data: Any) -> str:
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _page(title: str, body: str, scripts: tuple[str, ...]) -> str:
    tags = "\n".join(f'<script src="/static/{s}"></script>' for s in scripts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="stylesheet" href="/static/view.css"></head>\n'
            f'<body>\n{body}\n{tags}\n</body></html>\n')


def _number_cell(value: float | None, digits: int) -> str:
    if value is None:
        return '<td class="num" data-value="">–</td>'
    return f'<td class="num" data-value="{value!r}">{value:.{digits}f}</td>'


def _row(rec: SlideRecord, catalogue: Catalogue) -> str:
    url = _e(slide_url(rec.key))
    status = rec.status or "unknown"
    error = rec.error or ("; ".join(rec.problems) if status not in ("done", "skipped") else "")
    status_cell = f'<span class="status status-{_e(status)}">{_e(status)}</span>'
    if error:
        status_cell += f'<div class="error">{_e(error)}</div>'
    if catalogue.outputs(rec.key).overlay.is_file():
        thumb = (f'<a href="{url}"><img class="thumb" loading="lazy" alt="{_e(rec.key)}: thumbnail with the outline" '
                 f'src="/thumb/{_e(quote(rec.key, safe=""))}.jpg"></a>')
    else:
        thumb = '<span class="none">no picture</span>'
    fraction = rec.number("classified_fraction")
    cells = [
        f'<td data-value="{_e(rec.key.lower())}"><a class="slide-link" href="{url}">{_e(rec.key)}</a></td>',
        f'<td data-value="{_e(status)}">{status_cell}</td>',
        f"<td>{thumb}</td>",
        _number_cell(rec.number("tumour_area_mm2"), 2),
        _number_cell(rec.number("tissue_area_mm2"), 2),
        _number_cell(None if fraction is None else 100 * fraction, 1),
        f'<td data-value="{_e(rec.design())}">{_e(rec.design())}</td>',
        f'<td data-value="{_e(rec.model_cards())}">{_e(rec.model_cards())}</td>',
        _number_cell(rec.seconds, 1),
        *(_number_cell(rec.metrics.get(c), 3) for c in catalogue.metric_columns),
    ]
    return f'<tr data-status="{_e(status)}">' + "".join(cells) + "</tr>"


def cohort_page(catalogue: Catalogue) -> str:
    """The cohort table: one row per slide, sortable (click a heading) and filterable (text, status)."""
    heads = [("slide", "text"), ("status", "text"), ("thumbnail", "none"), ("tumour mm²", "number"),
             ("tissue mm²", "number"), ("classified %", "number"), ("design", "text"), ("model cards", "text"),
             ("seconds", "number"), *((c, "number") for c in catalogue.metric_columns)]
    head = "".join(f'<th data-type="{t}"' + (' tabindex="0"' if t != "none" else "") + f">{_e(h)}</th>"
                   for h, t in heads)
    rows = "\n".join(_row(r, catalogue) for r in catalogue.records.values())
    counts: dict[str, int] = {}
    for r in catalogue.records.values():
        counts[r.status or "unknown"] = counts.get(r.status or "unknown", 0) + 1
    options = "".join(f'<option value="{_e(s)}">{_e(s)} ({n})</option>' for s, n in sorted(counts.items()))
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in catalogue.notes)
    evaluation = (f' · evaluation: <code>{_e(catalogue.evaluation)}</code>' if catalogue.evaluation else "")
    body = f"""<header><h1>h2gnet results</h1>
<p class="where"><code>{_e(catalogue.results)}</code> · {len(catalogue.records)} slides{evaluation}</p>{notes}</header>
<div class="filters"><label>filter <input id="filter" type="search" placeholder="slide, error, design…"></label>
<label>status <select id="status"><option value="">all</option>{options}</select></label>
<span id="shown"></span></div>
<table id="cohort"><thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody></table>
<footer>h2gnet {_e(__version__)} · read-only · click a heading to sort</footer>"""
    return _page("h2gnet results", body, ("cohort.js",))


def slide_page(rec: SlideRecord, info: dict[str, Any]) -> str:
    """A slide's page: the Deep Zoom viewer with its overlays and their controls, the summary, and every problem."""
    problems = "".join(f"<li>{_e(p)}</li>" for p in info["problems"])
    problems_html = f'<ul class="problems">{problems}</ul>' if problems else ""
    status = rec.status or "unknown"
    error = f'<p class="error">{_e(rec.error)}</p>' if rec.error else ""
    facts = [("status", status)]
    for label, name, digits in (("tumour", "tumour_area_mm2", 2), ("tissue", "tissue_area_mm2", 2)):
        value = rec.number(name)
        if value is not None:
            facts.append((label, f"{value:.{digits}f} mm²"))
    if info["slide"]:
        s = info["slide"]
        facts.append(("size", f"{s['width']}×{s['height']} px at {s['mpp']:g} µm/px"))
    if rec.design():
        facts.append(("design", rec.design()))
    for column, value in rec.metrics.items():
        facts.append((column, "–" if value is None else f"{value:.3f}"))
    facts_html = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)

    def toggle(name: str, label: str, opacity: float | None) -> str:
        if not info.get(name):
            return f'<label class="off"><input type="checkbox" disabled> {_e(label)} (none)</label>'
        slider = (f' <input type="range" id="{name}-opacity" min="0" max="1" step="0.05" value="{opacity}" '
                  f'aria-label="{_e(label)} opacity">' if opacity is not None else "")
        return f'<label><input type="checkbox" id="{name}-toggle" checked> {_e(label)}</label>{slider}'

    controls = " ".join([toggle("mask", "tumour mask", 0.4), toggle("heatmap", "heatmap", 0.6),
                         toggle("prediction", "prediction outline", None),
                         toggle("truth", "annotation outline", None)])
    viewer = ('<div id="viewer"></div><div id="scalebar"><div id="scalebar-bar"></div>'
              '<span id="scalebar-label"></span></div>' if info["slide"] else
              '<div id="viewer" class="unavailable">the slide cannot be shown (see above)</div>')
    body = f"""<header><a href="/">← all slides</a><h1>{_e(rec.key)}</h1>{error}{problems_html}</header>
<div class="layout"><div class="stage">{viewer}</div>
<aside><div class="controls">{controls}</div><dl>{facts_html}</dl>
<p class="legend"><span class="swatch pred"></span> prediction <span class="swatch truth"></span> annotation</p>
</aside></div>
{_json_block("slide-data", {**info, "tiles": f"/tiles/{quote(rec.key, safe='')}"})}"""
    return _page(f"{rec.key} · h2gnet", body, ("openseadragon/openseadragon.min.js", "slide.js"))


def error_page(title: str, message: str) -> str:
    """A page saying what is wrong (an unknown slide), with the way back."""
    return _page(title, f'<header><a href="/">← all slides</a><h1>{_e(title)}</h1>'
                        f'<p class="error">{_e(message)}</p></header>', ())
