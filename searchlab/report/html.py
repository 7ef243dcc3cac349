"""``report.html``: one self-contained page per comparison, for people to look at.

Everything is inside the file (inline CSS, the plots as ``data:`` PNG URIs; no script,
no network), so it opens from a folder, an e-mail or an MLflow artifact view alike.  It
holds ``summary.md`` rendered (the tables of the report, the statistics, the re-scored
incumbents and reference optimizers), every plot of the report, and for each strategy
its best rule (over seeds) with that rule's lr sweep and final-run learning curve.

Text from result files (rule text, labels) is HTML-escaped before it is written, and
``summary.md`` is rendered by Python-Markdown with raw HTML disabled, so a crafted
results file cannot inject markup or script into the page.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..result import Result
from ..runfiles import RunRecord, best_results

__all__ = ["PLOTS", "write_html_report"]

#: the report's plots, in page order, with captions
PLOTS: tuple[tuple[str, str], ...] = (
    ("iqm_best_so_far.png", "IQM of the best reward so far vs unique evaluations (95 % CI)"),
    ("iqm_vs_compute.png", "IQM of the best reward so far vs compute"),
    ("best_so_far.png", "Mean best reward so far vs unique evaluations (bootstrap band)"),
    ("probability_of_improvement.png", "Probability of improvement P(row > column)"),
    ("performance_profile.png", "Performance profiles of the final best reward"),
    ("fixed_target_ecdf.png", "Evaluations needed to reach the targets (ECDF)"),
    ("rewards.png", "Reward of every sample"),
)

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
code { font: 12px ui-monospace, monospace; background: #f6f6f6; padding: 0 3px; }
figure { margin: 1.2em 0; } img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
.rule { border-top: 1px solid #ddd; margin-top: 1.5em; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _markdown(text: str) -> str:
    import markdown

    # escape first: raw HTML in the Markdown becomes text, never markup
    return markdown.markdown(html.escape(text, quote=False), extensions=["tables"],
                             output_format="html")


def _rule_figure(r: Result, path: Path) -> Path | None:
    """The lr sweep and the final run's learning curve of one result, as one PNG."""
    if not r.sweep and not r.curve:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.8))
    ax1, ax2 = fig.subplots(1, 2)
    if r.sweep:
        lrs = [lr for lr, _ in r.sweep]
        vals = [v for _, v in r.sweep]
        ax1.semilogx(lrs, vals, "o-")
        if r.best_lr is not None:
            ax1.axvline(r.best_lr, color="0.5", linestyle=":", label=f"best lr {r.best_lr:g}")
            ax1.legend(fontsize=8)
    ax1.set_xlabel("learning rate")
    ax1.set_ylabel("validation after the sweep run")
    ax1.grid(alpha=0.3)
    if r.curve:
        ax2.plot(range(1, len(r.curve) + 1), r.curve, "o-")
    ax2.set_xlabel("epoch of the final run")
    ax2.set_ylabel("validation")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_html_report(runs: Sequence[RunRecord], folder: str | os.PathLike[str],
                      title: str, files: Mapping[str, Path]) -> Path:
    """Write ``<folder>/report.html`` from the report ``files`` already written (the
    plots and ``summary.md``) and the best rule of each strategy; returns its path."""
    d = Path(folder)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    md = files.get("summary.md")
    if md is not None and Path(md).is_file():
        parts.append(_markdown(Path(md).read_text()))
    parts.append("<h2>Plots</h2>")
    for name, caption in PLOTS:
        p = files.get(name)
        if p is not None and Path(p).is_file():
            parts.append(f"<figure>{_img(Path(p), caption)}<figcaption>{html.escape(caption)}"
                         "</figcaption></figure>")
    parts.append("<h2>Best rule of each strategy</h2>")
    labels = list(dict.fromkeys(r.label for r in runs))
    for k, label in enumerate(labels):
        mine = [x for r in runs if r.label == label for x in r.results]
        top = best_results(mine, 1)
        if not top:
            continue
        r = top[0]
        lr = f"{r.best_lr:g}" if r.best_lr is not None else "-"
        parts.append(f"<div class='rule'><h3>{html.escape(label)}</h3><p><code>"
                     f"{html.escape(r.rule)}</code> reward {r.reward:.4f}, status "
                     f"{html.escape(r.status)}, best lr {lr}</p>")
        fig = _rule_figure(r, d / f"rule_{k}.png")
        if fig is not None:
            parts.append(f"<figure>{_img(fig, f'{label}: lr sweep and learning curve')}"
                         "<figcaption>left: validation after each sweep run; right: the "
                         "final run with the best lr</figcaption></figure>")
            fig.unlink()
        parts.append("</div>")
    parts.append("</body></html>")
    out = d / "report.html"
    out.write_text("\n".join(parts))
    return out
