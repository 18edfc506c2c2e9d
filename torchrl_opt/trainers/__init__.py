"""OPT in TorchRL's trainer ecosystem: :class:`OPTTrainer`, its hooks and Hydra configs."""

from torchrl_opt.trainers.opt_trainer import (
    BalancedReplayHook,
    EvaluationHook,
    KappaScheduleHook,
    MixedReplayHook,
    OnlinePretrainPhase,
    OPTOptimizationStepper,
    OPTTrainer,
    TrainerConfigError,
    load_offline_checkpoint,
    make_update_specs,
)

__all__ = [
    "BalancedReplayHook",
    "EvaluationHook",
    "KappaScheduleHook",
    "MixedReplayHook",
    "OnlinePretrainPhase",
    "OPTOptimizationStepper",
    "OPTTrainer",
    "TrainerConfigError",
    "load_offline_checkpoint",
    "make_update_specs",
]
