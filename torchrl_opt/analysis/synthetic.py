"""Synthetic run directories in the pipeline's ``summary.json`` format, for examples and tests.

:func:`write_synthetic_runs` lays out a Hydra-multirun-like tree of seed groups,
``<root>/<task>-<dataset>/<method>/{summary.json, seed<s>/summary.json}``, with learning curves that
rise to a chosen final score and value-bias curves that decay towards zero; nothing is trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


def synthetic_config(method: str, task: str, dataset: str, seed: int, run_dir: str | Path,
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A small run configuration in ``RunConfig``'s nesting; ``overrides`` maps dotted keys to values."""
    config: dict[str, Any] = {
        "seed": seed, "seeds": None, "method": method, "device": "cpu", "run_dir": str(run_dir),
        "dataset": {"task": task, "kind": dataset, "source": "generated"},
        "offline": {"steps": 2000, "batch_size": 256},
        "finetune": {"env_steps": 5000, "utd": 5, "replay": "balanced"},
        "logging": {"backend": "csv", "dir": "runs"},
        "checkpoint": {"every": 25000, "resume": True},
        "acceleration": {"compile": False},
    }
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def synthetic_summary(
    method: str,
    task: str,
    dataset: str,
    seed: int,
    run_dir: str | Path,
    *,
    final: float,
    offline: float | None = 10.0,
    steps: Sequence[int] = (1000, 2000, 3000, 4000, 5000),
    critics: Sequence[str] = ("q_off", "q_on"),
    overrides: Mapping[str, Any] | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """A seed-level summary whose score curve rises from ``offline`` (or 0) to ``final`` at the last step."""
    rng = rng or np.random.default_rng(seed)
    start = 0.0 if offline is None else offline
    n = len(steps)
    scores = [[int(s), float(start + (final - start) * (i + 1) / n + (rng.normal(0, 2.0) if i < n - 1 else 0))]
              for i, s in enumerate(steps)]
    curves: dict[str, list] = {"eval/normalized_score": scores}
    for j, critic in enumerate(critics):
        curves[f"eval/value_bias/{critic}"] = [
            [int(s), float((-8.0 - 4 * j) * math.exp(-i / 2) + rng.normal(0, 0.5))] for i, s in enumerate(steps)]
    if offline is not None:
        curves["offline_eval/normalized_score"] = [[1000, offline / 2], [2000, offline]]
    return {
        "kind": "run", "method": method, "seed": seed, "task": task, "dataset": dataset,
        "env_id": f"{task.capitalize()}-v5",
        "config": synthetic_config(method, task, dataset, seed, run_dir, overrides),
        "final_normalized_score": scores[-1][1],
        "best_normalized_score": max(v for _, v in scores),
        "offline_normalized_score": offline,
        "scores": scores, "curves": curves,
        "wall_clock_s": {"offline": 2.0, "finetune": 5.0}, "updates": {"offline": 2000, "finetune": 25000},
        "updates_per_s": {"offline": 1000.0, "finetune": 5000.0}, "device": "cpu",
        "finished": "2026-01-01T00:00:00+0000",
    }


def write_synthetic_runs(
    root: str | Path,
    finals: Mapping[tuple[str, str, str], float],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    spread: float = 5.0,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    rng_seed: int = 0,
) -> list[Path]:
    """Write one seed group per ``(task, dataset, method) -> mean final score`` under ``root``.

    Seed ``s``'s final score is the mean plus Gaussian noise of std ``spread``. ``overrides`` maps a
    method to dotted config overrides (``{"opt": {"finetune.utd": 1}}``); a method name may carry a
    directory suffix after ``@`` (``"opt@utd1"``) to write a second configuration of the same method.
    Returns the group directories.
    """
    rng = np.random.default_rng(rng_seed)
    groups = []
    for (task, dataset, name), mean in finals.items():
        method = name.split("@", 1)[0]
        group_dir = Path(root) / f"{task}-{dataset}" / name.replace("@", "-")
        per_seed = {}
        for seed in seeds:
            member = group_dir / f"seed{seed}"
            member.mkdir(parents=True, exist_ok=True)
            summary = synthetic_summary(method, task, dataset, seed, member, final=float(mean + rng.normal(0, spread)),
                                        overrides=(overrides or {}).get(name), rng=rng)
            summary["config"]["seeds"] = list(seeds)
            summary["group"] = {"seeds": list(seeds), "run_dir": str(group_dir)}
            (member / "summary.json").write_text(json.dumps(summary))
            per_seed[str(seed)] = {"run_dir": str(member), "final_normalized_score": summary["final_normalized_score"],
                                   "best_normalized_score": summary["best_normalized_score"],
                                   "offline_normalized_score": summary["offline_normalized_score"]}
        finals_ = [v["final_normalized_score"] for v in per_seed.values()]
        group = {"kind": "group", "method": method, "task": task, "dataset": dataset,
                 "env_id": f"{task.capitalize()}-v5", "seeds": list(seeds), "per_seed": per_seed,
                 "config": synthetic_config(method, task, dataset, seeds[0], group_dir, (overrides or {}).get(name)),
                 "final_normalized_score": float(np.mean(finals_)),
                 "final_normalized_score_std": float(np.std(finals_)),
                 "wall_clock_s": {"offline": 2.0, "finetune": 5.0}, "updates": {"offline": 2000, "finetune": 25000},
                 "updates_per_s": {"offline": 1000.0, "finetune": 5000.0}}
        (group_dir / "summary.json").write_text(json.dumps(group))
        groups.append(group_dir)
    return groups
