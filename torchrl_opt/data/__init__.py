"""Offline datasets, reference scores, local dataset generation and offline/online replay."""

from torchrl_opt.data.datasets import (
    TASKS,
    DatasetError,
    DatasetSpec,
    NonFiniteDataError,
    SpaceMismatchError,
    UnknownDatasetError,
    dataset_metadata,
    get_dataset_entry,
    load_offline_data,
    make_offline_replay_buffer,
)
from torchrl_opt.data.replay import (
    BalancedSampler,
    DensityRatioEstimator,
    MixedReplayBuffer,
    density_ratio_loss,
    density_ratio_priority,
    make_replay,
)
from torchrl_opt.data.scores import D4RL_REF_SCORES, normalized_score
from torchrl_opt.data.seed_replay import (
    SeedBatchedReplay,
    make_seed_batched_replay,
    sumtree_build_batched,
    sumtree_sample_batched,
    sumtree_update_batched_,
)

__all__ = [
    "BalancedSampler",
    "D4RL_REF_SCORES",
    "DatasetError",
    "DatasetSpec",
    "DensityRatioEstimator",
    "MixedReplayBuffer",
    "NonFiniteDataError",
    "SeedBatchedReplay",
    "SpaceMismatchError",
    "TASKS",
    "UnknownDatasetError",
    "dataset_metadata",
    "density_ratio_loss",
    "density_ratio_priority",
    "get_dataset_entry",
    "load_offline_data",
    "make_offline_replay_buffer",
    "make_replay",
    "make_seed_batched_replay",
    "normalized_score",
    "sumtree_build_batched",
    "sumtree_sample_batched",
    "sumtree_update_batched_",
]
