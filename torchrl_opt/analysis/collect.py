"""Find and read run directories: every ``summary.json`` under the given paths.

A run directory holds one of two kinds of summary (the schema is in ``docs/analysis.md``):

* a **seed-level** summary (``"kind": "run"``), one per seed: a single run's ``<run_dir>/summary.json``
  or a seed group member's ``<group_dir>/seed<s>/summary.json``. These are the data.
* a **group-level** summary (``"kind": "group"``) at ``<group_dir>/summary.json``: it only says which
  seed runs belong together (its means are never counted as runs). :func:`collect_runs` checks that
  every seed it lists was found and warns about the missing ones.

Old summaries may lack ``kind``, ``task``, ``dataset``, ``method``, ``seed`` or ``curves``: the first
four are read from ``config`` when it has them (``config.dataset.task``, ``config.dataset.kind``,
``config.method``, ``config.seed``), ``curves`` falls back to ``scores``; a summary that still lacks
one of them is skipped with a :class:`SkippedRunWarning` naming the file and the missing key. A file
that is not a readable JSON object raises :class:`AnalysisError`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

SUMMARY_FILE = "summary.json"

#: ``metric name -> summary key`` of the scalar scores that tables and statistics accept.
METRICS: dict[str, str] = {
    "final": "final_normalized_score",
    "best": "best_normalized_score",
    "offline": "offline_normalized_score",
}

#: The learning-curve series (D4RL normalised score x100 at each fine-tuning evaluation).
SCORE_CURVE = "eval/normalized_score"
#: The offline pre-training evaluations.
OFFLINE_SCORE_CURVE = "offline_eval/normalized_score"
#: Prefix of the value-bias series; the critic name follows it (``eval/value_bias/q_on``).
VALUE_BIAS_PREFIX = "eval/value_bias/"

Series = tuple[tuple[float, float], ...]


def critic_name(key: str) -> str:
    """The critic of a value-bias series: ``q_on`` for ``eval/value_bias/q_on``."""
    return key[len(VALUE_BIAS_PREFIX):] if key.startswith(VALUE_BIAS_PREFIX) else key


class AnalysisError(ValueError):
    """A run directory cannot be analysed as asked (no run, unreadable summary, duplicated seed, ...)."""


class SkippedRunWarning(UserWarning):
    """A summary (or part of one) was left out of the analysis; the message says which and why."""


def skip(message: str) -> None:
    """Emit one :class:`SkippedRunWarning` (the CLI prints them as ``skipped: ...`` lines)."""
    warnings.warn(message, SkippedRunWarning, stacklevel=3)


@dataclass(frozen=True)
class RunRecord:
    """One seed of one run, read from its seed-level ``summary.json``.

    ``scores`` maps a metric name of :data:`METRICS` to its value (``None`` when the run has none);
    ``curves`` maps a series name (``eval/normalized_score``, ``eval/value_bias/<critic>``, ...) to its
    ``((step, value), ...)`` points in logging order. ``group_dir`` is the seed group's directory
    for a group member, ``None`` for a single run.
    """

    path: Path
    method: str
    task: str
    dataset: str
    seed: int
    config: Mapping[str, Any]
    scores: Mapping[str, float | None]
    curves: Mapping[str, Series] = field(default_factory=dict)
    env_id: str | None = None
    wall_clock_s: Mapping[str, float] = field(default_factory=dict)
    group_dir: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def env(self) -> str:
        """``<task>-<dataset>``, e.g. ``hopper-random``: the unit a per-task table row describes."""
        return f"{self.task}-{self.dataset}"

    def score(self, metric: str) -> float | None:
        """The run's value of ``metric`` (``final``, ``best`` or ``offline``), ``None`` when absent."""
        if metric not in METRICS:
            raise AnalysisError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        return self.scores.get(metric)


@dataclass(frozen=True)
class GroupRecord:
    """A seed group's ``summary.json``: which seeds belong together (never data in itself)."""

    path: Path
    method: str | None
    task: str | None
    dataset: str | None
    seeds: tuple[int, ...]
    member_dirs: Mapping[int, Path]

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def read_summary(path: str | Path) -> dict[str, Any]:
    """Load one ``summary.json``; raise :class:`AnalysisError` if it is not a readable JSON object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AnalysisError(f"unreadable summary {path}: {err}") from err
    if not isinstance(data, dict):
        raise AnalysisError(f"unreadable summary {path}: expected a JSON object, got {type(data).__name__}")
    return data


def summary_kind(data: Mapping[str, Any]) -> str:
    """``"run"`` or ``"group"``: the ``kind`` entry, or ``"group"`` for an old summary with ``per_seed``."""
    kind = data.get("kind")
    if kind is None:
        return "group" if "per_seed" in data else "run"
    return str(kind)


def find_summaries(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``summary.json`` under ``paths`` (searched recursively; a ``.json`` file is taken as is).

    Paths are resolved, so a run reached through two of the given paths is listed once. Raises
    :class:`AnalysisError` for a path that does not exist.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise AnalysisError(f"{path} does not exist; pass run directories or summary.json files")
        if path.is_file():
            found[path.resolve()] = None
            continue
        for summary in sorted(path.rglob(SUMMARY_FILE)):
            if summary.is_file():
                found[summary.resolve()] = None
    return list(found)


def _from_config(data: Mapping[str, Any], key: str, *config_path: str) -> Any:
    if data.get(key) is not None:
        return data[key]
    node: Any = data.get("config")
    for part in config_path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def parse_series(points: Any) -> Series | None:
    """``[[step, value], ...]`` as a tuple of float pairs; ``None`` if it is not such a list."""
    if not isinstance(points, (list, tuple)):
        return None
    out = []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            return None
        step, value = _number(point[0]), _number(point[1])
        if step is None or value is None:
            return None
        out.append((step, value))
    return tuple(out)


def parse_curves(data: Mapping[str, Any], source: Path | str = "summary") -> dict[str, Series]:
    """The summary's ``curves`` (falling back to ``scores`` for the score curve).

    A malformed series is left out with a :class:`SkippedRunWarning`; nothing here raises.
    """
    curves: dict[str, Series] = {}
    raw = data.get("curves")
    if isinstance(raw, Mapping):
        for name, points in raw.items():
            series = parse_series(points)
            if series is None:
                skip(f"{source}: curve {name!r} is not a list of [step, value] pairs; left out")
            else:
                curves[str(name)] = series
    elif raw is not None:
        skip(f"{source}: 'curves' is not a mapping; left out")
    if SCORE_CURVE not in curves and data.get("scores") is not None:
        series = parse_series(data["scores"])
        if series is None:
            skip(f"{source}: 'scores' is not a list of [step, value] pairs; left out")
        else:
            curves[SCORE_CURVE] = series
    return curves


def run_record(path: Path, data: Mapping[str, Any]) -> RunRecord | None:
    """A :class:`RunRecord` from a seed-level summary, or ``None`` (with a warning) if a key is missing."""
    fields = {
        "method": _from_config(data, "method", "method"),
        "task": _from_config(data, "task", "dataset", "task"),
        "dataset": _from_config(data, "dataset", "dataset", "kind"),
        "seed": _from_config(data, "seed", "seed"),
    }
    missing = [k for k, v in fields.items() if v is None]
    if missing:
        skip(f"{path}: no {', '.join(repr(k) for k in missing)} in the summary or its config; skipped")
        return None
    if isinstance(fields["seed"], bool) or not isinstance(fields["seed"], int):
        skip(f"{path}: 'seed' is {fields['seed']!r}, not an integer; skipped")
        return None
    config = data.get("config")
    if not isinstance(config, Mapping):
        skip(f"{path}: no 'config' mapping; its runs cannot be grouped with others, skipped")
        return None
    scores = {name: _number(data.get(key)) for name, key in METRICS.items()}
    group = data.get("group")
    group_dir = None
    if isinstance(group, Mapping) and group.get("run_dir"):
        group_dir = Path(str(group["run_dir"]))
    wall = data.get("wall_clock_s")
    wall_clock = {str(k): float(v) for k, v in wall.items() if _number(v) is not None} if isinstance(wall, Mapping) else {}
    return RunRecord(
        path=path,
        method=str(fields["method"]),
        task=str(fields["task"]),
        dataset=str(fields["dataset"]),
        seed=int(fields["seed"]),
        config=config,
        scores=scores,
        curves=parse_curves(data, path),
        env_id=data.get("env_id"),
        wall_clock_s=wall_clock,
        group_dir=group_dir,
    )


def group_record(path: Path, data: Mapping[str, Any]) -> GroupRecord:
    """A :class:`GroupRecord`: the group's seeds and where each member's summary should be."""
    per_seed = data.get("per_seed") if isinstance(data.get("per_seed"), Mapping) else {}
    seeds = data.get("seeds")
    if not isinstance(seeds, list):
        seeds = [int(s) for s in per_seed]
    members = {}
    for seed in seeds:
        entry = per_seed.get(str(seed), {})
        local = path.parent / f"seed{seed}"
        if isinstance(entry, Mapping) and entry.get("run_dir") and not local.exists():
            members[int(seed)] = Path(str(entry["run_dir"]))
        else:
            members[int(seed)] = local
    return GroupRecord(path, data.get("method"), data.get("task"), data.get("dataset"),
                       tuple(int(s) for s in seeds), members)


def _check_groups(groups: list[GroupRecord], runs: list[RunRecord]) -> None:
    by_dir = {r.run_dir.resolve(): r for r in runs}
    for group in groups:
        for seed, member in group.member_dirs.items():
            if member.resolve() not in by_dir:
                skip(f"seed group {group.run_dir}: seed {seed} has no readable summary "
                     f"(expected {member / SUMMARY_FILE}); the group contributes the seeds that were found")


def collect_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """All seed-level runs under ``paths`` (directories searched recursively for ``summary.json``).

    Single runs, seed groups (their members are the runs; the group summary is only checked) and
    Hydra multirun trees all reduce to one :class:`RunRecord` per seed, sorted by
    ``(task, dataset, method, seed, path)``. Raises :class:`AnalysisError` when nothing is found or
    a summary is unreadable; incomplete summaries are skipped with a :class:`SkippedRunWarning`.
    """
    paths = list(paths)
    if not paths:
        raise AnalysisError("no run directory given")
    summaries = find_summaries(paths)
    if not summaries:
        raise AnalysisError(f"no {SUMMARY_FILE} found under {', '.join(map(str, paths))}")
    runs: list[RunRecord] = []
    groups: list[GroupRecord] = []
    for path in summaries:
        data = read_summary(path)
        kind = summary_kind(data)
        if kind == "group":
            groups.append(group_record(path, data))
        elif kind == "run":
            record = run_record(path, data)
            if record is not None:
                runs.append(record)
        else:
            skip(f"{path}: unknown summary kind {kind!r} (expected 'run' or 'group'); skipped")
    _check_groups(groups, runs)
    if not runs:
        raise AnalysisError(f"no usable seed-level summary under {', '.join(map(str, paths))} "
                            f"(found {len(summaries)} summary file(s), none of kind 'run' with "
                            "method, task, dataset, seed and config)")
    return sorted(runs, key=lambda r: (r.task, r.dataset, r.method, r.seed, str(r.path)))
