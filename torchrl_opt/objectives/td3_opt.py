"""OPTLoss: the dual-critic TD3 loss of OPT's fine-tuning phase (Shin, Kim et al., ICML 2025).

Two twin critics are trained side by side on the same batch, each with its own target parameters:
``Q_off`` (from offline pre-training) and ``Q_on`` (from online pre-training). Both regress onto
their own TD3 target (Eq. 2)::

    y_c = r + gamma * (1 - terminated) * min_i Qbar_c,i(s', clip(pibar(s') + eps, low, high)),
    eps = clip(N(0, sigma^2), -c, c),               c in {off, on}

with the *shared* target actor ``pibar`` and one noise draw per batch. The actor maximises the
kappa-weighted first critic of each twin (Eq. 4)::

    L_pi = E_s[ -((1 - kappa) * Q_off,1(s, pi(s)) + kappa * Q_on,1(s, pi(s))) ]

Without ``Q_on`` (and with default arguments) the module is TorchRL's ``TD3Loss``: same values,
gradients, out keys, ``(loss, metadata)`` methods and ``td_error`` priority (see the class docstring).

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

from torchrl_opt.objectives.common import CRITICS, DualCriticLoss, require_keys

__all__ = ["OPTLoss"]


class OPTLoss(DualCriticLoss):
    """Dual-critic TD3 loss of OPT (Eq. 2 for each critic, Eq. 4 for the actor).

    Without ``qvalue_on_network`` and with default arguments this *is* TorchRL's
    :class:`~torchrl.objectives.TD3Loss` with default arguments: the same loss values and gradients
    for the same parameters and smoothing noise, the same out keys (``loss_actor``, ``loss_qvalue``,
    ``pred_value``, ``state_action_value_actor``, ``next_state_value``, ``target_value``), the same
    ``actor_loss(td)``/``value_loss(td) -> (loss, metadata)`` methods, and ``forward`` writes the
    priority ``td_error`` into its input for TorchRL's prioritised replay. With ``Q_on`` every
    per-critic entry gets a twin with the suffix ``_on`` (``loss_qvalue_on``, ``pred_value_on``, ...;
    :meth:`~torchrl_opt.objectives.common.DualCriticLoss.critic_key`) and the actor loss becomes
    Eq. 4. Two documented differences from ``TD3Loss``: diagnostics are batch means (per-sample,
    with TorchRL's shapes, under ``reduction="none"``), and ``state_action_value_actor`` is the
    first critic ``Q_1(s, pi(s))`` (the one the actor maximises) where ``TD3Loss`` reports every
    member.

    Args:
        actor_network: deterministic actor (``observation -> action``).
        qvalue_off_network: the offline critic ``Q_off``: one module (duplicated ``num_qvalue_nets``
            times, TorchRL style: the copies are *re-drawn* uniformly, so pass a list to keep
            trained weights) or a list of ``num_qvalue_nets`` modules (their weights are copied).
            To start from a trained offline agent, see
            :func:`~torchrl_opt.objectives.handover.load_offline`.
        qvalue_on_network: the online critic ``Q_on`` in the same form, or ``None`` for plain TD3.

    Keyword Args:
        action_spec: bounded action spec (exclusive with ``bounds``).
        bounds: ``(low, high)`` of the action space (exclusive with ``action_spec``).
        num_qvalue_nets: critics per twin. Default 2.
        kappa: initial weight of ``Q_on`` in the actor loss, in [0, 1]. Must be 0 without ``Q_on``.
        policy_noise: std of the target policy smoothing noise. Default 0.2.
        noise_clip: clip of that noise. Default 0.5.
        loss_function: ``"smooth_l1"`` (default, as ``TD3Loss``), ``"l2"`` (TD3's and the OPT
            paper's MSE; the recipes set it) or ``"l1"``.
        bc_alpha: TD3+BC's alpha; ``None`` (default) disables the BC term.
        normalize_q: divide the actor's Q term by ``mean|Q_mix|`` (detached). Implied by ``bc_alpha``.
        actor_penalty: optional module ``td -> Tensor[batch]`` added to the actor loss.
        delay_actor: keep target actor parameters. Default True.
        delay_qvalue: keep target critic parameters. Default True.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses ``[*batch]``
            and per-sample diagnostics).
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
        generator: a ``torch.Generator`` (on the actions' device) for the smoothing noise of every
            call; ``None`` (default) draws from torch's global RNG, which is what ``torch.compile``
            and CUDA graphs capture. Every method that draws the noise also takes ``generator=``
            for one call.

    Input: TorchRL's transition layout, ``observation``, ``action``,
    ``next/{observation, reward, done, terminated}`` (rename with :meth:`set_keys`); an optional
    ``priority_weight`` (importance weights of a prioritised buffer) weights every loss. A missing
    key raises :class:`~torchrl_opt.objectives.common.LossInputError` naming it.

    Output of :meth:`forward`: ``loss_actor`` (Eq. 4), ``loss_qvalue`` (and ``loss_qvalue_on``) and
    detached diagnostics per critic ``c``: ``pred_value`` (``Q_c,i(s, a)``), ``target_value``
    (``y_c``), ``next_state_value`` (``min_i Qbar_c,i(s', a')``), ``state_action_value_actor``
    (``Q_c,1(s, pi(s))``); ``kappa`` with ``Q_on``; ``bc_loss`` and ``actor_penalty`` when enabled.
    ``forward`` also writes ``td_error`` (``tensor_keys.priority``) into its input: see
    :meth:`~torchrl_opt.objectives.common.DualCriticLoss._write_priority`. The step methods
    (:meth:`qvalue_losses`, :meth:`actor_loss`) never write into their input, so they run under
    ``torch.func`` transforms, ``vmap`` and ``torch.compile(fullgraph=True)``.
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
        loss_function: str = "smooth_l1",
        bc_alpha: float | None = None,
        normalize_q: bool = False,
        actor_penalty: nn.Module | None = None,
        delay_actor: bool = True,
        delay_qvalue: bool = True,
        reduction: str = "mean",
        deactivate_vmap: bool = False,
        fuse_critics: bool | None = None,
        generator: torch.Generator | None = None,
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
                f"loss_function must be 'smooth_l1', 'l2' or 'l1', got {loss_function!r}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
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
        #: default generator of the smoothing noise (``None``: torch's global RNG).
        self.generator = generator

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

    def _default_out_keys(self) -> list[str]:
        keys = ["loss_actor", *self.qvalue_loss_keys]
        for critic in self.critics:
            keys += [
                self.critic_key(name, critic)
                for name in (
                    "pred_value",
                    "state_action_value_actor",
                    "next_state_value",
                    "target_value",
                )
            ]
        if self.has_qvalue_on:
            keys.append("kappa")
        if self.bc_alpha is not None:
            keys.append("bc_loss")
        if self.actor_penalty is not None:
            keys.append("actor_penalty")
        return keys

    # ------------------------------------------------------------------ inputs
    def _actor_input_keys(self) -> list[NestedKey]:
        keys = list(self.actor_network.in_keys)
        if self.bc_alpha is not None:
            keys.append(self.tensor_keys.action)
        return keys

    def _critic_input_keys(self, critics: tuple[str, ...]) -> list[NestedKey]:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *[("next", key) for key in self.actor_network.in_keys],
        ]
        for critic in critics:
            keys += [
                key
                for key in getattr(self, f"qvalue_{critic}_network").in_keys
                if key != self.tensor_keys.action
            ]
        return keys

    def _check_critic_input(self, tensordict: TensorDictBase, where: str, critics=None) -> None:
        require_keys(
            tensordict,
            self._critic_input_keys(self.critics if critics is None else critics),
            f"{type(self).__name__}.{where}",
            hint=_SET_KEYS_HINT,
        )

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

    def _smoothing_noise(
        self, action: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``clip(N(0, sigma^2), -c, c)`` shaped like ``action``, drawn from ``generator`` (or the
        loss's :attr:`generator`, or torch's global RNG, as ``TD3Loss``'s ``randn_like``)."""
        if generator is None:
            generator = self.generator
        if generator is None:
            noise = torch.randn_like(action)
        else:
            noise = torch.randn(
                action.shape, generator=generator, device=action.device, dtype=action.dtype
            )
        return (noise * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)

    @torch.no_grad()
    def smoothed_next_action(
        self, tensordict: TensorDictBase, *, generator: torch.Generator | None = None
    ) -> TensorDictBase:
        """``s'`` with the TD3 target action ``clip(pibar(s') + clip(N(0, sigma^2), -c, c), low, high)``.

        One noise draw serves every critic of the batch (the shared target actor of Eq. 2).
        ``generator``: see the class's ``generator`` argument.
        """
        action = tensordict.get(self.tensor_keys.action)
        noise = self._smoothing_noise(action, generator)
        next_td = self._actor_action(step_mdp(tensordict), self.target_actor_network_params)
        next_action = (next_td.get(self.tensor_keys.action) + noise).clamp(
            self.min_action, self.max_action
        )
        next_td.set(self.tensor_keys.action, next_action)
        return next_td

    def _critic_metadata(
        self,
        critic: str,
        current_q: torch.Tensor,
        target_value: torch.Tensor,
        next_q: torch.Tensor,
        td_error: bool,
    ) -> dict[str, torch.Tensor]:
        """Diagnostics of twin ``c`` (``_on``-suffixed for ``Q_on``), and its squared TD errors
        ``(Q_c,i(s, a) - y_c)^2`` (``[num_qvalue_nets, *batch]``, as ``TD3Loss``) with ``td_error``."""
        key = self.critic_key
        metadata = {
            key("pred_value", critic): self._metric(current_q),
            key("next_state_value", critic): self._metric(next_q),
            key("target_value", critic): self._metric(target_value),
        }
        if td_error:
            metadata[key("td_error", critic)] = (current_q - target_value).detach().pow(2)
        return metadata

    def _critic_loss(
        self,
        critic: str,
        tensordict: TensorDictBase,
        next_td: TensorDictBase,
        params: TensorDictBase | None = None,
        td_error: bool = False,
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
        return loss, self._critic_metadata(critic, current_q, target_value, next_q, td_error)

    def _fused_critic_losses(
        self, tensordict: TensorDictBase, next_td: TensorDictBase, td_error: bool = False
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
            out[self.critic_key("loss_qvalue", critic)] = self._reduce_loss(
                losses[i], tensordict=tensordict, weights=weights
            )
            out.update(
                self._critic_metadata(
                    critic, current_q[i], target_value[i], next_q[i], td_error
                )
            )
        return out

    def _critic_outputs(
        self,
        tensordict: TensorDictBase,
        generator: torch.Generator | None,
        td_error: bool,
        where: str,
    ) -> dict[str, torch.Tensor]:
        """Every critic's loss (under :attr:`qvalue_loss_keys`) and diagnostics, with one shared
        smoothed next action."""
        self._check_critic_input(tensordict, where)
        next_td = self.smoothed_next_action(tensordict, generator=generator)
        if self.fused_critics:
            return self._fused_critic_losses(tensordict, next_td, td_error)
        out = {}
        for critic in self.critics:
            loss, metadata = self._critic_loss(critic, tensordict, next_td, td_error=td_error)
            out[self.critic_key("loss_qvalue", critic)] = loss
            out.update(metadata)
        return out

    # ------------------------------------------------------------------ losses
    def actor_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 4: ``L_pi = E_s[-((1 - kappa) Q_off,1(s, pi(s)) + kappa Q_on,1(s, pi(s)))]``.

        Without ``Q_on`` this is ``TD3Loss.actor_loss``: ``E_s[-Q_1(s, pi(s))]``. With ``bc_alpha``
        the Q term becomes ``alpha / mean|Q_mix| * Q_mix`` (detached denominator) plus
        ``mean_a (pi(s) - a)^2``; ``normalize_q`` divides it by ``mean|Q_mix|``; the penalty is added
        per sample. Returns ``(loss, metadata)`` as TorchRL does.
        """
        require_keys(
            tensordict,
            self._actor_input_keys(),
            f"{type(self).__name__}.actor_loss",
            hint=_SET_KEYS_HINT,
        )
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
            self.critic_key("state_action_value_actor", critic): self._metric(q)
            for critic, q in q_first.items()
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
            metadata["bc_loss"] = self._metric(bc)
        if self.actor_penalty is not None:
            penalty = self.actor_penalty(actor_td)
            loss = loss + penalty
            metadata["actor_penalty"] = self._metric(penalty)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        return loss, metadata

    def value_loss(
        self, tensordict: TensorDictBase, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The critics' TD loss (Eq. 2) as ``TD3Loss.value_loss``: ``(loss, metadata)``.

        ``loss`` is ``loss_qvalue`` (plus ``loss_qvalue_on`` with ``Q_on``: the twins have separate
        parameters, so one backward of the sum trains each on its own loss). ``metadata`` holds the
        diagnostics of every critic and its squared TD errors ``td_error`` (``td_error_on``),
        ``[num_qvalue_nets, *batch]`` as in TorchRL. Nothing is written into ``tensordict``.
        """
        out = self._critic_outputs(tensordict, generator, True, "value_loss")
        loss = sum(out.pop(key) for key in self.qvalue_loss_keys)
        return loss, out

    def qvalue_off_loss(
        self,
        tensordict: TensorDictBase,
        params: TensorDictBase | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_off`` alone (Eq. 2), ``(loss, metadata)``, optionally at other parameters
        ``params`` (functional use: the ``no_qon`` ablation pre-trains ``Q_off`` itself)."""
        self._check_critic_input(tensordict, "qvalue_off_loss", ("off",))
        return self._critic_loss(
            "off", tensordict, self.smoothed_next_action(tensordict, generator=generator), params
        )

    def qvalue_on_loss(
        self,
        tensordict: TensorDictBase,
        params: TensorDictBase | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_on`` (Eq. 2), optionally at other parameters ``params`` (functional use)."""
        self._require_qvalue_on()
        self._check_critic_input(tensordict, "qvalue_on_loss", ("on",))
        return self._critic_loss(
            "on", tensordict, self.smoothed_next_action(tensordict, generator=generator), params
        )

    def qvalue_losses(
        self,
        tensordict: TensorDictBase,
        *,
        generator: torch.Generator | None = None,
        td_error: bool = False,
    ) -> TensorDictBase:
        """The critic step of OPT: every critic's TD loss (Eq. 2) with one shared smoothed next
        action, as a TensorDict: :attr:`qvalue_loss_keys` (``loss_qvalue``, ``loss_qvalue_on``) and
        the critics' diagnostics; with ``td_error`` also the squared TD errors ``td_error``
        (``td_error_on``), ``[num_qvalue_nets, *batch]``. Nothing is written into ``tensordict``."""
        return TensorDict(
            self._critic_outputs(tensordict, generator, td_error, "qvalue_losses"), batch_size=[]
        )

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
        """All losses on one batch, as ``TD3Loss.forward``: ``loss_actor`` (Eq. 4), each critic's TD
        loss (Eq. 2) and the diagnostics; writes ``tensor_keys.priority`` into ``tensordict``."""
        loss_actor, metadata_actor = self.actor_loss(tensordict)
        out = self._critic_outputs(tensordict, None, True, "forward")
        self._write_priority(
            tensordict, [out.pop(self.critic_key("td_error", c)) for c in self.critics]
        )
        out["loss_actor"] = loss_actor
        out.update(metadata_actor)
        if self.has_qvalue_on:
            out["kappa"] = self.kappa.detach().clone()
        return TensorDict(out, batch_size=[])


_SET_KEYS_HINT = (
    "If your data names these entries differently, map them with loss.set_keys(action=..., "
    "reward=..., done=..., terminated=...)."
)


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
