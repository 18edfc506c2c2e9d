"""Loss modules of torchrl-opt (TorchRL ``LossModule`` subclasses)."""

from torchrl_opt.objectives.common import LossInputError
from torchrl_opt.objectives.cql import EnsembleCQLLoss
from torchrl_opt.objectives.density import DensityRatioLoss
from torchrl_opt.objectives.handover import (
    OfflineHandover,
    OfflineStateError,
    load_offline,
    opt_loss_from_offline,
)
from torchrl_opt.objectives.iql_opt import OPTIQLLoss, expectile_loss
from torchrl_opt.objectives.meta import META_MODES, MetaAdaptationLoss, OfflineCriticPretraining
from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss, OPTEnsembleSACLoss
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
    "EnsembleCQLLoss",
    "EnsembleSACLoss",
    "LossInputError",
    "META_MODES",
    "MetaAdaptationLoss",
    "OfflineCriticPretraining",
    "OfflineHandover",
    "OfflineStateError",
    "OPTEnsembleSACLoss",
    "OPTIQLLoss",
    "OPTLoss",
    "SPOTDensityPenalty",
    "SPOTVAE",
    "SPOTVAELoss",
    "SPOT_LAMBDA_PRESETS",
    "expectile_loss",
    "load_offline",
    "opt_loss_from_offline",
    "spot_lambda",
    "spot_lambda_preset",
]
