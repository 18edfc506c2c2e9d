"""Aggregate run directories into tables and figures; write each run's own small report.

``python -m torchrl_opt.analysis RUN_DIR... --out DIR`` (see ``--help`` and ``docs/analysis.md``)::

    from torchrl_opt.analysis import aggregate, collect_runs, write_analysis, write_run_report

    records = collect_runs(["multirun/"])          # one RunRecord per seed (summary.json files)
    analysis = aggregate(records, ("final", "best"), reps=2000, seed=0)
    write_analysis(analysis, "analysis/")          # Markdown/CSV tables, PNG/SVG figures, index.md
    write_run_report("runs/hopper-random/opt")     # <run_dir>/report/report.md (+ PNG figures)

Statistics come from rliable (IQM, stratified bootstrap CIs, probability of improvement,
performance profiles) and figures from matplotlib without pyplot (Agg canvas). The names that need
rliable (:mod:`~torchrl_opt.analysis.stats`, :mod:`~torchrl_opt.analysis.analyze`,
:mod:`~torchrl_opt.analysis.tables`, :mod:`~torchrl_opt.analysis.plots`) are exported lazily, so
that ``write_run_report`` at the end of a run imports neither rliable nor its dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

from torchrl_opt.analysis.cells import (
    ABSENT,
    SEED_LIKE_KEYS,
    Cell,
    Difference,
    differences,
    flatten_config,
    group_cells,
    is_seed_like,
)
from torchrl_opt.analysis.collect import (
    METRICS,
    SCORE_CURVE,
    VALUE_BIAS_PREFIX,
    AnalysisError,
    GroupRecord,
    RunRecord,
    SkippedRunWarning,
    collect_runs,
    critic_name,
    find_summaries,
    read_summary,
)
from torchrl_opt.analysis.report import REPORT_DIR, write_run_report
from torchrl_opt.analysis.synthetic import synthetic_summary, write_synthetic_runs

#: Names served lazily (their modules import rliable or matplotlib).
_LAZY = {
    **{name: "torchrl_opt.analysis.stats" for name in (
        "DEFAULT_REPS", "CONFIDENCE", "Estimate", "CellStats", "AggregateStats", "Improvement", "Profiles",
        "Curve", "bootstrap", "mean_and_iqm", "seeded_numpy", "cell_statistics", "aggregate_statistics",
        "score_matrix", "probability_of_improvement", "improvements", "performance_profiles",
        "learning_curve", "learning_curves", "align_series", "value_bias_keys", "resolve_label")},
    **{name: "torchrl_opt.analysis.analyze" for name in (
        "Analysis", "MetricAnalysis", "DEFAULT_METRICS", "aggregate", "analyze_runs", "write_analysis")},
    **{name: "torchrl_opt.analysis.tables" for name in ("Table",)},
    **{name: "torchrl_opt.analysis.plots" for name in ("save_figure", "FIGURE_FORMATS")},
    "main": "torchrl_opt.analysis.cli",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ABSENT",
    "AggregateStats",
    "Analysis",
    "AnalysisError",
    "CONFIDENCE",
    "Cell",
    "CellStats",
    "Curve",
    "DEFAULT_METRICS",
    "DEFAULT_REPS",
    "Difference",
    "Estimate",
    "FIGURE_FORMATS",
    "GroupRecord",
    "Improvement",
    "METRICS",
    "MetricAnalysis",
    "Profiles",
    "REPORT_DIR",
    "RunRecord",
    "SCORE_CURVE",
    "SEED_LIKE_KEYS",
    "SkippedRunWarning",
    "Table",
    "VALUE_BIAS_PREFIX",
    "aggregate",
    "aggregate_statistics",
    "align_series",
    "analyze_runs",
    "bootstrap",
    "cell_statistics",
    "collect_runs",
    "critic_name",
    "differences",
    "find_summaries",
    "flatten_config",
    "group_cells",
    "improvements",
    "is_seed_like",
    "learning_curve",
    "learning_curves",
    "main",
    "mean_and_iqm",
    "performance_profiles",
    "probability_of_improvement",
    "read_summary",
    "resolve_label",
    "save_figure",
    "score_matrix",
    "seeded_numpy",
    "synthetic_summary",
    "value_bias_keys",
    "write_analysis",
    "write_run_report",
    "write_synthetic_runs",
]
