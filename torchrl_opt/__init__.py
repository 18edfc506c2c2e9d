"""torchrl-opt: Online Pre-Training (OPT) for offline-to-online RL on TorchRL.

Components drop into any TorchRL loop::

    from torchrl_opt import OPTLoss, MetaAdaptationLoss, BalancedSampler, KappaSchedule

and ``torchrl_opt.pipeline.run`` / ``recipes/opt.py`` run the whole three-phase pipeline.
"""

from torchrl_opt.data.replay import BalancedSampler, DensityRatioEstimator, make_replay
from torchrl_opt.data.scores import normalized_score
from torchrl_opt.objectives import (
    SPOTVAE,
    MetaAdaptationLoss,
    OPTIQLLoss,
    OPTLoss,
    SPOTDensityPenalty,
    SPOTVAELoss,
    load_offline,
    opt_loss_from_offline,
)
from torchrl_opt.schedules import KAPPA_PRESETS, KappaSchedule, kappa_preset

__version__ = "0.1.0"

__all__ = [
    "BalancedSampler",
    "DensityRatioEstimator",
    "KAPPA_PRESETS",
    "KappaSchedule",
    "MetaAdaptationLoss",
    "OPTIQLLoss",
    "OPTLoss",
    "SPOTDensityPenalty",
    "SPOTVAE",
    "SPOTVAELoss",
    "kappa_preset",
    "load_offline",
    "make_replay",
    "normalized_score",
    "opt_loss_from_offline",
]
