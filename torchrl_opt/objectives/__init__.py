"""Loss modules of torchrl-opt (TorchRL ``LossModule`` subclasses)."""

from torchrl_opt.objectives.density import DensityRatioLoss
from torchrl_opt.objectives.iql_opt import OPTIQLLoss, expectile_loss
from torchrl_opt.objectives.meta import META_MODES, MetaAdaptationLoss
from torchrl_opt.objectives.spot import (
    SPOT_LAMBDA_PRESETS,
    SPOTVAE,
    SPOTDensityPenalty,
    SPOTVAELoss,
    spot_lambda,
    spot_lambda_preset,
)
from torchrl_opt.objectives.td3_opt import OPTLoss

__all__ = [
    "DensityRatioLoss",
    "META_MODES",
    "MetaAdaptationLoss",
    "OPTIQLLoss",
    "OPTLoss",
    "SPOTDensityPenalty",
    "SPOTVAE",
    "SPOTVAELoss",
    "SPOT_LAMBDA_PRESETS",
    "expectile_loss",
    "spot_lambda",
    "spot_lambda_preset",
]
