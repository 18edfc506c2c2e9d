"""From run records to tables and figures: :func:`aggregate`, :func:`write_analysis`, :func:`analyze_runs`.

One analysis covers every cell found (see :mod:`torchrl_opt.analysis.cells`) and, for each requested
metric (``final``, ``best``, ``offline``), computes per-cell and over-task statistics, the
probability of improvement between labels and performance profiles; learning curves and value-bias
curves (one panel per critic, critics discovered by prefix) are computed once per cell.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from torchrl_opt.analysis.cells import SEED_LIKE_KEYS, Cell, Difference, differences, group_cells
from torchrl_opt.analysis.collect import METRICS, SCORE_CURVE, AnalysisError, RunRecord, collect_runs
from torchrl_opt.analysis.stats import (
    CONFIDENCE,
    DEFAULT_REPS,
    AggregateStats,
    CellStats,
    Curve,
    Improvement,
    Profiles,
    aggregate_statistics,
    cell_statistics,
    improvements,
    labels_of,
    learning_curves,
    performance_profiles,
    resolve_label,
    value_bias_keys,
)
from torchrl_opt.analysis.tables import (
    Table,
    aggregate_table,
    curves_table,
    differences_table,
    improvement_table,
    per_task_table,
    profile_table,
)

#: Metrics analysed by default.
DEFAULT_METRICS: tuple[str, ...] = ("final", "best")


@dataclass
class MetricAnalysis:
    """Everything computed for one metric: per-cell and aggregate statistics, P(X > Y), profiles, tables."""

    metric: str
    cells: list[CellStats]
    aggregates: list[AggregateStats]
    improvements: list[Improvement]
    profiles: Profiles | None
    tables: list[Table]


@dataclass
class Analysis:
    """The result of :func:`aggregate`: cells, their config differences, curves and per-metric results."""

    cells: list[Cell]
    differences: list[Difference]
    differences_table: Table
    metrics: dict[str, MetricAnalysis]
    curves: list[Curve] = field(default_factory=list)
    bias_curves: list[Curve] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return labels_of(self.cells)


def compare_pairs(compare: Sequence[Sequence[str]] | None, labels: Sequence[str]) -> list[tuple[str, str]] | None:
    """Pairs ``(X, Y)`` from ``--compare`` groups: ``[A, B, C]`` gives ``(A, B), (A, C)``; ``None`` means all."""
    if compare is None:
        return None
    pairs = []
    for group in compare:
        if len(group) < 2:
            raise AnalysisError(f"--compare {' '.join(group)}: name a method and at least one to compare it with")
        first = resolve_label(group[0], labels)
        pairs += [(first, resolve_label(other, labels)) for other in group[1:]]
    return pairs


def aggregate(
    records: Iterable[RunRecord],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    compare: Sequence[Sequence[str]] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    ignore: Sequence[str] = SEED_LIKE_KEYS,
    curves: bool = True,
) -> Analysis:
    """Group ``records`` into cells and compute every table and curve of the analysis.

    ``compare``: groups ``[X, Y, ...]`` of labels or method names; ``P(X > Y)`` is computed for each
    ``Y`` listed after ``X``, on all common tasks and on each task. With ``None``, every pair of
    labels is compared on all common tasks only. ``reps`` and ``seed`` drive every bootstrap.
    """
    for metric in metrics:
        if metric not in METRICS:
            raise AnalysisError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    cells = group_cells(records, ignore)
    diffs = differences(cells)
    labels = labels_of(cells)
    pairs = compare_pairs(compare, labels)
    kwargs = {"reps": reps, "seed": seed, "confidence": confidence}
    diff_table = differences_table(diffs)
    results = {}
    for metric in metrics:
        stats = cell_statistics(cells, metric, **kwargs)
        aggs = aggregate_statistics(cells, metric, **kwargs)
        imps = improvements(cells, pairs, metric, per_task=pairs is not None, **kwargs) if len(labels) > 1 else []
        has_scores = any(s.scores.size for s in stats)
        profiles = performance_profiles(cells, metric, **kwargs) if has_scores else None
        tables = [per_task_table(stats, metric), aggregate_table(aggs, metric)]
        if imps:
            tables.append(improvement_table(imps, metric))
        if profiles is not None:
            tables.append(profile_table(profiles))
        results[metric] = MetricAnalysis(metric, stats, aggs, imps, profiles, tables)
    analysis = Analysis(cells, diffs, diff_table, results)
    if curves:
        analysis.curves = learning_curves(cells, SCORE_CURVE, **kwargs)
        analysis.bias_curves = [c for key in value_bias_keys(cells) for c in learning_curves(cells, key, **kwargs)]
    return analysis


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_analysis(analysis: Analysis, out_dir: str | Path, *, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write the analysis' tables (``.md``, ``.csv``), figures (``formats``) and ``index.md`` into ``out_dir``.

    Returns every written path, ``index.md`` last. ``index.md`` gathers all tables and figure links.
    """
    from torchrl_opt.analysis import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index = ["# Run analysis", "",
             f"{len(analysis.cells)} cell(s), {sum(len(c.runs) for c in analysis.cells)} seed run(s), "
             f"labels: {', '.join(analysis.labels)}.", ""]
    diff_table = analysis.differences_table
    written += diff_table.write(out)
    colors = plots.label_colors(analysis.labels)
    for metric, result in analysis.metrics.items():
        for table in result.tables:
            markdown = table.to_markdown("#")
            if table.name.startswith("per_task_"):
                markdown += "\n" + diff_table.to_markdown("##")
            written += table.write(out, markdown=markdown)
            if table.md_rows:
                index.append(table.to_markdown("##"))
        figures = []
        if result.aggregates:
            figures.append((f"aggregate_{metric}", plots.plot_aggregates(
                result.aggregates, title=f"{metric} score over tasks (95% stratified bootstrap CI)")))
        if result.profiles is not None:
            figures.append((f"profile_{metric}", plots.plot_profiles(result.profiles)))
        if result.improvements:
            figures.append((f"improvement_{metric}", plots.plot_improvements(
                result.improvements, title=f"P(X > Y), {metric} score")))
        for name, fig in figures:
            paths = plots.save_figure(fig, out / name, formats)
            written += paths
            index.append(f"![{name}]({paths[0].name})\n")
    index.append(diff_table.to_markdown("##"))
    by_env: dict[str, list[Curve]] = defaultdict(list)
    for curve in analysis.curves:
        by_env[curve.env].append(curve)
    for env, curves in sorted(by_env.items()):
        fig = plots.plot_learning_curves(curves, title=f"{env}: normalised score (mean, 95% CI over seeds)",
                                         colors=colors)
        paths = plots.save_figure(fig, out / f"curves_{_safe(env)}", formats)
        written += paths
        index.append(f"![{env} learning curves]({paths[0].name})\n")
    bias_by_env: dict[str, list[Curve]] = defaultdict(list)
    for curve in analysis.bias_curves:
        bias_by_env[curve.env].append(curve)
    for env, curves in sorted(bias_by_env.items()):
        fig = plots.plot_value_bias(curves, title=f"{env}: value bias (mean, 95% CI over seeds)", colors=colors)
        paths = plots.save_figure(fig, out / f"value_bias_{_safe(env)}", formats)
        written += paths
        index.append(f"![{env} value bias]({paths[0].name})\n")
    all_curves = analysis.curves + analysis.bias_curves
    if all_curves:
        table = curves_table(all_curves)
        written += table.write(out)
        if table.notes:
            index += ["## Curve notes", "", *(f"- {n}" for n in table.notes), ""]
    index_path = out / "index.md"
    index_path.write_text("\n".join(index))
    written.append(index_path)
    return written


def analyze_runs(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    compare: Sequence[Sequence[str]] | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """:func:`collect_runs` + :func:`aggregate` + :func:`write_analysis`: what the CLI does. Returns the paths."""
    analysis = aggregate(collect_runs(paths), metrics, compare=compare, reps=reps, seed=seed)
    return write_analysis(analysis, out_dir, formats=formats)


__all__ = [
    "Analysis",
    "DEFAULT_METRICS",
    "MetricAnalysis",
    "aggregate",
    "analyze_runs",
    "compare_pairs",
    "write_analysis",
]
