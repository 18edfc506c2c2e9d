"""Offline datasets, reference scores, local dataset generation and offline/online replay.

Every name the data guide (``docs/data.md``) uses is importable from here. The generation API of
:mod:`torchrl_opt.data.generate` (``ensure_dataset``, ``generate_dataset`` and its errors) is
exported lazily: it is imported on first access, so ``import torchrl_opt.data`` does not load the
generator (which imports :mod:`torchrl_opt.data.datasets` itself).
"""

from __future__ import annotations

import importlib
from typing import Any

from torchrl_opt.data.datasets import (
    TASKS,
    ActionOutOfBoundsError,
    DatasetEntry,
    DatasetError,
    DatasetFormatError,
    DatasetMetadata,
    DatasetSpec,
    NonFiniteDataError,
    SpaceMismatchError,
    TaskInfo,
    UnknownDatasetError,
    dataset_metadata,
    get_dataset_entry,
    list_dataset_entries,
    load_offline_data,
    local_dataset_id,
    make_offline_replay_buffer,
    minari_root,
    validate_transitions,
)
from torchrl_opt.data.replay import (
    OPTIONAL_TRANSITION_KEYS,
    REPLAY_STRATEGIES,
    TRANSITION_KEYS,
    BalancedSampler,
    DensityRatioEstimator,
    EmptyOnlineBufferError,
    MixedReplayBuffer,
    OnlineSampler,
    PrioritiesNotSupportedError,
    ReplayCapacityError,
    ReplayKeyError,
    SymmetricSampler,
    UniformSampler,
    density_ratio_loss,
    density_ratio_priority,
    make_replay,
    resolve_storage_layout,
)
from torchrl_opt.data.scores import D4RL_REF_SCORES, normalized_score
from torchrl_opt.data.seed_replay import (
    SeedBatchedReplay,
    make_seed_batched_replay,
    sumtree_build_batched,
    sumtree_sample_batched,
    sumtree_update_batched_,
)

#: Names served lazily from :mod:`torchrl_opt.data.generate`.
_LAZY = {
    "ensure_dataset": "torchrl_opt.data.generate",
    "generate_dataset": "torchrl_opt.data.generate",
    "GenerationError": "torchrl_opt.data.generate",
    "DatasetExistsError": "torchrl_opt.data.generate",
    "TargetNotReachedError": "torchrl_opt.data.generate",
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
    "ActionOutOfBoundsError",
    "BalancedSampler",
    "D4RL_REF_SCORES",
    "DatasetEntry",
    "DatasetError",
    "DatasetExistsError",
    "DatasetFormatError",
    "DatasetMetadata",
    "DatasetSpec",
    "DensityRatioEstimator",
    "EmptyOnlineBufferError",
    "GenerationError",
    "MixedReplayBuffer",
    "NonFiniteDataError",
    "OPTIONAL_TRANSITION_KEYS",
    "OnlineSampler",
    "PrioritiesNotSupportedError",
    "REPLAY_STRATEGIES",
    "ReplayCapacityError",
    "ReplayKeyError",
    "SeedBatchedReplay",
    "SpaceMismatchError",
    "SymmetricSampler",
    "TASKS",
    "TRANSITION_KEYS",
    "TargetNotReachedError",
    "TaskInfo",
    "UniformSampler",
    "UnknownDatasetError",
    "dataset_metadata",
    "density_ratio_loss",
    "density_ratio_priority",
    "ensure_dataset",
    "generate_dataset",
    "get_dataset_entry",
    "list_dataset_entries",
    "load_offline_data",
    "local_dataset_id",
    "make_offline_replay_buffer",
    "make_replay",
    "make_seed_batched_replay",
    "minari_root",
    "normalized_score",
    "resolve_storage_layout",
    "sumtree_build_batched",
    "sumtree_sample_batched",
    "sumtree_update_batched_",
    "validate_transitions",
]
