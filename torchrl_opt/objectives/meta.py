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

* ``order=2`` (default) differentiates through the inner step:
  ``dL/dpsi = grad L_off + w * (I - alpha * H_off) grad L_on(psi')``, ``H_off`` the Hessian of ``L_off``.
* ``order=1`` treats ``grad L_off`` as a constant: ``dL/dpsi = grad L_off + w * grad L_on(psi')``.

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

__all__ = ["MetaAdaptationLoss", "META_MODES"]

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
        order: 2 (default, through the inner step) or 1 (first-order).
        alpha: inner SGD step size. Default 3e-4.
        loss_ratio_weighting: weight the online term by ``min(L_off, L_on) / L_on`` (detached).
        offline_key, online_key: sub-tensordicts of the input holding the two batches.

    Input: a tensordict with ``offline_key`` and ``online_key`` entries, each a batch in TorchRL's
    transition layout. Output: ``loss_pretrain`` (to backpropagate), detached diagnostics
    ``loss_offline`` (``L_off(psi)``), ``loss_online`` (``L_on`` at the adapted parameters in meta mode,
    at ``psi`` otherwise) and ``online_weight`` (``w``).
    """

    def __init__(
        self,
        loss_module: LossModule,
        *,
        mode: str = "meta",
        order: int = 2,
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

    def _loss_fn(self, batch: TensorDictBase) -> Callable[[TensorDictBase], torch.Tensor]:
        def loss(params: TensorDictBase) -> torch.Tensor:
            return self.loss_module.online_pretrain_loss(batch, params)[0]

        return loss

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``L_pretrain`` of the configured mode (see the module docstring for the equations)."""
        offline = tensordict.get(self.offline_key)
        online = tensordict.get(self.online_key)
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
