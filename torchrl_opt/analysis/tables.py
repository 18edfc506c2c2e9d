"""Tables as Markdown (for the docs) and CSV (for further processing).

A :class:`Table` keeps two views of the same rows: formatted Markdown cells (scores to one decimal,
``mean ± std``, ``[low, high]`` intervals) and raw CSV values (full precision, one number a column).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from torchrl_opt.analysis.cells import Difference

if TYPE_CHECKING:
    from torchrl_opt.analysis.stats import AggregateStats, CellStats, Curve, Improvement, Profiles

#: Decimals of normalised scores in Markdown tables.
SCORE_DIGITS = 1
#: Decimals of probabilities in Markdown tables.
PROBABILITY_DIGITS = 2


@dataclass
class Table:
    """A named table: ``md_columns``/``md_rows`` are its Markdown view, ``csv_columns``/``csv_rows`` its CSV view."""

    name: str
    title: str
    md_columns: list[str]
    md_rows: list[list[str]]
    csv_columns: list[str]
    csv_rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self, heading: str = "##") -> str:
        """The table under a ``heading`` title, followed by its notes as a bullet list."""
        lines = [f"{heading} {self.title}", ""]
        if self.md_rows:
            lines.append("| " + " | ".join(map(_escape, self.md_columns)) + " |")
            lines.append("|" + "|".join("---" for _ in self.md_columns) + "|")
            lines += ["| " + " | ".join(map(_escape, row)) + " |" for row in self.md_rows]
        else:
            lines.append("(no rows)")
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.csv_columns)
        writer.writerows(self.csv_rows)
        return buffer.getvalue()

    def write(self, out_dir: str | Path, *, markdown: str | None = None) -> list[Path]:
        """Write ``<out_dir>/<name>.csv`` and, for a table with a Markdown view, ``<name>.md``.

        The Markdown file holds ``markdown`` if given, else :meth:`to_markdown`. Returns the paths.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        if self.md_columns or markdown is not None:
            md = out_dir / f"{self.name}.md"
            md.write_text(markdown if markdown is not None else self.to_markdown("#"))
            paths.append(md)
        csv_path = out_dir / f"{self.name}.csv"
        csv_path.write_text(self.to_csv())
        return [*paths, csv_path]


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def fmt(value: float | None, digits: int = SCORE_DIGITS) -> str:
    """``value`` to ``digits`` decimals; ``-`` for ``None``."""
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_interval(low: float, high: float, digits: int = SCORE_DIGITS) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _variant(cell) -> str:
    return "; ".join(f"{k}={v}" for k, v in cell.variant.items())


def per_task_table(stats: Sequence[CellStats], metric: str) -> Table:
    """One row per cell: seeds, mean ± std, IQM and their 95% CIs of ``metric``."""
    md_rows, csv_rows, notes = [], [], []
    for s in stats:
        c = s.cell
        md_rows.append([c.env, c.label, str(len(s.seeds)), f"{fmt(s.mean.value)} ± {fmt(s.std)}",
                        fmt_interval(s.mean.low, s.mean.high), fmt(s.iqm.value), fmt_interval(s.iqm.low, s.iqm.high)])
        csv_rows.append([c.task, c.dataset, c.method, c.label, _variant(c), metric, len(s.seeds),
                         " ".join(map(str, s.seeds)), s.mean.value, s.std, s.mean.low, s.mean.high,
                         s.iqm.value, s.iqm.low, s.iqm.high, " ".join(repr(float(v)) for v in s.scores)])
        if s.missing:
            notes.append(f"{c.label} on {c.env}: {len(s.missing)} seed(s) without a {metric} score left out")
        if len(s.seeds) == 1:
            notes.append(f"{c.label} on {c.env}: a single seed, so its intervals are a point")
    return Table(
        f"per_task_{metric}", f"{metric} normalised score per task",
        ["task", "method", "seeds", "mean ± std", "95% CI (mean)", "IQM", "95% CI (IQM)"], md_rows,
        ["task", "dataset", "method", "label", "variant", "metric", "n_seeds", "seeds", "mean", "std",
         "mean_ci_low", "mean_ci_high", "iqm", "iqm_ci_low", "iqm_ci_high", "scores"], csv_rows, notes)


def aggregate_table(aggregates: Sequence[AggregateStats], metric: str) -> Table:
    """One row per label: mean and IQM over its tasks with 95% stratified bootstrap CIs."""
    md_rows, csv_rows, notes = [], [], []
    for a in aggregates:
        md_rows.append([a.label, str(len(a.envs)), str(a.runs_per_task), fmt(a.mean.value),
                        fmt_interval(a.mean.low, a.mean.high), fmt(a.iqm.value), fmt_interval(a.iqm.low, a.iqm.high)])
        csv_rows.append([a.label, metric, len(a.envs), " ".join(a.envs), a.runs_per_task, a.mean.value,
                         a.mean.low, a.mean.high, a.iqm.value, a.iqm.low, a.iqm.high])
        notes += [f"{a.label}: {n}" for n in a.notes]
    return Table(
        f"aggregate_{metric}", f"{metric} normalised score over tasks",
        ["method", "tasks", "runs per task", "mean", "95% CI (mean)", "IQM", "95% CI (IQM)"], md_rows,
        ["label", "metric", "n_tasks", "tasks", "runs_per_task", "mean", "mean_ci_low", "mean_ci_high",
         "iqm", "iqm_ci_low", "iqm_ci_high"], csv_rows, notes)


def improvement_table(improvements: Sequence[Improvement], metric: str) -> Table:
    """One row per (X, Y, tasks): ``P(X > Y)`` with its 95% CI and the runs behind it."""
    md_rows, csv_rows, notes = [], [], []
    for i in improvements:
        tasks = i.envs[0] if len(i.envs) == 1 else f"all {len(i.envs)} tasks"
        md_rows.append([i.x, i.y, tasks, fmt(i.probability.value, PROBABILITY_DIGITS),
                        fmt_interval(i.probability.low, i.probability.high, PROBABILITY_DIGITS),
                        f"{i.runs_x} / {i.runs_y}"])
        csv_rows.append([i.x, i.y, metric, len(i.envs), " ".join(i.envs), i.probability.value,
                         i.probability.low, i.probability.high, i.runs_x, i.runs_y])
        notes += [f"P({i.x} > {i.y}) on {tasks}: {n}" for n in i.notes]
    return Table(
        f"improvement_{metric}", f"probability of improvement P(X > Y), {metric} score",
        ["X", "Y", "tasks", "P(X > Y)", "95% CI", "runs X / Y"], md_rows,
        ["x", "y", "metric", "n_tasks", "tasks", "probability", "ci_low", "ci_high", "runs_x", "runs_y"],
        csv_rows, notes)


def differences_table(diffs: Sequence[Difference]) -> Table:
    """The config entries that split one method's runs on one task into several cells."""
    md_rows, csv_rows = [], []
    for d in diffs:
        for cell in d.cells:
            values = d.values(cell)
            md_rows.append([f"{d.task}-{d.dataset}", d.method, cell.label, str(len(cell.runs)),
                            ", ".join(f"{k}={v}" for k, v in values.items())])
            csv_rows += [[d.task, d.dataset, d.method, cell.label, k, v] for k, v in values.items()]
    notes = [] if diffs else ["every (task, dataset, method) has a single configuration"]
    return Table(
        "differences", "configurations that were not averaged together",
        ["task", "method", "label", "seeds", "differing entries"], md_rows,
        ["task", "dataset", "method", "label", "entry", "value"], csv_rows, notes)


def curves_table(curves: Sequence[Curve], name: str = "curves") -> Table:
    """Every curve point (CSV): mean and 95% CI over seeds at each step."""
    csv_rows = [[c.task, c.dataset, c.label, c.key, float(s), float(m), float(lo), float(hi), len(c.seeds)]
                for c in curves for s, m, lo, hi in zip(c.steps, c.mean, c.low, c.high)]
    notes = [f"{c.label} on {c.env}, {c.key}: {n}" for c in curves for n in c.notes]
    return Table(name, "curves (mean and 95% CI over seeds)", [], [],
                 ["task", "dataset", "label", "series", "step", "mean", "ci_low", "ci_high", "n_seeds"],
                 csv_rows, notes)


def profile_table(profiles: Profiles) -> Table:
    """Performance profile points (CSV): the fraction of runs above each threshold, with its CI."""
    csv_rows = [[label, profiles.metric, float(t), float(v), float(lo), float(hi)]
                for label, prof in profiles.profiles.items()
                for t, v, lo, hi in zip(profiles.taus, prof, profiles.low[label], profiles.high[label])]
    return Table(f"profile_{profiles.metric}", f"performance profile, {profiles.metric} score", [], [],
                 ["label", "metric", "tau", "fraction", "ci_low", "ci_high"], csv_rows)
