"""D4RL reference returns and the normalised score.

The one table of reference returns in torchrl-opt. Values are D4RL's published
``d4rl/infos.py`` ``REF_MIN_SCORE`` (a uniform-random policy) and ``REF_MAX_SCORE`` (an expert
policy); they are identical across every dataset of a task family (``walker2d-random-v2`` and
``walker2d-medium-v2`` share them), so the table is keyed by task:

============  ===============  ====================
task          random (min)     expert (max)
============  ===============  ====================
halfcheetah   -280.178953      12135.0
hopper        -20.272305       3234.3
walker2d      1.629008         4592.3
ant           -325.6           3879.7
antmaze       0.0              1.0
pen           96.262799        3076.8331017826877
hammer        -274.856578      12794.134825156867
door          -56.512833       2880.5693087298737
relocate      -6.425911        4233.877797728884
============  ===============  ====================

The normalised score is ``100 * (R - R_random) / (R_expert - R_random)``. Minari datasets may
also carry their own ``ref_min_score`` / ``ref_max_score`` (recomputed in the Gymnasium
environments); pass them through ``ref=`` to normalise against those instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "D4RL_REF_SCORES",
    "UnknownTaskError",
    "reference_scores",
    "dataset_reference_scores",
    "normalized_score",
    "task_from_name",
]


class UnknownTaskError(LookupError):
    """Raised for a task (or D4RL dataset name) that has no reference returns."""


#: task -> (REF_MIN_SCORE, REF_MAX_SCORE), from D4RL's ``d4rl/infos.py``.
D4RL_REF_SCORES: Mapping[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "door": (-56.512833, 2880.5693087298737),
    "relocate": (-6.425911, 4233.877797728884),
}

_NAME_PATTERN = re.compile(r"^(?:[Dd]4[Rr][Ll]/)?([a-z0-9]+)")


def task_from_name(name: str) -> str:
    """Map a task or dataset name to its reference-score key.

    Accepts a task (``"walker2d"``), a D4RL dataset name (``"walker2d-medium-replay-v2"``,
    ``"antmaze-large-diverse-v2"``, ``"pen-cloned-v1"``), a Minari id (``"D4RL/pen/cloned-v2"``,
    ``"D4RL/antmaze/umaze-v1"``, ``"mujoco/hopper/expert-v0"``) or a torchrl-opt local id
    (``"torchrl-opt/hopper/random-v0"``).

    Raises:
        UnknownTaskError: when no task of the reference table matches.
    """
    key = name.strip()
    lowered = key.lower()
    if lowered in D4RL_REF_SCORES:
        return lowered
    parts = lowered.split("/")
    if len(parts) >= 2:
        # namespace/task/dataset-vN (Minari) or task/dataset-vN
        for part in parts[:-1]:
            if part in D4RL_REF_SCORES:
                return part
    match = _NAME_PATTERN.match(parts[-1] if len(parts) == 1 else lowered)
    if match and match.group(1) in D4RL_REF_SCORES:
        return match.group(1)
    raise UnknownTaskError(
        f"No D4RL reference scores for {name!r}; known tasks: {sorted(D4RL_REF_SCORES)}"
    )


def reference_scores(task: str) -> tuple[float, float]:
    """``(R_random, R_expert)`` of ``task`` (any name accepted by :func:`task_from_name`)."""
    return D4RL_REF_SCORES[task_from_name(task)]


def dataset_reference_scores(metadata: Mapping[str, object]) -> tuple[float, float] | None:
    """The dataset's own ``(ref_min_score, ref_max_score)`` when both are present, else None."""
    lo, hi = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)  # type: ignore[arg-type]


_R = TypeVar("_R", float, np.ndarray, torch.Tensor)


def normalized_score(
    task: str | None, returns: _R, *, ref: tuple[float, float] | None = None
) -> _R:
    """D4RL normalised score ``100 * (R - R_random) / (R_expert - R_random)``.

    Args:
        task: task or dataset name (see :func:`task_from_name`); may be None when ``ref`` is given.
        returns: undiscounted episode return(s): a float, a numpy array or a torch tensor; the
            result has the same type and shape.
        ref: optional ``(R_random, R_expert)`` overriding the D4RL table (e.g. a Minari dataset's
            ``ref_min_score`` / ``ref_max_score``).

    Raises:
        UnknownTaskError: unknown task and no ``ref``.
        ValueError: ``R_expert == R_random``.
    """
    if ref is None:
        if task is None:
            raise ValueError("normalized_score needs a task or explicit ref=(min, max)")
        ref = reference_scores(task)
    lo, hi = float(ref[0]), float(ref[1])
    if hi == lo:
        raise ValueError(f"Degenerate reference scores: min == max == {lo}")
    scale = 100.0 / (hi - lo)
    if isinstance(returns, torch.Tensor):
        return (returns - lo) * scale
    if isinstance(returns, np.ndarray):
        return (returns - lo) * scale
    return (float(returns) - lo) * scale
