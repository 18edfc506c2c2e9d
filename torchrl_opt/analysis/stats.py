"""Statistics over cells with rliable: mean, std, IQM, stratified-bootstrap CIs, P(X > Y), profiles.

Scores are arranged as rliable expects, a matrix ``[runs, tasks]`` (a cell is one task, so one
column; an aggregate has one column per (task, dataset)). With ``x_{n,m}`` the score of run ``n`` on
task ``m`` (``N`` runs, ``M`` tasks):

* mean: ``1/M sum_m 1/N sum_n x_{n,m}`` (``rliable.metrics.aggregate_mean``);
* std (cells only): the population standard deviation over seeds, ``sqrt(1/N sum_n (x_n - mean)^2)``,
  as the pipeline's group summary reports it;
* IQM: the mean of the middle 50% of all ``N*M`` scores, ``scipy.stats.trim_mean(x, 0.25)``
  (``rliable.metrics.aggregate_iqm``; with ``N*M < 4`` nothing is trimmed and it equals the mean);
* 95% CI: the percentile interval of the statistic over ``reps`` stratified bootstrap resamples, each
  task's runs resampled with replacement independently (``rliable.library.get_interval_estimates``);
* probability of improvement: ``P(X > Y) = 1/M sum_m 1/(N_x N_y) sum_{i,j} [1(x_{i,m} > y_{j,m}) +
  1/2 1(x_{i,m} = y_{j,m})]``, the Mann-Whitney U statistic per task over ``N_x N_y``, averaged over
  tasks (``rliable.metrics.probability_of_improvement``); its CI resamples X and Y independently;
* performance profile: ``F(tau) = 1/(N M) sum_{n,m} 1(x_{n,m} > tau)``, the fraction of runs above
  each threshold, with pointwise CIs (``rliable.library.create_performance_profile``).

Reproducibility: rliable 1.2 draws its bootstrap indices from NumPy's *global* generator
(``np.random.choice``) and ignores its ``random_state`` argument, so each estimate here seeds the
global generator with ``seed`` (and restores its state afterwards, see :func:`seeded_numpy`). Every
estimate is therefore reproducible on its own and independent of which other cells are analysed.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from rliable import library as rly
from rliable import metrics

from torchrl_opt.analysis.cells import Cell
from torchrl_opt.analysis.collect import (
    SCORE_CURVE,
    VALUE_BIAS_PREFIX,
    AnalysisError,
    Series,
    skip,
)

#: Bootstrap replications by default. rliable's own default is 50,000 for interval estimates;
#: 2,000 keeps a CLI run over dozens of cells to seconds. Pass ``reps`` (``--reps``) for final tables.
DEFAULT_REPS = 2000
#: Coverage of every confidence interval.
CONFIDENCE = 0.95
#: Thresholds of a performance profile by default.
PROFILE_POINTS = 101


@contextlib.contextmanager
def seeded_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator with ``seed`` for the block, then restore its previous state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval ``[low, high]``."""

    value: float
    low: float
    high: float


def mean_and_iqm(scores: np.ndarray) -> np.ndarray:
    """``[mean, IQM]`` of a ``[runs, tasks]`` score matrix (rliable's ``aggregate_mean``, ``aggregate_iqm``)."""
    return np.array([metrics.aggregate_mean(scores), metrics.aggregate_iqm(scores)])


def bootstrap(
    scores: np.ndarray | Sequence[np.ndarray],
    func: Callable[..., np.ndarray],
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[np.ndarray, np.ndarray]:
    """``(point, interval)`` of ``func`` by rliable's stratified bootstrap, reproducibly.

    ``scores`` is one ``[runs, tasks, ...]`` array (``StratifiedBootstrap``) or a list of them
    passed to ``func`` as separate arguments (``StratifiedIndependentBootstrap``). ``interval`` has
    shape ``[2, ...]``: lower and upper bounds. NumPy's global generator is seeded with ``seed``.
    """
    if reps < 1:
        raise AnalysisError(f"reps={reps}: the bootstrap needs at least one replication")
    if not 0 < confidence < 1:
        raise AnalysisError(f"confidence={confidence}: must lie strictly between 0 and 1")
    with seeded_numpy(seed):
        points, intervals = rly.get_interval_estimates(
            {"x": scores if isinstance(scores, np.ndarray) else list(scores)},
            func, reps=reps, confidence_interval_size=confidence)
    return np.asarray(points["x"], dtype=np.float64), np.asarray(intervals["x"], dtype=np.float64)


# ------------------------------------------------------------------ per cell
@dataclass(frozen=True)
class CellStats:
    """``metric`` over the seeds of one cell: ``mean`` and ``iqm`` with 95% CIs, population ``std``.

    ``scores`` are the seeds' values in ``seeds`` order; ``missing`` the summaries that lack the metric.
    """

    cell: Cell
    metric: str
    seeds: tuple[int, ...]
    scores: np.ndarray
    mean: Estimate
    iqm: Estimate
    std: float
    missing: tuple[Path, ...] = ()


def cell_statistics(
    cells: Iterable[Cell],
    metric: str = "final",
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[CellStats]:
    """:class:`CellStats` of every cell that has ``metric`` for at least one seed (others are skipped)."""
    out = []
    for cell in cells:
        values, seeds, lacking = cell.scores(metric)
        if lacking:
            skip(f"{cell.label} on {cell.env}: no {metric} score in "
                 f"{', '.join(str(r.path) for r in lacking)}; those seeds are left out of the {metric} table")
        if values.size == 0:
            continue
        point, interval = bootstrap(values[:, None], mean_and_iqm, reps=reps, seed=seed, confidence=confidence)
        out.append(CellStats(
            cell, metric, seeds, values,
            Estimate(point[0], interval[0, 0], interval[1, 0]),
            Estimate(point[1], interval[0, 1], interval[1, 1]),
            float(np.std(values)), tuple(r.path for r in lacking)))
    return out


# ------------------------------------------------------------------ over tasks
def labels_of(cells: Iterable[Cell]) -> list[str]:
    """The distinct cell labels, sorted."""
    return sorted({c.label for c in cells})


def score_matrix(cells: Sequence[Cell], metric: str) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """``(scores [runs, tasks], envs, notes)`` for cells of one label, one column per (task, dataset).

    rliable's stratified bootstrap needs the same number of runs on every task: when the cells have
    different numbers of seeds, each keeps its first ``min`` seeds (in seed order) and ``notes`` says so.
    Cells without any value of ``metric`` are left out (and named in ``notes``).
    """
    columns, envs, notes = [], [], []
    for cell in sorted(cells, key=lambda c: c.env):
        values, seeds, _ = cell.scores(metric)
        if values.size == 0:
            notes.append(f"{cell.env}: no {metric} score, left out")
            continue
        columns.append((values, seeds))
        envs.append(cell.env)
    if not columns:
        return np.zeros((0, 0)), (), tuple(notes)
    n = min(v.size for v, _ in columns)
    for env, (values, seeds) in zip(envs, columns):
        if values.size > n:
            notes.append(f"{env}: {values.size} seeds, the first {n} ({', '.join(map(str, seeds[:n]))}) used "
                         "so that every task has the same number of runs")
    return np.stack([v[:n] for v, _ in columns], axis=1), tuple(envs), tuple(notes)


def _cells_by_label(cells: Iterable[Cell]) -> dict[str, list[Cell]]:
    by_label: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_label[cell.label].append(cell)
    return dict(sorted(by_label.items()))


@dataclass(frozen=True)
class AggregateStats:
    """``metric`` of one label over its tasks: mean and IQM of the ``[runs, tasks]`` matrix with CIs."""

    label: str
    metric: str
    envs: tuple[str, ...]
    scores: np.ndarray
    mean: Estimate
    iqm: Estimate
    notes: tuple[str, ...] = ()

    @property
    def runs_per_task(self) -> int:
        return int(self.scores.shape[0])


def aggregate_statistics(
    cells: Iterable[Cell],
    metric: str = "final",
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[AggregateStats]:
    """:class:`AggregateStats` per label over all (task, dataset) pairs it was run on.

    When labels cover different sets of tasks, each aggregate's ``notes`` names the tasks it lacks:
    such aggregates are not directly comparable.
    """
    by_label = _cells_by_label(cells)
    all_envs = sorted({c.env for group in by_label.values() for c in group})
    out = []
    for label, group in by_label.items():
        scores, envs, notes = score_matrix(group, metric)
        if scores.size == 0:
            continue
        lacking = [e for e in all_envs if e not in envs]
        if lacking:
            notes = (*notes, f"not run on {', '.join(lacking)}: compare with care")
        point, interval = bootstrap(scores, mean_and_iqm, reps=reps, seed=seed, confidence=confidence)
        out.append(AggregateStats(
            label, metric, envs, scores,
            Estimate(point[0], interval[0, 0], interval[1, 0]),
            Estimate(point[1], interval[0, 1], interval[1, 1]), notes))
    return out


# ------------------------------------------------------------------ probability of improvement
def probability_of_improvement(
    x: np.ndarray,
    y: np.ndarray,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """``P(X > Y)`` of score matrices ``x [N_x, M]`` and ``y [N_y, M]`` (same tasks, same column order).

    ``1/M sum_m U_m / (N_x N_y)`` with ``U_m`` the Mann-Whitney statistic of task ``m``
    (``rliable.metrics.probability_of_improvement``), CI by independent stratified bootstrap of X and Y.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise AnalysisError(f"probability_of_improvement needs [runs, tasks] matrices on the same tasks, "
                            f"got shapes {x.shape} and {y.shape}")

    def poi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(a, b)])

    point, interval = bootstrap([x, y], poi, reps=reps, seed=seed, confidence=confidence)
    return Estimate(point[0], interval[0, 0], interval[1, 0])


@dataclass(frozen=True)
class Improvement:
    """``P(x > y)`` on ``envs`` (all tasks both labels ran, or one of them) for ``metric``."""

    x: str
    y: str
    metric: str
    envs: tuple[str, ...]
    probability: Estimate
    runs_x: int
    runs_y: int
    notes: tuple[str, ...] = ()


def resolve_label(name: str, labels: Sequence[str]) -> str:
    """The cell label ``name`` refers to: the label itself, or a method with a single label.

    Raises :class:`AnalysisError` naming the candidates when ``name`` is unknown or ambiguous.
    """
    if name in labels:
        return name
    matches = [lab for lab in labels if lab.split(" [", 1)[0] == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise AnalysisError(f"no method or label {name!r} among the runs; labels are: {', '.join(labels)}")
    raise AnalysisError(f"{name!r} has several configurations; pass one of these labels (quoted): "
                        f"{'; '.join(matches)}")


def improvements(
    cells: Iterable[Cell],
    pairs: Sequence[tuple[str, str]] | None = None,
    metric: str = "final",
    *,
    per_task: bool = True,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[Improvement]:
    """``P(X > Y)`` for each ``(X, Y)`` in ``pairs`` (labels or method names; all label pairs if ``None``).

    The first row of a pair covers every (task, dataset) both ran; with ``per_task`` and more than one
    common task, one row per task follows. A pair without a common task is skipped with a warning.
    """
    by_label = _cells_by_label(cells)
    labels = list(by_label)
    if pairs is None:
        pairs = list(itertools.combinations(labels, 2))
    out = []
    for x_name, y_name in pairs:
        x_label, y_label = resolve_label(x_name, labels), resolve_label(y_name, labels)
        if x_label == y_label:
            raise AnalysisError(f"cannot compare {x_label!r} with itself")
        x_cells = {c.env: c for c in by_label[x_label]}
        y_cells = {c.env: c for c in by_label[y_label]}
        common = sorted(e for e in set(x_cells) & set(y_cells)
                        if x_cells[e].scores(metric)[0].size and y_cells[e].scores(metric)[0].size)
        if not common:
            skip(f"P({x_label} > {y_label}): no task where both have a {metric} score; skipped")
            continue
        groups = [tuple(common)] + ([(e,) for e in common] if per_task and len(common) > 1 else [])
        for envs in groups:
            x, _, x_notes = score_matrix([x_cells[e] for e in envs], metric)
            y, _, y_notes = score_matrix([y_cells[e] for e in envs], metric)
            estimate = probability_of_improvement(x, y, reps=reps, seed=seed, confidence=confidence)
            notes = tuple(f"{x_label}: {n}" for n in x_notes) + tuple(f"{y_label}: {n}" for n in y_notes)
            out.append(Improvement(x_label, y_label, metric, envs, estimate, x.shape[0], y.shape[0], notes))
    return out


# ------------------------------------------------------------------ performance profiles
@dataclass(frozen=True)
class Profiles:
    """Performance profiles ``F(tau)`` per label at thresholds ``taus``, with pointwise CIs."""

    metric: str
    taus: np.ndarray
    profiles: Mapping[str, np.ndarray]
    low: Mapping[str, np.ndarray]
    high: Mapping[str, np.ndarray]


def performance_profiles(
    cells: Iterable[Cell],
    metric: str = "final",
    *,
    taus: Sequence[float] | np.ndarray | None = None,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Profiles:
    """Score distributions ``F(tau) = fraction of runs with score > tau`` per label (rliable).

    ``taus`` defaults to :data:`PROFILE_POINTS` evenly spaced thresholds from ``min(0, lowest score)``
    to the highest score.
    """
    matrices = {}
    for label, group in _cells_by_label(cells).items():
        scores, _, _ = score_matrix(group, metric)
        if scores.size:
            matrices[label] = scores
    if not matrices:
        raise AnalysisError(f"no {metric} score in any cell: nothing to profile")
    if taus is None:
        values = np.concatenate([m.ravel() for m in matrices.values()])
        taus = np.linspace(min(0.0, values.min()), values.max(), PROFILE_POINTS)
    taus = np.asarray(taus, dtype=np.float64)
    with seeded_numpy(seed):
        profiles, cis = rly.create_performance_profile(
            matrices, taus, reps=reps, confidence_interval_size=confidence)
    return Profiles(metric, taus, {k: np.asarray(v) for k, v in profiles.items()},
                    {k: np.asarray(v[0]) for k, v in cis.items()}, {k: np.asarray(v[1]) for k, v in cis.items()})


# ------------------------------------------------------------------ curves
@dataclass(frozen=True)
class Curve:
    """The mean of series ``key`` over a cell's seeds at each common step, with a 95% CI band."""

    label: str
    task: str
    dataset: str
    key: str
    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: tuple[int, ...]
    notes: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return f"{self.task}-{self.dataset}"


def align_series(series: Sequence[Series]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(steps [T], values [S, T], notes)``: the series on the steps they all share, in step order.

    A step logged twice in one series keeps its last value (a resumed run re-logging it); steps not
    shared by every series are dropped. ``notes`` says when either happened.
    """
    notes = []
    maps = []
    for points in series:
        mapping = dict(points)
        if len(mapping) < len(points):
            notes.append(f"{len(points) - len(mapping)} repeated step(s) in a series: last value kept")
        maps.append(mapping)
    common = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    dropped = max((len(m) - len(common) for m in maps), default=0)
    if dropped:
        notes.append(f"seeds evaluated at different steps: aligned on the {len(common)} common step(s), "
                     f"up to {dropped} dropped per seed")
    values = np.array([[m[s] for s in common] for m in maps], dtype=np.float64).reshape(len(maps), len(common))
    return np.array(common, dtype=np.float64), values, tuple(notes)


def _mean_over_runs(x: np.ndarray) -> np.ndarray:
    return np.mean(x, axis=0).ravel()


def learning_curve(
    cell: Cell,
    key: str = SCORE_CURVE,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> Curve | None:
    """The :class:`Curve` of series ``key`` for ``cell`` (``None`` when no seed logged it).

    At each common step: the mean over seeds and the percentile CI of that mean over stratified
    bootstrap resamples of the seeds (pointwise, rliable's ``get_interval_estimates`` on ``[S, 1, T]``).
    """
    runs = [r for r in cell.runs if r.curves.get(key)]
    if not runs:
        return None
    notes = []
    if len(runs) < len(cell.runs):
        notes.append(f"{len(cell.runs) - len(runs)} seed(s) without {key}")
    steps, values, align_notes = align_series([r.curves[key] for r in runs])
    notes.extend(align_notes)
    if steps.size == 0:
        skip(f"{cell.label} on {cell.env}: the seeds share no evaluation step of {key}; no curve")
        return None
    point, interval = bootstrap(values[:, None, :], _mean_over_runs, reps=reps, seed=seed, confidence=confidence)
    return Curve(cell.label, cell.task, cell.dataset, key, steps, point, interval[0], interval[1],
                 tuple(r.seed for r in runs), tuple(notes))


def learning_curves(
    cells: Iterable[Cell],
    key: str = SCORE_CURVE,
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[Curve]:
    """:func:`learning_curve` of every cell that logged ``key``."""
    curves = (learning_curve(c, key, reps=reps, seed=seed, confidence=confidence) for c in cells)
    return [c for c in curves if c is not None]


def value_bias_keys(cells: Iterable[Cell]) -> list[str]:
    """The value-bias series the runs logged, ``eval/value_bias/<critic>``, discovered by prefix."""
    return sorted({k for c in cells for r in c.runs for k in r.curves if k.startswith(VALUE_BIAS_PREFIX)})
