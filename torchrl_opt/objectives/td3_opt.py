"""OPTLoss: the dual-critic TD3 loss of OPT's fine-tuning phase (Shin, Kim et al., ICML 2025).

Two twin critics are trained side by side on the same batch, each with its own target parameters:
``Q_off`` (from offline pre-training) and ``Q_on`` (from online pre-training). Both regress onto
their own TD3 target (Eq. 2)::

    y_c = r + gamma * (1 - terminated) * min_i Qbar_c,i(s', clip(pibar(s') + eps, low, high)),
    eps = clip(N(0, sigma^2), -c, c),               c in {off, on}

with the *shared* target actor ``pibar`` and one noise draw per batch. The actor maximises the
kappa-weighted first critic of each twin (Eq. 4)::

    L_pi = E_s[ -((1 - kappa) * Q_off,1(s, pi(s)) + kappa * Q_on,1(s, pi(s))) ]

``kappa`` is a float32 tensor buffer; :class:`~torchrl_opt.schedules.KappaSchedule` writes into it in
place, so a compiled or CUDA-graphed step sees new values without recompiling.

Options for the paper's backbones and ablations:

* ``bc_alpha`` (TD3+BC, Fujimoto & Gu 2021): the actor loss becomes
  ``-alpha / mean|Q_mix| * Q_mix + mean_a (pi(s) - a)^2`` (``mean|Q_mix|`` detached), used for offline
  pre-training and by users who keep BC online.
* ``normalize_q`` (SPOT): the Q term is divided by ``mean|Q_mix|`` (detached).
* ``actor_penalty``: a module ``penalty(td) -> Tensor[batch]`` added to the per-sample actor loss;
  ``td`` holds ``observation`` and the actor's ``action`` (SPOT's ``lambda * negELBO(s, pi(s))``).
* ``qvalue_on_network=None`` with ``kappa=0``: plain TD3 (or TD3+BC) on ``Q_off``.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data.tensor_specs import Bounded, Composite, TensorSpec
from torchrl.envs.utils import step_mdp
from torchrl.objectives.utils import (
    distance_loss,
)
from torchrl.objectives.value import TD0Estimator

from torchrl_opt.objectives.common import CRITICS, DualCriticLoss

__all__ = ["OPTLoss"]


class OPTLoss(DualCriticLoss):
    """Dual-critic TD3 loss of OPT (Eq. 2 for each critic, Eq. 4 for the actor).

    Args:
        actor_network: deterministic actor (``observation -> action``).
        qvalue_off_network: the offline critic ``Q_off``: one module (duplicated ``num_qvalue_nets``
            times, TorchRL style) or a list of independently initialised modules.
        qvalue_on_network: the online critic ``Q_on`` in the same form, or ``None`` for plain TD3.

    Keyword Args:
        action_spec: bounded action spec (exclusive with ``bounds``).
        bounds: ``(low, high)`` of the action space (exclusive with ``action_spec``).
        num_qvalue_nets: critics per twin. Default 2.
        kappa: initial weight of ``Q_on`` in the actor loss, in [0, 1]. Must be 0 without ``Q_on``.
        policy_noise: std of the target policy smoothing noise. Default 0.2.
        noise_clip: clip of that noise. Default 0.5.
        loss_function: ``"l2"`` (default, TD3's MSE), ``"smooth_l1"`` or ``"l1"``.
        bc_alpha: TD3+BC's alpha; ``None`` (default) disables the BC term.
        normalize_q: divide the actor's Q term by ``mean|Q_mix|`` (detached). Implied by ``bc_alpha``.
        actor_penalty: optional module ``td -> Tensor[batch]`` added to the actor loss.
        delay_actor: keep target actor parameters. Default True.
        delay_qvalue: keep target critic parameters. Default True.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        deactivate_vmap: evaluate twins in a Python loop instead of ``vmap``.
        fuse_critics: evaluate ``Q_off`` and ``Q_on`` together, as one ensemble of
            ``2 * num_qvalue_nets`` members: the critic step (:meth:`qvalue_losses`) then runs one
            vmapped call for the current critics and one for the target critics (instead of one
            per twin each), and the actor step one vmapped call over the two first members (instead
            of two forward calls). The losses, diagnostics and gradients are those of the unfused
            computation (to float32 rounding). ``None`` (default): fuse when ``Q_on`` exists and the
            two twins have the same structure (parameter keys, shapes, dtypes and devices, in/out
            keys and module architecture); ``True``: fuse, and raise ``ValueError`` at construction
            when the structures differ; ``False``: evaluate each twin separately. The resolved
            choice is the attribute ``fused_critics``. :meth:`qvalue_off_loss`,
            :meth:`qvalue_on_loss` and :meth:`online_pretrain_loss` always evaluate one twin.
            One difference: both twins' parameters feed one autograd node, so back-propagating
            only one twin's loss from :meth:`qvalue_losses` gives the other twin zero gradients
            (``grad`` filled with zeros) where the unfused path leaves them ``None``; use
            :meth:`qvalue_on_loss` / :meth:`qvalue_off_loss` to differentiate one twin alone.

    The input tensordict uses TorchRL's transition layout: ``observation``, ``action``,
    ``next/{observation, reward, done, terminated}``. ``forward`` returns ``loss_actor``,
    ``loss_qvalue_off``, ``loss_qvalue_on`` (when ``Q_on`` exists) and detached diagnostics: ``kappa``,
    the batch means of each critic's prediction (``pred_value_*``), of its target
    (``target_value_*``), of the first critic at the actor's action (``state_action_value_*``), and of the
    BC term and penalty when enabled.
    """

    actor_network: TensorDictModule
    qvalue_off_network: TensorDictModule
    qvalue_on_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_off_network_params: TensorDictParams
    target_qvalue_off_network_params: TensorDictParams
    qvalue_on_network_params: TensorDictParams
    target_qvalue_on_network_params: TensorDictParams


    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_off_network: TensorDictModule | list[TensorDictModule],
        qvalue_on_network: TensorDictModule | list[TensorDictModule] | None = None,
        *,
        action_spec: TensorSpec | None = None,
        bounds: tuple[float, float] | None = None,
        num_qvalue_nets: int = 2,
        kappa: float = 0.0,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        loss_function: str = "l2",
        bc_alpha: float | None = None,
        normalize_q: bool = False,
        actor_penalty: nn.Module | None = None,
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        reduction: str = "mean",
        deactivate_vmap: bool = False,
        fuse_critics: bool | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(kappa) <= 1.0:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        if qvalue_on_network is None and float(kappa) != 0.0:
            raise ValueError(
                f"kappa={kappa} weights a Q_on critic, but qvalue_on_network is None; "
                "pass the online critic or use kappa=0 (plain TD3 on Q_off)."
            )
        if bc_alpha is not None and bc_alpha <= 0:
            raise ValueError(f"bc_alpha must be positive (or None), got {bc_alpha}")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(
                f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self._in_keys = None
        self.delay_actor = delay_actor
        self.delay_qvalue = delay_qvalue
        self.deactivate_vmap = deactivate_vmap
        self.num_qvalue_nets = num_qvalue_nets
        self.has_qvalue_on = qvalue_on_network is not None
        self.policy_noise = policy_noise
        self.noise_clip = noise_clip
        self.loss_function = loss_function
        self.bc_alpha = bc_alpha
        self.normalize_q = normalize_q or bc_alpha is not None
        self.actor_penalty = actor_penalty
        self.reduction = reduction

        self.convert_to_functional(
            actor_network, "actor_network", create_target_params=delay_actor
        )
        self._convert_critic(qvalue_off_network, "qvalue_off_network", target=delay_qvalue)
        if self.has_qvalue_on:
            self._convert_critic(qvalue_on_network, "qvalue_on_network", target=delay_qvalue)

        device = next(iter(self.parameters())).device
        low, high = _action_bounds(action_spec, bounds, self.tensor_keys.action)
        self.register_buffer("min_action", low.to(device))
        self.register_buffer("max_action", high.to(device))
        self.register_buffer("kappa", torch.tensor(float(kappa), device=device))
        #: whether the two twins are evaluated as one ensemble (see ``fuse_critics``).
        self.fused_critics = self._resolve_fuse_critics(fuse_critics)
        self._finish_init()

    def _resolve_fuse_critics(self, fuse_critics: bool | None) -> bool:
        if fuse_critics is not None and not isinstance(fuse_critics, bool):
            raise TypeError(f"fuse_critics must be a bool or None, got {fuse_critics!r}")
        if fuse_critics is False:
            return False
        if not self.has_qvalue_on:
            if fuse_critics:
                raise ValueError(
                    "fuse_critics=True needs two critic twins, but qvalue_on_network is None; "
                    "use fuse_critics=None or False."
                )
            return False
        mismatch = self._critic_structure_mismatch()
        if mismatch is None:
            return True
        if fuse_critics:
            raise ValueError(
                f"fuse_critics=True needs Q_off and Q_on of identical structure, but {mismatch}; "
                "pass fuse_critics=False (or None) to evaluate the twins separately."
            )
        return False

    def _critic_structure_mismatch(self) -> str | None:
        """Why the twins cannot be evaluated as one ensemble, or ``None`` when they can."""

        def leaves(params):
            return {
                key if isinstance(key, tuple) else (key,): value
                for key, value in params.items(True, True)
            }

        off, on = leaves(self.qvalue_off_network_params), leaves(self.qvalue_on_network_params)
        only_off, only_on = sorted(set(off) - set(on)), sorted(set(on) - set(off))
        if only_off or only_on:
            return (
                f"the parameter keys differ (only in Q_off: {only_off}, only in Q_on: {only_on})"
            )
        for key in off:
            a, b = off[key], on[key]
            for what in ("shape", "dtype", "device"):
                if getattr(a, what) != getattr(b, what):
                    return (
                        f"parameter {key} has {what} {getattr(a, what)} in Q_off and "
                        f"{getattr(b, what)} in Q_on"
                    )
        net_off, net_on = self.qvalue_off_network, self.qvalue_on_network
        for what in ("in_keys", "out_keys"):
            if list(getattr(net_off, what)) != list(getattr(net_on, what)):
                return (
                    f"the critics' {what} differ ({list(getattr(net_off, what))} in Q_off, "
                    f"{list(getattr(net_on, what))} in Q_on)"
                )
        if repr(net_off) != repr(net_on):
            return f"the critic architectures differ:\n{net_off}\nvs\n{net_on}"
        return None

    @property
    def out_keys(self) -> list[str]:
        keys = ["loss_actor", *[f"loss_qvalue_{c}" for c in self.critics], "kappa"]
        for critic in self.critics:
            keys += [
                f"state_action_value_{critic}",
                f"pred_value_{critic}",
                f"target_value_{critic}",
            ]
        if self.bc_alpha is not None:
            keys.append("bc_loss")
        if self.actor_penalty is not None:
            keys.append("actor_penalty")
        return keys

    # ------------------------------------------------------------------ pieces
    def _critic_values(
        self,
        critic: str,
        tensordict: TensorDictBase,
        params: TensorDictBase,
        members: int | None = None,
    ) -> torch.Tensor:
        """``Q_c,i(s, a)`` for every member ``i`` of twin ``c``: shape ``[members, *batch]``.

        ``members`` (default ``num_qvalue_nets``) is the leading size of ``params``; the fused path
        passes both twins' parameters concatenated (``2 * num_qvalue_nets`` members) to the
        ``"off"`` network, whose architecture is then that of both twins.
        """
        if members is None:
            members = self.num_qvalue_nets
        td = tensordict.select(
            *getattr(self, f"qvalue_{critic}_network").in_keys, strict=False
        ).expand(members, *tensordict.batch_size)
        out = self._vmap_qvalue[critic](td, params)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def _fused_params(self, prefix: str = "", first: bool = False) -> TensorDictBase:
        """``Q_off``'s and ``Q_on``'s parameter groups concatenated along the ensemble dimension.

        Read from the live groups at every call (the functional steps swap their contents).
        ``first``: only the first member of each twin (2 members).
        """
        off = getattr(self, f"{prefix}qvalue_off_network_params")
        on = getattr(self, f"{prefix}qvalue_on_network_params")
        if first:
            off, on = off[:1], on[:1]
        return torch.cat([off, on], 0)

    def _td_targets(self, tensordict: TensorDictBase, next_q: torch.Tensor) -> torch.Tensor:
        """TD targets ``y`` from bootstrap values ``next_q`` (``[*batch]``, or ``[k, *batch]`` for
        ``k`` critics sharing the batch's rewards and terminations, one target per row)."""
        target_td = tensordict.select(
            "next", self.tensor_keys.action, *self.actor_network.in_keys, strict=False
        )
        if next_q.dim() == tensordict.batch_dims:
            target_td = target_td.clone(False)
            target_td.set(("next", self.tensor_keys.state_action_value), next_q.unsqueeze(-1))
            return self.value_estimator.value_estimate(target_td).squeeze(-1)
        if self._batched_td_targets():
            # TD(0) is elementwise in the batch: one call over the k stacked rows is exactly the
            # k separate calls.
            target_td = target_td.expand(next_q.shape[0], *tensordict.batch_size)
            target_td.set(("next", self.tensor_keys.state_action_value), next_q.unsqueeze(-1))
            return self.value_estimator.value_estimate(target_td).squeeze(-1)
        return torch.stack([self._td_targets(tensordict, q) for q in next_q.unbind(0)], 0)

    def _batched_td_targets(self) -> bool:
        # TD(lambda)/TD(1) run along the batch's time dimension and reward standardisation reduces
        # over the batch: those estimators get one call per critic.
        estimator = self.value_estimator
        return type(estimator) is TD0Estimator and not getattr(estimator, "average_rewards", False)

    def _first_critic_value(self, critic: str, tensordict: TensorDictBase) -> torch.Tensor:
        """``Q_c,1(s, a)`` with detached parameters (the actor's gradient only), shape ``[*batch]``.

        Only the first member is evaluated: TD3's actor maximises the first critic of the twin.
        """
        network = getattr(self, f"qvalue_{critic}_network")
        params = getattr(self, f"qvalue_{critic}_network_params")[0].detach()
        td = tensordict.select(*network.in_keys, strict=False)
        with params.to_module(network, preserve_module_state=False):
            out = network(td)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def _actor_action(self, tensordict: TensorDictBase, params: TensorDictBase) -> TensorDictBase:
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        with params.to_module(self.actor_network, preserve_module_state=False):
            return self.actor_network(td)

    @torch.no_grad()
    def smoothed_next_action(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``s'`` with the TD3 target action ``clip(pibar(s') + clip(N(0, sigma^2), -c, c), low, high)``.

        One noise draw serves every critic of the batch (the shared target actor of Eq. 2).
        """
        action = tensordict.get(self.tensor_keys.action)
        noise = (torch.randn_like(action) * self.policy_noise).clamp(
            -self.noise_clip, self.noise_clip
        )
        next_td = self._actor_action(step_mdp(tensordict), self.target_actor_network_params)
        next_action = (next_td.get(self.tensor_keys.action) + noise).clamp(
            self.min_action, self.max_action
        )
        next_td.set(self.tensor_keys.action, next_action)
        return next_td

    def _critic_loss(
        self,
        critic: str,
        tensordict: TensorDictBase,
        next_td: TensorDictBase,
        params: TensorDictBase | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of one twin (Eq. 2): ``sum_i d(Q_c,i(s,a), y_c)``, reduced over the batch."""
        if params is None:
            params = getattr(self, f"qvalue_{critic}_network_params")
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_q = self._critic_values(
                critic, next_td, getattr(self, f"target_qvalue_{critic}_network_params")
            ).min(0)[0]
            target_value = self._td_targets(tensordict, next_q)
        current_q = self._critic_values(critic, tensordict, params)
        loss = distance_loss(
            current_q, target_value.expand_as(current_q), loss_function=self.loss_function
        ).sum(0)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            f"pred_value_{critic}": current_q.detach().mean(),
            f"target_value_{critic}": target_value.mean(),
        }
        return loss, metadata

    def _fused_critic_losses(
        self, tensordict: TensorDictBase, next_td: TensorDictBase
    ) -> dict[str, torch.Tensor]:
        """:meth:`_critic_loss` of both twins, with each ensemble call made once for both twins.

        The ``2 * num_qvalue_nets`` members (``Q_off``'s then ``Q_on``'s) are evaluated in one
        vmapped call at the target parameters and one at the current parameters; the minimum, the
        TD target and the loss are then taken per twin, as the unfused path does.
        """
        n, k = self.num_qvalue_nets, len(CRITICS)
        weights = self._maybe_get_priority_weight(tensordict)
        with torch.no_grad():
            next_q = self._critic_values(
                "off", next_td, self._fused_params("target_"), k * n
            )  # [k * n, *batch]
            next_q = next_q.unflatten(0, (k, n)).min(1)[0]  # [k, *batch]: per-twin minimum
            target_value = self._td_targets(tensordict, next_q)  # [k, *batch]
        current_q = self._critic_values("off", tensordict, self._fused_params(), k * n)
        current_q = current_q.unflatten(0, (k, n))  # [k, n, *batch]
        losses = distance_loss(
            current_q,
            target_value.unsqueeze(1).expand_as(current_q),
            loss_function=self.loss_function,
        ).sum(1)  # [k, *batch]
        out = {}
        for i, critic in enumerate(CRITICS):
            out[f"loss_qvalue_{critic}"] = self._reduce_loss(
                losses[i], tensordict=tensordict, weights=weights
            )
            out[f"pred_value_{critic}"] = current_q[i].detach().mean()
            out[f"target_value_{critic}"] = target_value[i].mean()
        return out

    # ------------------------------------------------------------------ losses
    def actor_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 4 (with the optional BC term, Q normalisation and penalty)."""
        weights = self._maybe_get_priority_weight(tensordict)
        actor_td = self._actor_action(tensordict, self.actor_network_params)
        if self.fused_critics:
            # the first member of each twin, detached, in one vmapped call over 2 members
            q = self._critic_values("off", actor_td, self._fused_params(first=True).detach(), 2)
            q_first = dict(zip(CRITICS, q.unbind(0)))
        else:
            q_first = {
                critic: self._first_critic_value(critic, actor_td) for critic in self.critics
            }
        q_mix = q_first["off"]
        if self.has_qvalue_on:
            q_mix = (1 - self.kappa) * q_first["off"] + self.kappa * q_first["on"]
        metadata = {
            f"state_action_value_{critic}": q.detach().mean() for critic, q in q_first.items()
        }
        q_term = q_mix
        if self.normalize_q:
            q_term = q_term / q_mix.abs().mean().detach()
        if self.bc_alpha is not None:
            q_term = self.bc_alpha * q_term
        loss = -q_term
        if self.bc_alpha is not None:
            bc = (
                (actor_td.get(self.tensor_keys.action) - tensordict.get(self.tensor_keys.action))
                .pow(2)
                .mean(-1)
            )
            loss = loss + bc
            metadata["bc_loss"] = bc.detach().mean()
        if self.actor_penalty is not None:
            penalty = self.actor_penalty(actor_td)
            loss = loss + penalty
            metadata["actor_penalty"] = penalty.detach().mean()
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        return loss, metadata

    def qvalue_off_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_off`` (Eq. 2)."""
        return self._critic_loss("off", tensordict, self.smoothed_next_action(tensordict))

    def qvalue_on_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_on`` (Eq. 2), optionally at other parameters ``params`` (functional use)."""
        self._require_qvalue_on()
        return self._critic_loss("on", tensordict, self.smoothed_next_action(tensordict), params)

    def qvalue_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Both critics' TD losses with one shared smoothed next action: the critic step of OPT."""
        next_td = self.smoothed_next_action(tensordict)
        if self.fused_critics:
            return TensorDict(self._fused_critic_losses(tensordict, next_td), batch_size=[])
        out = {}
        for critic in self.critics:
            loss, metadata = self._critic_loss(critic, tensordict, next_td)
            out[f"loss_qvalue_{critic}"] = loss
            out.update(metadata)
        return TensorDict(out, batch_size=[])

    def online_pretrain_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss online pre-training minimises for the online critics: ``Q_on``'s TD loss.

        ``params``, when given, is a TensorDict keyed by :attr:`online_param_names`; the loss is then
        evaluated at those parameters (the meta-adaptation inner step needs this).
        """
        on_params = None if params is None else params["qvalue_on_network_params"]
        return self.qvalue_on_loss(tensordict, on_params)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses on one batch: ``loss_actor`` (Eq. 4) and each critic's TD loss (Eq. 2)."""
        loss_actor, metadata_actor = self.actor_loss(tensordict)
        out = self.qvalue_losses(tensordict)
        out.set("loss_actor", loss_actor)
        out.set("kappa", self.kappa.detach().clone())
        out.update(metadata_actor)
        return out

def _action_bounds(
    action_spec: TensorSpec | None,
    bounds: tuple | None,
    action_key: NestedKey,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` from exactly one of ``action_spec`` and ``bounds``."""
    if (action_spec is None) == (bounds is None):
        raise ValueError(
            "Exactly one of 'action_spec' and 'bounds' must be given, "
            f"got action_spec={action_spec} and bounds={bounds}."
        )
    if action_spec is not None:
        if isinstance(action_spec, Composite):
            action_spec = action_spec[action_key]
        if not isinstance(action_spec, Bounded):
            raise ValueError(f"action_spec must be Bounded, got {type(action_spec).__name__}")
        low, high = action_spec.space.low, action_spec.space.high
    else:
        low, high = bounds
    low = torch.as_tensor(low, dtype=torch.float32)
    high = torch.as_tensor(high, dtype=torch.float32)
    if (low > high).any():
        raise ValueError("Got an action lower bound higher than the upper bound.")
    return low, high
