"""MetaAdaptationLoss: OPT's online pre-training objective (Eq. 3 for Q, Eq. 8 for V).

The new online critics ``psi`` (``Q_on``, and ``V_on`` for IQL) are trained on a batch from the
offline dataset ``B_off`` and a batch from the online buffer ``B_on`` collected by the frozen offline
policy. The default ``"meta"`` mode minimises::

    L_pretrain(psi) = L_off(psi) + w * L_on(psi - alpha * grad_psi L_off(psi))        (Eq. 3 / Eq. 8)

where ``L_off``/``L_on`` are the online critics' losses of the wrapped fine-tuning loss
(``OPTLoss.online_pretrain_loss``: Q_on's TD3 TD loss; ``OPTIQLLoss.online_pretrain_loss``: Q_on's TD
loss plus V_on's expectile loss) on the offline and the online batch. The inner step is one SGD step
computed with ``torch.func.grad_and_value`` (which ``torch.compile`` captures, unlike
``autograd.grad(create_graph=True)``).

* ``order=1`` (default, as OEMA's public code, which takes the inner gradient without
  ``create_graph``) treats ``grad L_off`` as a constant: ``dL/dpsi = grad L_off + w * grad L_on(psi')``.
* ``order=2`` differentiates through the inner step:
  ``dL/dpsi = grad L_off + w * (I - alpha * H_off) grad L_on(psi')``, ``H_off`` the Hessian of ``L_off``.
  The two differ by ``w * alpha * H_off grad L_on(psi')``: small at ``alpha = 3e-4`` (measured in
  ``docs/algorithm.md``), while order 2 adds a backward pass through the inner step.

The paper's ablations are modes: ``"online"`` (``L_on(psi)``, B_on only), ``"joint"``
(``L_off(psi) + L_on(psi)``, Eq. 10, no inner step) and ``"offline"`` (``L_off(psi)``).
``loss_ratio_weighting=True`` rescales the online term by ``w = min(L_off, L_on) / L_on`` (detached),
as a public re-implementation does (unconfirmed by the paper; off by default, ``w = 1``).

Only the online critics receive gradients: the actor, ``Q_off``/``V_off`` and every target network are
read without gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torch.func import grad_and_value
from torchrl.objectives.common import LossModule

from torchrl_opt.objectives.common import TRANSITION_LAYOUT, LossInputError
from torchrl_opt.objectives.utils import plain_params

__all__ = ["MetaAdaptationLoss", "META_MODES", "OfflineCriticPretraining"]

META_MODES = ("meta", "online", "joint", "offline")


class MetaAdaptationLoss(LossModule):
    """Online pre-training loss for the online critics of an OPT loss module.

    Args:
        loss_module: the fine-tuning loss that owns the online critics: an ``OPTLoss`` or
            ``OPTIQLLoss`` (anything with ``online_param_names``, ``online_params()`` and
            ``online_pretrain_loss(tensordict, params)``). Parameters are shared with it, so after
            pre-training the fine-tuning loss already holds the trained ``Q_on``.

    Keyword Args:
        mode: ``"meta"`` (default), ``"online"``, ``"joint"`` or ``"offline"``.
        order: 1 (default, first order: the inner gradient is a constant) or 2 (through the
            inner step).
        alpha: inner SGD step size. Default 3e-4.
        loss_ratio_weighting: weight the online term by ``min(L_off, L_on) / L_on`` (detached).
        offline_key: sub-tensordict of the input holding the offline batch.
        online_key: sub-tensordict of the input holding the online batch.

    Input: a tensordict with ``offline_key`` and ``online_key`` entries, each a batch in TorchRL's
    transition layout: ``TensorDict(offline=batch_from_B_off, online=batch_from_B_on)`` (the
    batches may have different sizes). A flat batch, or a missing sub-batch, raises
    :class:`~torchrl_opt.objectives.common.LossInputError` naming the layout expected.
    Output: ``loss_pretrain`` (to backpropagate), detached diagnostics
    ``loss_offline`` (``L_off(psi)``), ``loss_online`` (``L_on`` at the adapted parameters in meta mode,
    at ``psi`` otherwise) and ``online_weight`` (``w``).
    """

    def __init__(
        self,
        loss_module: LossModule,
        *,
        mode: str = "meta",
        order: int = 1,
        alpha: float = 3e-4,
        loss_ratio_weighting: bool = False,
        offline_key: str = "offline",
        online_key: str = "online",
    ) -> None:
        super().__init__()
        if mode not in META_MODES:
            raise ValueError(f"mode must be one of {META_MODES}, got {mode!r}")
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        for attribute in ("online_param_names", "online_params", "online_pretrain_loss"):
            if not hasattr(loss_module, attribute):
                raise TypeError(
                    f"{type(loss_module).__name__} has no {attribute!r}: MetaAdaptationLoss needs a "
                    "loss with online critics (OPTLoss or OPTIQLLoss built with Q_on)."
                )
        self.loss_module = loss_module
        self.mode = mode
        self.order = order
        self.alpha = alpha
        self.loss_ratio_weighting = loss_ratio_weighting
        self.offline_key = offline_key
        self.online_key = online_key

    def online_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters this loss trains (give these, and only these, to the optimiser)."""
        return list(self.loss_module.online_params().values(True, True))

    def _batches(self, tensordict: TensorDictBase) -> tuple[TensorDictBase, TensorDictBase]:
        """The offline and the online batch, or a :class:`LossInputError` naming the layout."""
        batches = [tensordict.get(key, None) for key in (self.offline_key, self.online_key)]
        bad = [
            key
            for key, batch in zip((self.offline_key, self.online_key), batches)
            if not isinstance(batch, TensorDictBase)
        ]
        if bad:
            present = sorted(tensordict.keys(), key=str)
            raise LossInputError(
                f"MetaAdaptationLoss needs two sub-tensordicts, {self.offline_key!r} (a batch of "
                f"the offline dataset B_off) and {self.online_key!r} (a batch of the online buffer "
                f"B_on), each in {TRANSITION_LAYOUT}; the input lacks {bad} as sub-tensordicts "
                f"(its top-level keys are {present}). Build it as "
                f"TensorDict({self.offline_key}=offline_batch, {self.online_key}=online_batch)"
                ", or set offline_key/online_key."
            )
        return batches[0], batches[1]

    def _loss_fn(self, batch: TensorDictBase) -> Callable[[TensorDictBase], torch.Tensor]:
        def loss(params: TensorDictBase) -> torch.Tensor:
            return self.loss_module.online_pretrain_loss(batch, params)[0]

        return loss

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``L_pretrain`` of the configured mode (see the module docstring for the equations)."""
        offline, online = self._batches(tensordict)
        psi = self.loss_module.online_params()
        loss_off_fn = self._loss_fn(offline)
        loss_on_fn = self._loss_fn(online)

        if self.mode == "meta":
            grad_off, loss_off = grad_and_value(loss_off_fn)(psi)
            if self.order == 1:
                grad_off = grad_off.detach()
            adapted = psi.apply(lambda p, g: p - self.alpha * g, grad_off)
            loss_on = loss_on_fn(adapted)
        else:
            # A term the mode leaves out is still reported, computed without gradient.
            with torch.set_grad_enabled(self.mode != "online"):
                loss_off = loss_off_fn(psi)
            with torch.set_grad_enabled(self.mode != "offline"):
                loss_on = loss_on_fn(psi)

        weight = loss_on.new_ones(())
        if self.loss_ratio_weighting and self.mode in ("meta", "joint"):
            weight = (torch.minimum(loss_off, loss_on) / loss_on).detach()
        if self.mode == "online":
            total = loss_on
        elif self.mode == "offline":
            total = loss_off
        else:
            total = loss_off + weight * loss_on
        return TensorDict(
            {
                "loss_pretrain": total,
                "loss_offline": loss_off.detach(),
                "loss_online": loss_on.detach(),
                "online_weight": weight,
            },
            batch_size=[],
        )


class OfflineCriticPretraining:
    """The online pre-training protocol of :class:`MetaAdaptationLoss` pointed at ``Q_off`` itself.

    The paper's "without Q_on" ablation (Sec. 5.3, Fig. 7, Table 11) adds no new value function:
    ``Q_off`` is trained with Eq. 3 during online pre-training,
    ``L_off(psi) + L_on(psi - alpha * grad L_off(psi))`` with ``psi`` the parameters of ``Q_off``
    and ``L_off`` / ``L_on`` its TD3 TD loss on ``B_off`` / ``B_on``, then fine-tuning uses
    ``Q_off`` alone. Wrap an ``OPTLoss`` (built without ``Q_on``) and give the wrapper to
    :class:`MetaAdaptationLoss`; only ``Q_off`` receives gradients.
    """

    online_param_names: tuple[str, ...] = ("qvalue_off_network_params",)

    def __init__(self, loss_module: LossModule) -> None:
        if not hasattr(loss_module, "qvalue_off_loss") or "qvalue_off_network_params" not in loss_module._modules:
            raise TypeError(
                f"{type(loss_module).__name__} has no Q_off TD loss with parameters: "
                "OfflineCriticPretraining needs an OPTLoss"
            )
        self.loss_module = loss_module

    def online_params(self) -> TensorDictBase:
        """``Q_off``'s live parameters (a plain TensorDict of the loss's own ``nn.Parameter`` s)."""
        return TensorDict(
            {name: plain_params(getattr(self.loss_module, name)) for name in self.online_param_names},
            batch_size=[],
        )

    def online_pretrain_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``Q_off``'s TD loss, at ``params["qvalue_off_network_params"]`` when given."""
        off = None if params is None else params["qvalue_off_network_params"]
        return self.loss_module.qvalue_off_loss(tensordict, off)
