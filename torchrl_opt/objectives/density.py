"""``DensityRatioLoss``: Off2On's density-ratio objective as a TorchRL loss module.

The balanced-replay density-ratio network ``w(s, a)``
(:class:`~torchrl_opt.data.replay.DensityRatioEstimator`) is trained on ``B`` offline and ``B``
online rows with the JS-style f-divergence loss, and the RL batch's priorities are set from it
(``w^(1/T) / mean_off(w^(1/T))``, clamped), both computed with the network *before* its update::

    L_w      = mean_off[-log(2 / (w + 1) + 1e-10)] - mean_on[log(2 w / (w + 1) + 1e-10)]
    priority = clamp(w(sample)^(1/T) / (mean_off(w^(1/T)) + 1e-10), p_min, p_max)   (detached)

:class:`~torchrl_opt.pipeline.phases.DensityRatioUpdater` steps the estimator directly with
``torch.optim``. This module holds the estimator's parameters as a TorchRL parameter group
(``density_network_params``, ``convert_to_functional``), so the functional and seed-batched steps of
:mod:`torchrl_opt.pipeline.functional` can train it like the RL losses: ``S`` seeds' estimators in one
vmapped call.
"""

from __future__ import annotations

from tensordict import TensorDict, TensorDictBase, TensorDictParams
from torchrl.objectives.common import LossModule

from torchrl_opt.data.replay import DensityRatioEstimator

__all__ = ["DensityRatioLoss"]


class DensityRatioLoss(LossModule):
    """The density-ratio estimator's loss and the priorities it assigns, as a loss module.

    Args:
        estimator: a :class:`~torchrl_opt.data.replay.DensityRatioEstimator`; its parameters become
            ``density_network_params`` (the same tensors, as TorchRL's ``convert_to_functional``).

    Input: a tensordict with ``"offline"`` and ``"online"`` (the estimator's training batches, e.g.
    ``replay.sample_offline_online(256)``) and ``"sample"`` (the RL batch whose priorities are
    renewed). Output: ``loss_density`` (``L_w``, differentiable) and ``priority`` (``[B]``, detached).
    """

    density_network: DensityRatioEstimator
    density_network_params: TensorDictParams
    target_density_network_params: TensorDictParams

    def __init__(self, estimator: DensityRatioEstimator) -> None:
        super().__init__()
        if not isinstance(estimator, DensityRatioEstimator):
            raise TypeError(
                f"estimator must be a DensityRatioEstimator, got {type(estimator).__name__}"
            )
        self.convert_to_functional(estimator, "density_network", create_target_params=False)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        return  # no value estimator

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``loss_density`` (``L_w`` on offline/online) and the ``priority`` of ``sample``."""
        with self.density_network_params.to_module(
            self.density_network, preserve_module_state=False
        ):
            loss, priority = self.density_network.loss_and_priorities(
                tensordict.get("offline"), tensordict.get("online"), tensordict.get("sample")
            )
        return TensorDict({"loss_density": loss, "priority": priority}, batch_size=[])
