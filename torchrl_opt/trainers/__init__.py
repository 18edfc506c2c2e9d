"""OPT in TorchRL's trainer ecosystem: :class:`OPTTrainer`, its hooks and Hydra configs."""

from torchrl_opt.trainers.opt_trainer import (
    BalancedReplayHook,
    EvaluationHook,
    MixedReplayHook,
    OPTOptimizationStepper,
    OPTTrainer,
    SchedulesHook,
    TrainerConfigError,
    make_update_specs,
)

__all__ = [
    "BalancedReplayHook",
    "EvaluationHook",
    "MixedReplayHook",
    "OPTOptimizationStepper",
    "OPTTrainer",
    "SchedulesHook",
    "TrainerConfigError",
    "make_update_specs",
]
