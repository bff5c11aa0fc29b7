"""Figures, tables and the HTML report, drawn from the results store alone (never from live tensors).

`build_report(results_dir, out_dir, ...)` writes every figure and table the store supports plus `index.html`;
`figures` has one function per paper figure, `tables` writes Markdown/LaTeX/CSV, `bootstrap` makes the paired
confidence intervals, `loaders` turns the store into DataFrames, `style` fixes one colour and label per model.
"""

from attnprobe.report.build import ReportResult, build_report, plot_figures

__all__ = ["ReportResult", "build_report", "plot_figures"]
