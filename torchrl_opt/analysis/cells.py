"""Group runs into cells: the seeds of one (task, dataset, method, configuration).

Two runs belong to the same cell when their task, dataset and method agree and their configs agree
on every entry except the seed-like ones of :data:`SEED_LIKE_KEYS` (where a run is written, on which
device, how it logs, checkpoints or is accelerated: nothing that changes what is learnt). Runs of the
same (task, dataset, method) whose configs differ in anything else are separate cells; they are
never averaged together. Each cell gets a **label**: the method alone when all its runs share one
configuration, else the method followed by the entries that differ, e.g. ``opt [finetune.utd=5]``
and ``opt [finetune.utd=1]``. The differing entries of a method are gathered over all its
(task, dataset) pairs, so that the same variant carries the same label on every task and the
aggregate over tasks compares like with like.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from torchrl_opt.analysis.collect import AnalysisError, RunRecord

#: Config entries (dotted paths; a section name covers the whole section) that never split a cell:
#: they say where and how a run executes, not what it learns. ``seeds`` and ``run_dir`` differ
#: between the members of a seed group; ``offline.checkpoint`` is the path an offline checkpoint
#: was loaded from.
SEED_LIKE_KEYS: tuple[str, ...] = (
    "seed",
    "seeds",
    "run_dir",
    "device",
    "logging",
    "checkpoint",
    "acceleration",
    "offline.checkpoint",
)

#: How an entry absent from one config shows in a label or a differences table.
ABSENT = "<absent>"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as ``{"section.key": value}`` (lists stay values, empty dicts vanish)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def is_seed_like(path: str, keys: Sequence[str] = SEED_LIKE_KEYS) -> bool:
    """Whether the dotted config path ``path`` is, or lies inside, one of ``keys``."""
    return any(path == key or path.startswith(f"{key}.") for key in keys)


def format_value(value: Any) -> str:
    """A config value as a label shows it: strings bare, everything else as JSON (``null``, ``[256, 256]``)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class Cell:
    """The seeds of one (task, dataset, method, configuration).

    ``variant`` holds the config entries that tell this cell apart from other cells of its method
    (entry -> this cell's value, :data:`ABSENT` when its config lacks it); ``runs`` are sorted by
    seed; ``config`` is the configuration its runs share, seed-like entries left out.
    """

    task: str
    dataset: str
    method: str
    label: str
    variant: Mapping[str, Any]
    config: Mapping[str, Any]
    runs: tuple[RunRecord, ...]

    @property
    def env(self) -> str:
        return f"{self.task}-{self.dataset}"

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)

    def scores(self, metric: str) -> tuple[np.ndarray, tuple[int, ...], tuple[RunRecord, ...]]:
        """``(values, seeds, runs_without_it)`` for ``metric``: the runs that have it, in seed order."""
        have = [r for r in self.runs if r.score(metric) is not None]
        lacking = tuple(r for r in self.runs if r.score(metric) is None)
        return np.array([r.score(metric) for r in have], dtype=np.float64), tuple(r.seed for r in have), lacking


@dataclass(frozen=True)
class Difference:
    """The cells of one (task, dataset, method) and the entries in which their configs differ."""

    task: str
    dataset: str
    method: str
    keys: tuple[str, ...]
    cells: tuple[Cell, ...]

    def values(self, cell: Cell) -> dict[str, str]:
        return {k: format_value(cell.config.get(k, ABSENT)) for k in self.keys}


def _label(method: str, variant: Mapping[str, Any]) -> str:
    if not variant:
        return method
    return f"{method} [{', '.join(f'{k}={format_value(v)}' for k, v in variant.items())}]"


def group_cells(records: Iterable[RunRecord], ignore: Sequence[str] = SEED_LIKE_KEYS) -> list[Cell]:
    """Group ``records`` into :class:`Cell` s (sorted by task, dataset, label).

    ``ignore`` lists the seed-like config entries (default :data:`SEED_LIKE_KEYS`). Raises
    :class:`AnalysisError` when one cell holds the same seed twice, naming both summaries.
    """
    flat_by_run: dict[int, dict[str, Any]] = {}
    buckets: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        flat = {k: v for k, v in flatten_config(record.config).items() if not is_seed_like(k, ignore)}
        flat_by_run[id(record)] = flat
        identity = tuple(sorted((k, _canonical(v)) for k, v in flat.items()))
        buckets[(record.task, record.dataset, record.method, identity)].append(record)

    # the entries that differ between cells of one (task, dataset, method), gathered per method
    by_triple: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for (task, dataset, method, _), runs in buckets.items():
        by_triple[(task, dataset, method)].append(flat_by_run[id(runs[0])])
    variant_keys: dict[str, set[str]] = defaultdict(set)
    for (_, _, method), configs in by_triple.items():
        if len(configs) < 2:
            continue
        for key in set().union(*configs):
            if len({_canonical(c.get(key, ABSENT)) for c in configs}) > 1:
                variant_keys[method].add(key)

    cells = []
    for (task, dataset, method, _), runs in buckets.items():
        runs = sorted(runs, key=lambda r: (r.seed, str(r.path)))
        for a, b in zip(runs, runs[1:]):
            if a.seed == b.seed:
                raise AnalysisError(
                    f"seed {a.seed} of {method} on {task}-{dataset} appears twice with the same "
                    f"configuration: {a.path} and {b.path}; remove one or pass only one of them")
        flat = flat_by_run[id(runs[0])]
        variant = {k: flat.get(k, ABSENT) for k in sorted(variant_keys[method])}
        cells.append(Cell(task, dataset, method, _label(method, variant), variant, flat, tuple(runs)))
    return sorted(cells, key=lambda c: (c.task, c.dataset, c.label))


def differences(cells: Iterable[Cell]) -> list[Difference]:
    """For every (task, dataset, method) with several cells, the config entries that tell them apart."""
    by_triple: dict[tuple[str, str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        by_triple[(cell.task, cell.dataset, cell.method)].append(cell)
    out = []
    for (task, dataset, method), group in sorted(by_triple.items()):
        if len(group) < 2:
            continue
        keys = sorted(k for k in set().union(*(c.config for c in group))
                      if len({_canonical(c.config.get(k, ABSENT)) for c in group}) > 1)
        out.append(Difference(task, dataset, method, tuple(keys), tuple(group)))
    return out
