"""Figures: learning and value-bias curves with shaded CIs, aggregate intervals, profiles, P(X > Y).

Figures are :class:`matplotlib.figure.Figure` objects built without :mod:`matplotlib.pyplot`, so
nothing here touches the global backend or keeps figures alive; PNG files are rendered by the
non-interactive Agg canvas and SVG by matplotlib's SVG backend (:func:`save_figure`). rliable's
``plot_utils`` draws the performance profiles and the probability of improvement into axes made here.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from torchrl_opt.analysis.collect import critic_name

if TYPE_CHECKING:  # stats imports rliable (and arch); the per-run report only needs the helpers here
    from torchrl_opt.analysis.stats import AggregateStats, Curve, Improvement, Profiles

#: File formats the analysis writes for every figure.
FIGURE_FORMATS: tuple[str, ...] = ("png", "svg")
#: Separator of rliable's ``"X<sep>Y"`` pair names; a tab never occurs in a label.
_PAIR_SEPARATOR = "\t"


def new_figure(nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (5.0, 3.4),
               layout: str | None = "constrained") -> tuple[Figure, list]:
    """A Figure on an Agg canvas with ``nrows x ncols`` panels of size ``panel`` (inches); axes flattened.

    ``layout="constrained"`` fits long labels; ``None`` keeps matplotlib's fixed margins (faster).
    """
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = FIGURE_FORMATS, *, dpi: int = 110) -> list[Path]:
    """Write ``fig`` to ``<stem>.<format>`` for each format; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    engine = fig.get_layout_engine()
    if engine is not None and len(formats) > 1:  # lay out once, not once per format
        engine.execute(fig)
        fig.set_layout_engine("none")
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi)
        paths.append(path)
    return paths


def label_colors(labels: Sequence[str]) -> dict[str, tuple]:
    """One colour per label (matplotlib's ``tab10``, then ``tab20``), the same in every figure."""
    from matplotlib import colormaps

    ordered = sorted(set(labels))
    cmap = colormaps["tab10" if len(ordered) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(ordered)}


def _draw_curves(ax, curves: Sequence[Curve], colors: Mapping[str, tuple]) -> None:
    for curve in curves:
        color = colors[curve.label]
        ax.plot(curve.steps, curve.mean, color=color, linewidth=1.8, marker="o", markersize=2.5,
                label=f"{curve.label} (n={len(curve.seeds)})")
        ax.fill_between(curve.steps, curve.low, curve.high, color=color, alpha=0.2, linewidth=0)
    ax.grid(True, alpha=0.25)
    ax.set_xlabel("environment steps")


def plot_learning_curves(curves: Sequence[Curve], *, title: str = "", ylabel: str = "normalised score",
                         colors: Mapping[str, tuple] | None = None) -> Figure:
    """One panel: each curve's mean over seeds and its 95% CI band (one line per label)."""
    colors = colors or label_colors([c.label for c in curves])
    fig, (ax,) = new_figure(panel=(6.4, 4.0))
    _draw_curves(ax, curves, colors)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "learning curves (mean, 95% CI over seeds)")
    if curves:
        ax.legend(fontsize="small")
    return fig


def plot_value_bias(curves: Sequence[Curve], *, title: str = "",
                    colors: Mapping[str, tuple] | None = None) -> Figure:
    """One panel per critic: mean of ``Q(s, pi(s)) - G(s)`` over seeds with its 95% CI band, zero marked."""
    colors = colors or label_colors([c.label for c in curves])
    by_key: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_key[curve.key].append(curve)
    keys = sorted(by_key)
    fig, axes = new_figure(1, max(len(keys), 1), panel=(4.6, 3.6))
    for ax, key in zip(axes, keys):
        ax.axhline(0.0, color="black", linewidth=0.8, alpha=0.6)
        _draw_curves(ax, by_key[key], colors)
        ax.set_title(critic_name(key))
    axes[0].set_ylabel("value bias  Q(s, pi(s)) - G(s)")
    if keys:
        axes[-1].legend(fontsize="small")
    fig.suptitle(title or "value bias (mean, 95% CI over seeds)")
    return fig


def plot_aggregates(aggregates: Sequence[AggregateStats], *, title: str = "") -> Figure:
    """Mean and IQM of each label with their 95% CIs as horizontal bars (rliable's interval-estimate style)."""
    labels = [a.label for a in aggregates]
    colors = label_colors(labels)
    fig, axes = new_figure(1, 2, panel=(4.2, 0.6 + 0.45 * max(len(labels), 1)))
    for ax, stat in zip(axes, ("mean", "iqm")):
        for i, agg in enumerate(aggregates):
            est = getattr(agg, stat)
            ax.barh(i, est.high - est.low, left=est.low, height=0.6, color=colors[agg.label], alpha=0.75)
            ax.vlines(est.value, i - 0.3, i + 0.3, color="black", alpha=0.7)
        ax.set_yticks(range(len(labels)), labels if stat == "mean" else [""] * len(labels))
        ax.set_title("Mean" if stat == "mean" else "IQM")
        ax.grid(True, axis="x", alpha=0.25)
        ax.set_xlabel("normalised score")
    fig.suptitle(title or "aggregate over tasks (95% stratified bootstrap CI)")
    return fig


def plot_profiles(profiles: Profiles, *, title: str = "") -> Figure:
    """Performance profiles with pointwise CIs, drawn by ``rliable.plot_utils.plot_performance_profiles``."""
    from rliable import plot_utils

    fig, (ax,) = new_figure(panel=(6.4, 4.0))
    colors = label_colors(list(profiles.profiles))
    cis = {k: (profiles.low[k], profiles.high[k]) for k in profiles.profiles}
    plot_utils.plot_performance_profiles(
        dict(profiles.profiles), profiles.taus, performance_profile_cis=cis, ax=ax, colors=colors,
        xlabel=r"normalised score ($\tau$)", ylabel=r"fraction of runs with score $> \tau$",
        labelsize="medium", ticklabelsize="medium", legend=True, legendsize="small")
    ax.set_title(title or f"performance profile ({profiles.metric} score)")
    return fig


def plot_improvements(improvements: Sequence[Improvement], *, title: str = "") -> Figure:
    """``P(X > Y)`` with 95% CIs for each pair's all-task row, by ``rliable.plot_utils.plot_probability_of_improvement``."""
    from rliable import plot_utils

    rows: dict[str, Improvement] = {}
    for imp in improvements:  # the first row of a pair covers every common task
        rows.setdefault(f"{imp.x}{_PAIR_SEPARATOR}{imp.y}", imp)
    fig, (ax,) = new_figure(panel=(6.0, 0.9 + 0.5 * max(len(rows), 1)))
    plot_utils.plot_probability_of_improvement(
        {k: v.probability.value for k, v in rows.items()},
        {k: (v.probability.low, v.probability.high) for k, v in rows.items()},
        pair_separator=_PAIR_SEPARATOR, ax=ax, ticklabelsize="medium", labelsize="medium",
        xticks=[0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlim(0.0, 1.0)
    ax.axvline(0.5, color="black", linewidth=0.8, alpha=0.5)
    fig.suptitle(title or "probability of improvement P(X > Y)")
    return fig
