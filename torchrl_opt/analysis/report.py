"""The small per-run report every finished run writes into its directory: :func:`write_run_report`.

``<run_dir>/report/`` receives ``report.md`` (final / best / offline normalised score, per seed with
``mean ± std`` for a seed group, wall clock per phase, links to the figures) and PNG figures of the
score curves (``score.png``) and of the value-bias curves (``value_bias.png``, one panel per critic)
when the run logged them. Nothing here bootstraps or imports rliable: the report is meant to be
written in well under a second after a run. A missing or malformed curve only removes its figure
and adds a note; only a missing or unreadable ``summary.json`` raises (:class:`AnalysisError`).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from torchrl_opt.analysis.collect import (
    METRICS,
    OFFLINE_SCORE_CURVE,
    SCORE_CURVE,
    SUMMARY_FILE,
    VALUE_BIAS_PREFIX,
    AnalysisError,
    Series,
    critic_name,
    parse_curves,
    read_summary,
    summary_kind,
)

#: The report's sub-directory of a run directory.
REPORT_DIR = "report"
REPORT_FILE = "report.md"
#: The report's figures (each written only when its curves exist).
FIGURES = ("score.png", "value_bias.png")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """``(mean, population std)`` of ``values``, ``None`` when any is missing (as the group summary)."""
    if not values or any(v is None for v in values):
        return None
    arr = np.array(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std())


def _members(run_dir: Path, data: Mapping[str, Any], notes: list[str]) -> list[tuple[int, dict | None]]:
    """``(seed, summary or None)`` for every seed of a group, reading each member's ``summary.json``."""
    per_seed = data.get("per_seed") if isinstance(data.get("per_seed"), Mapping) else {}
    seeds = data.get("seeds") if isinstance(data.get("seeds"), list) else [int(s) for s in per_seed]
    out = []
    for seed in seeds:
        entry = per_seed.get(str(seed)) if isinstance(per_seed.get(str(seed)), Mapping) else {}
        candidates = [run_dir / f"seed{seed}" / SUMMARY_FILE]
        if entry.get("run_dir"):
            candidates.append(Path(str(entry["run_dir"])) / SUMMARY_FILE)
        summary = None
        for path in candidates:
            if path.is_file():
                try:
                    summary = read_summary(path)
                except AnalysisError as err:
                    notes.append(str(err))
                break
        if summary is None:
            notes.append(f"seed {seed}: no readable member summary ({candidates[0]}); "
                         "scores from the group summary, no curves")
            summary = {"seed": seed, **{k: entry.get(k) for k in METRICS.values()}}
        out.append((int(seed), summary))
    return out


def _curves(summary: Mapping[str, Any], seed: int, notes: list[str]) -> dict[str, Series]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curves = parse_curves(summary, f"seed {seed}")
    notes += [str(w.message) for w in caught]
    return curves


def _aligned(series: Sequence[Series]) -> tuple[np.ndarray, np.ndarray] | None:
    maps = [dict(s) for s in series if s]
    if len(maps) < 2:
        return None
    common = sorted(set.intersection(*(set(m) for m in maps)))
    if not common:
        return None
    return np.array(common), np.array([[m[s] for s in common] for m in maps])


def _plot_series(ax, per_seed: Sequence[tuple[int, Series]], color: str) -> None:
    """Each seed as a line; for several seeds, their mean and ``mean ± std`` band on the common steps."""
    many = len(per_seed) > 1
    for seed, series in per_seed:
        steps, values = zip(*series)
        ax.plot(steps, values, color=color, alpha=0.35 if many else 1.0, linewidth=1.0 if many else 1.8,
                marker=None if many else "o", markersize=3, label=None if many else f"seed {seed}")
    aligned = _aligned([s for _, s in per_seed]) if many else None
    if aligned is not None:
        steps, values = aligned
        mean, std = values.mean(axis=0), values.std(axis=0)
        ax.plot(steps, mean, color=color, linewidth=2.0, label=f"mean of {values.shape[0]} seeds")
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0, label="± std")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize="small")


def _score_figure(curves: Sequence[tuple[int, dict[str, Series]]], path: Path) -> bool:
    from torchrl_opt.analysis.plots import new_figure, save_figure

    panels = [(key, title) for key, title in ((SCORE_CURVE, "fine-tuning evaluations"),
                                              (OFFLINE_SCORE_CURVE, "offline pre-training evaluations"))
              if any(c.get(key) for _, c in curves)]
    if not panels:
        return False
    fig, axes = new_figure(1, len(panels), panel=(5.0, 3.4), layout=None)
    fig.subplots_adjust(left=0.7 / (5.0 * len(panels)), right=0.98, bottom=0.15, top=0.9, wspace=0.22)
    for ax, (key, title) in zip(axes, panels):
        _plot_series(ax, [(s, c[key]) for s, c in curves if c.get(key)], "tab:blue")
        ax.set_title(title)
        ax.set_xlabel("environment steps" if key == SCORE_CURVE else "offline step")
    axes[0].set_ylabel("normalised score")
    save_figure(fig, path.with_suffix(""), ("png",), dpi=90)
    return True


def _bias_figure(curves: Sequence[tuple[int, dict[str, Series]]], path: Path) -> list[str]:
    from torchrl_opt.analysis.plots import new_figure, save_figure

    keys = sorted({k for _, c in curves for k, v in c.items() if k.startswith(VALUE_BIAS_PREFIX) and v})
    if not keys:
        return []
    fig, axes = new_figure(1, len(keys), panel=(4.2, 3.2), layout=None)
    fig.subplots_adjust(left=0.7 / (4.2 * len(keys)), right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    for ax, key in zip(axes, keys):
        ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)
        _plot_series(ax, [(s, c[key]) for s, c in curves if c.get(key)], "tab:red")
        ax.set_title(critic_name(key))
        ax.set_xlabel("environment steps")
    axes[0].set_ylabel("Q(s, pi(s)) - G(s)")
    save_figure(fig, path.with_suffix(""), ("png",), dpi=90)
    return [critic_name(k) for k in keys]


def _timing_table(data: Mapping[str, Any]) -> list[str]:
    wall = data.get("wall_clock_s") if isinstance(data.get("wall_clock_s"), Mapping) else {}
    updates = data.get("updates") if isinstance(data.get("updates"), Mapping) else {}
    rates = data.get("updates_per_s") if isinstance(data.get("updates_per_s"), Mapping) else {}
    phases = list(dict.fromkeys([*wall, *updates]))
    if not phases:
        return ["(no timing recorded)"]
    lines = ["| phase | wall clock (s) | updates | updates / s |", "|---|---|---|---|"]
    for phase in phases:
        seconds, count, rate = _number(wall.get(phase)), _number(updates.get(phase)), _number(rates.get(phase))
        lines.append(f"| {phase} | {_fmt(seconds)} | {'-' if count is None else int(count)} | {_fmt(rate)} |")
    total = sum(v for v in (_number(x) for x in wall.values()) if v is not None)
    lines.append(f"| total | {_fmt(total)} | | |")
    return lines


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report/report.md`` (and its PNG figures) for a single run or a seed group.

    Returns the path of ``report.md``. Raises :class:`AnalysisError` only when ``<run_dir>/summary.json``
    is missing or unreadable; missing scores show as ``-`` and missing curves as a note.
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise AnalysisError(f"no {SUMMARY_FILE} in {run_dir}: write_run_report runs after the run has finished")
    data = read_summary(summary_path)
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES:  # a rerun must not keep a figure whose curve has gone
        (out / stale).unlink(missing_ok=True)
    notes: list[str] = []
    group = summary_kind(data) == "group"
    members = _members(run_dir, data, notes) if group else [(data.get("seed"), data)]

    method, task, dataset = data.get("method", "?"), data.get("task"), data.get("dataset")
    config = data.get("config") if isinstance(data.get("config"), Mapping) else {}
    task = task or (config.get("dataset") or {}).get("task", "?")
    dataset = dataset or (config.get("dataset") or {}).get("kind", "?")
    lines = [f"# {method} on {task}-{dataset}" + (f" ({data['env_id']})" if data.get("env_id") else ""), ""]
    lines.append(f"Run directory: `{run_dir}`" + (f"; finished {data['finished']}" if data.get("finished") else "")
                 + (f"; device {data['device']}" if data.get("device") else "") + ".")
    lines += ["", "## Normalised score (D4RL x100)", "",
              "| seed | final | best | offline |", "|---|---|---|---|"]
    columns = {name: [_number(s.get(key)) for _, s in members] for name, key in METRICS.items()}
    for i, (seed, _) in enumerate(members):
        lines.append(f"| {'-' if seed is None else seed} | " + " | ".join(_fmt(columns[m][i]) for m in METRICS) + " |")
    if group:
        cells = []
        for name in METRICS:
            ms = mean_std(columns[name])
            cells.append("-" if ms is None else f"{ms[0]:.1f} ± {ms[1]:.1f}")
        lines.append(f"| mean ± std ({len(members)} seeds) | " + " | ".join(cells) + " |")
    lines += ["", "## Wall clock", "", *_timing_table(data), ""]

    curves = [(seed, _curves(s, seed, notes)) for seed, s in members]
    lines += ["## Curves", ""]
    if _score_figure(curves, out / "score.png"):
        lines += ["![normalised score](score.png)", ""]
    else:
        notes.append(f"no {SCORE_CURVE} curve: no score figure")
    critics = _bias_figure(curves, out / "value_bias.png")
    if critics:
        lines += [f"Value bias, mean of Q(s, pi(s)) - G(s) over visited states ({', '.join(critics)}):", "",
                  "![value bias](value_bias.png)", ""]
    else:
        notes.append("no value-bias curve (eval/value_bias/<critic>): no value-bias figure")
    if group:
        notes.append("thin lines: seeds; thick line and band: mean ± std over seeds on their common steps")
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    return path
