"""Evaluation of predicted tumour masks against annotations (paper section 3.3).

Pure pieces (numpy in, dicts out): per-slide metrics and summaries
(:mod:`.metrics`), Tukey's range test (:mod:`.stats`) and report writers
(:mod:`.report`). No torch; matplotlib only inside :func:`.report.boxplot_png`.
"""

from h2gnet.evaluation.metrics import (
    METRICS,
    binarise,
    mean_std,
    slide_metrics,
    summarise,
    summarise_designs,
    values_by_design,
)
from h2gnet.evaluation.stats import tukey_table, write_tukey_csv, write_tukey_markdown
from h2gnet.evaluation.summary import (
    boxplot_png,
    format_mean_std,
    print_table,
    summary_markdown,
    write_slides_csv,
    write_summary_json,
    write_summary_markdown,
)

__all__ = [
    "METRICS",
    "binarise",
    "boxplot_png",
    "format_mean_std",
    "mean_std",
    "print_table",
    "slide_metrics",
    "summarise",
    "summarise_designs",
    "summary_markdown",
    "tukey_table",
    "values_by_design",
    "write_slides_csv",
    "write_summary_json",
    "write_summary_markdown",
    "write_tukey_csv",
    "write_tukey_markdown",
]
