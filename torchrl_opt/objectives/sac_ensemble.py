"""EnsembleSACLoss: SAC with a LayerNorm critic ensemble and random-subset targets (RLPD, WSRL, PORL),
and its OPT extension with a second ensemble ``Q_on`` (RLPD+OPT, Sec. 5.6 of the OPT paper).

Each ensemble ``c`` (``off``; and ``on`` for OPT) holds ``N`` independently initialised critics
(``N = 10`` in RLPD/WSRL/PORL), evaluated together by one ``torch.vmap`` call over their stacked
parameters. Every critic of ensemble ``c`` regresses onto the same target (RLPD, Ball et al. 2023)::

    a' ~ pi(.|s'),   M = m members of {1..N}, drawn uniformly               (m = num_min_qs = 2)
    y_c = r + gamma * (1 - terminated) * (min_{i in M} Qbar_c,i(s', a') - alpha * log pi(a'|s'))
    L_c = sum_i E[(Q_c,i(s, a) - y_c)^2]

``M`` is drawn without replacement (RLPD, ``subset_replacement=False``) or with replacement (WSRL's
``jax.random.randint``, ``subset_replacement=True``); one subset per update, shared by the batch. The
``- alpha * log pi`` term is dropped with ``backup_entropy=False`` (WSRL, CQL, Cal-QL). With
``max_target_backup=True`` (CQL's and WSRL-AntMaze's max-target backup) ``k = num_backup_actions``
next actions are drawn per state and the backup takes the best::

    y_c = r + gamma * (1 - terminated) * max_{j <= k} (min_{i in M} Qbar_c,i(s', a'_j)
                                                        - alpha * log pi(a'_j|s'))

The actor maximises a reduction ``R`` of each ensemble (``actor_q_reduction``: the ensemble *mean*
for RLPD, the *min over all N critics* for WSRL), kappa-mixed across ensembles (OPT's Eq. 4 analogue;
``kappa = 0`` is plain RLPD/WSRL)::

    a ~ pi(.|s) (reparameterised)
    L_pi = E[ alpha * log pi(a|s) - ((1 - kappa) * R_i Q_off,i(s, a) + kappa * R_i Q_on,i(s, a)) ]

and the temperature follows automatic entropy tuning (Haarnoja et al. 2018)::

    L_alpha = E[ -log_alpha * (log pi(a|s) + H_target) ],
    H_target = -|A| / 2 ("auto", RLPD) or -|A| ("-action_dim": SAC, WSRL, Cal-QL) or a number.

**Seed batching and compilation.** The pipeline trains ``S`` seeds in one graph with
``torch.vmap(..., randomness="different")`` over functional steps
(:class:`~torchrl_opt.pipeline.functional.SeedBatchedStep`). Everything here is written for it:
the reparameterised draws use :func:`vmap_safe_rsample_and_log_prob` (the base noise drawn out of
place; TorchRL's ``TanhNormal.rsample`` fills an unbatched tensor in place, which ``vmap``
refuses), the subset draw is a device op, and ``log_alpha`` lives in its own ``TensorDictParams``
group ``log_alpha_params`` so that a functional step can differentiate it: the critic step trains
:attr:`critic_param_names` on :attr:`qvalue_loss_keys` (``qvalue_losses``), the actor step trains
:attr:`actor_param_names` (``("actor_network_params", "log_alpha_params")``) on
:attr:`actor_loss_keys` (``actor_alpha_losses``).

**Why not TorchRL's SACLoss or REDQLoss.** ``SACLoss`` takes the min over *all* target critics and
computes actor, critic and temperature losses in one forward. ``REDQLoss`` does use a random subset for
the target and the ensemble mean for the actor, but (i) its fused forward makes a high-UTD schedule
(RLPD: 20 critic updates per actor update) pay for 20 actor passes; (ii) it draws the subset with a
host-side ``torch.randperm``, which a CUDA graph would freeze at capture; (iii) it clamps alpha to
``[0.1, 10]`` by default while RLPD does not; (iv) it has no second ensemble for OPT's ``Q_on`` nor the
``online_params``/``online_pretrain_loss`` protocol of
:class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss`; (v) neither is vmap-safe over seeds. This
module keeps TorchRL's conventions (``_AcceptedKeys``/``set_keys``, ``convert_to_functional``,
``target_*_params`` for ``SoftUpdate``, ``make_value_estimator``, TorchRL's out-key names) and exposes
the losses as separate methods so each can be its own compiled step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Number

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from tensordict.utils import NestedKey
from torch import distributions as D
from torch import nn
from torch.distributions.utils import _sum_rightmost
from torchrl.data.tensor_specs import Composite, TensorSpec
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.objectives.utils import distance_loss

from torchrl_opt.objectives.common import DualCriticLoss, require_keys

__all__ = [
    "ACTOR_Q_REDUCTIONS",
    "LOG_ALPHA_KEY",
    "EnsembleSACLoss",
    "OPTEnsembleSACLoss",
    "vmap_safe_rsample_and_log_prob",
]

#: how the actor loss reduces an ensemble's Q-values: RLPD's mean, WSRL's min over all critics.
ACTOR_Q_REDUCTIONS = ("mean", "min")
#: where the log-temperature lives in the ``log_alpha_params`` group.
LOG_ALPHA_KEY = ("temperature", "log_alpha")


def vmap_safe_rsample_and_log_prob(dist: D.Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterised draw and its log-probability, safe under ``vmap(randomness="different")``.

    For a transformed normal ``a = f(u)``, ``u = mu + sigma * eps`` (TorchRL's ``TanhNormal``: ``f`` is
    tanh, then the affine map onto the action box)::

        eps ~ N(0, I)   (torch.randn_like(mu): out of place)
        log pi(a) = log N(u; mu, sigma) - sum_event log |det df/du (u)|

    exactly as ``TanhNormal.rsample_and_log_prob`` computes it (the log-probability of the drawn
    pre-image, not of the re-inverted action), so for the same ``eps`` the values are TorchRL's.
    TorchRL draws ``eps`` with an in-place ``normal_()`` on a fresh (unbatched) tensor, which
    ``torch.vmap(randomness="different")`` refuses; ``randn_like`` of the batched ``mu`` is a batched
    draw. On CPU both consume the global generator identically.

    Args:
        dist: a ``TransformedDistribution`` with one transform over a ``Normal`` or an
            ``Independent(Normal)`` base (``TanhNormal``).
    """
    if not isinstance(dist, D.TransformedDistribution) or len(dist.transforms) != 1:
        raise TypeError(
            "vmap_safe_rsample_and_log_prob needs a transformed normal with one transform "
            f"(TanhNormal), got {type(dist).__name__}"
        )
    base = dist.base_dist
    normal = base.base_dist if isinstance(base, D.Independent) else base
    if not isinstance(normal, D.Normal):
        raise TypeError(
            "vmap_safe_rsample_and_log_prob needs a Normal base distribution, got "
            f"{type(normal).__name__}"
        )
    preimage = normal.loc + torch.randn_like(normal.loc) * normal.scale
    transform = dist.transforms[0]
    sample = transform(preimage)
    log_prob = base.log_prob(preimage) - _sum_rightmost(
        transform.log_abs_det_jacobian(preimage, sample), len(dist.event_shape)
    )
    return sample, log_prob


def repeat_samples(tensordict: TensorDictBase, num: int) -> TensorDictBase:
    """``tensordict`` with a new trailing batch dimension of size ``num`` (a view, no copy).

    Row ``(b, j)`` of the result is row ``b`` of the input; in memory order this is TorchRL's
    ``repeat_interleave(num)`` of the rows, so ``num`` draws per state come out in the same order.
    """
    return tensordict.unsqueeze(-1).expand(*tensordict.batch_size, num)


class EnsembleSACLoss(DualCriticLoss):
    """SAC with an ``N``-critic ensemble, random-subset min targets and a mean- or min-ensemble actor.

    Args:
        actor_network: a stochastic actor (``ProbabilisticActor`` with a ``TanhNormal``, e.g.
            :func:`torchrl_opt.models.make_gaussian_actor`): ``observation -> action``.
        qvalue_off_network: the (first) ensemble: a list of ``num_qvalue_nets`` independently
            initialised critics (:func:`torchrl_opt.models.make_qvalue_ensemble`, with
            ``layer_norm=True``), or one module duplicated TorchRL style (its copies are filled with
            noise: prefer a list).
        qvalue_on_network: OPT's online ensemble in the same form, or ``None`` (plain RLPD/WSRL/PORL).

    Keyword Args:
        num_qvalue_nets: critics per ensemble. Default 10.
        num_min_qs: size ``m`` of the random subset of target critics whose min forms the target.
            Default 2 (RLPD, WSRL); ``num_min_qs = num_qvalue_nets`` without replacement is the min over
            all (clipped double Q).
        subset_replacement: draw the subset with replacement (WSRL's ``randint``) instead of
            without (RLPD's ``choice(replace=False)``, default).
        actor_q_reduction: ``"mean"`` (RLPD, default) or ``"min"`` (WSRL, SAC): how the actor loss
            reduces each ensemble.
        kappa: initial weight of ``Q_on`` in the actor loss, in [0, 1]; must be 0 without ``Q_on``.
        alpha_init: initial temperature. Default 1.0 (RLPD, WSRL).
        fixed_alpha: keep alpha constant (``log_alpha`` is then a buffer, ``loss_alpha`` is 0 and
            :attr:`actor_param_names` omits ``log_alpha_params``).
        target_entropy: ``"auto"`` (``-|A| / 2``, RLPD; default), ``"-action_dim"`` (``-|A|``: SAC,
            WSRL, Cal-QL, TorchRL's ``"auto"``) or a number.
        action_spec: the action spec; needed for the automatic target entropy when the actor has none.
        backup_entropy: subtract ``alpha * log pi(a'|s')`` in the TD target. Default True (RLPD);
            WSRL, CQL and Cal-QL use False.
        max_target_backup: back up the best of ``num_backup_actions`` next actions (see the module
            docstring). Default False.
        num_backup_actions: next actions per state for the max-target backup. Default 10.
        loss_function: ``"l2"`` (default), ``"smooth_l1"`` or ``"l1"``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.
        generator: optional ``torch.Generator`` (on the loss's device) for the subset draws; ``None``
            uses the default generator, which ``torch.compile``/CUDA graphs/``vmap`` handle.
        deactivate_vmap: evaluate the ensemble in a Python loop (debugging only).

    ``forward`` returns ``loss_actor``, ``loss_alpha``, one ``loss_qvalue`` per ensemble plus detached
    diagnostics: ``alpha``, ``entropy``, ``kappa`` and per ensemble ``pred_value`` (mean ``Q(s, a)``),
    ``target_value`` (mean ``y``) and ``state_action_value`` (mean reduced ``Q(s, pi(s))``). ``Q_off``'s
    entries have TorchRL's plain names, ``Q_on``'s the suffix ``_on`` (:meth:`critic_key`).
    """

    @dataclass
    class _AcceptedKeys(DualCriticLoss._AcceptedKeys):
        """The shared keys (:class:`DualCriticLoss`) plus ``log_prob``, where the actor's
        log-probability of the next action is kept (default ``"action_log_prob"``)."""

        log_prob: NestedKey = "action_log_prob"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    actor_network: TensorDictModule
    qvalue_off_network: TensorDictModule
    qvalue_on_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: None
    qvalue_off_network_params: TensorDictParams
    target_qvalue_off_network_params: TensorDictParams
    qvalue_on_network_params: TensorDictParams
    target_qvalue_on_network_params: TensorDictParams
    log_alpha_params: TensorDictParams

    #: the losses the actor step minimises (summed), see :meth:`actor_alpha_losses`.
    actor_loss_keys: tuple[str, ...] = ("loss_actor", "loss_alpha")

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_off_network: TensorDictModule | list[TensorDictModule],
        qvalue_on_network: TensorDictModule | list[TensorDictModule] | None = None,
        *,
        num_qvalue_nets: int = 10,
        num_min_qs: int = 2,
        subset_replacement: bool = False,
        actor_q_reduction: str = "mean",
        kappa: float = 0.0,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: str | Number = "auto",
        action_spec: TensorSpec | None = None,
        backup_entropy: bool = True,
        max_target_backup: bool = False,
        num_backup_actions: int = 10,
        loss_function: str = "l2",
        reduction: str = "mean",
        generator: torch.Generator | None = None,
        deactivate_vmap: bool = False,
    ) -> None:
        super().__init__()
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}")
        if not 1 <= num_min_qs <= num_qvalue_nets:
            raise ValueError(
                f"num_min_qs must lie in [1, num_qvalue_nets={num_qvalue_nets}], got {num_min_qs}"
            )
        if actor_q_reduction not in ACTOR_Q_REDUCTIONS:
            raise ValueError(
                f"actor_q_reduction must be one of {ACTOR_Q_REDUCTIONS}, got {actor_q_reduction!r}"
            )
        if num_backup_actions < 1:
            raise ValueError(f"num_backup_actions must be >= 1, got {num_backup_actions}")
        if not 0.0 <= float(kappa) <= 1.0:
            raise ValueError(f"kappa must lie in [0, 1], got {kappa}")
        if qvalue_on_network is None and float(kappa) != 0.0:
            raise ValueError(
                f"kappa={kappa} weights a Q_on ensemble, but qvalue_on_network is None; pass the "
                "online ensemble or use kappa=0 (plain ensemble SAC)."
            )
        if alpha_init <= 0:
            raise ValueError(f"alpha_init must be positive, got {alpha_init}")
        if loss_function not in ("l2", "l1", "smooth_l1"):
            raise ValueError(
                f"loss_function must be 'l2', 'l1' or 'smooth_l1', got {loss_function!r}"
            )
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not isinstance(
            actor_network, (ProbabilisticTensorDictSequential, ProbabilisticTensorDictModule)
        ):
            raise TypeError(
                f"{type(actor_network).__name__} is not a probabilistic actor: {type(self).__name__} "
                "needs a stochastic actor (e.g. torchrl_opt.models.make_gaussian_actor)."
            )
        self._in_keys = None
        self.num_qvalue_nets = num_qvalue_nets
        self.num_min_qs = num_min_qs
        self.subset_replacement = bool(subset_replacement)
        self.actor_q_reduction = actor_q_reduction
        self.has_qvalue_on = qvalue_on_network is not None
        self.backup_entropy = backup_entropy
        self.max_target_backup = bool(max_target_backup)
        self.num_backup_actions = num_backup_actions
        self.loss_function = loss_function
        self.reduction = reduction
        self.fixed_alpha = fixed_alpha
        self.generator = generator
        self.deactivate_vmap = deactivate_vmap

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self._convert_critic(qvalue_off_network, "qvalue_off_network")
        if self.has_qvalue_on:
            self._convert_critic(qvalue_on_network, "qvalue_on_network")

        device = next(iter(self.parameters())).device
        log_alpha = torch.tensor(math.log(alpha_init), device=device)
        # its own group, so that a functional step (torch.func) can differentiate it; a plain
        # tensor leaf is a buffer of the group (fixed_alpha). The leaf is nested one level
        # (LOG_ALPHA_KEY) because the functional steps build trainable keys as (group, *key)
        # from nested keys, which would split a top-level string key into characters.
        self.log_alpha_params = TensorDictParams(
            TensorDict(
                {LOG_ALPHA_KEY: log_alpha if fixed_alpha else nn.Parameter(log_alpha)},
                batch_size=[],
            ),
            no_convert=True,
        )
        self.register_buffer(
            "target_entropy",
            torch.tensor(
                _target_entropy(target_entropy, action_spec, actor_network, self.tensor_keys.action),
                device=device,
            ),
        )
        self.register_buffer("kappa", torch.tensor(float(kappa), device=device))
        self._finish_init()

    # ------------------------------------------------------------------ parameters and keys
    @property
    def log_alpha(self) -> torch.Tensor:
        """The log-temperature: the 0-dim leaf ``log_alpha_params[LOG_ALPHA_KEY]`` (an
        ``nn.Parameter``, or a buffer with ``fixed_alpha``)."""
        return self.log_alpha_params.get(LOG_ALPHA_KEY)

    @property
    def alpha(self) -> torch.Tensor:
        """The temperature ``exp(log_alpha)`` (detached)."""
        return self.log_alpha.detach().exp()

    @property
    def actor_param_names(self) -> tuple[str, ...]:
        """The parameter groups the actor step trains: the actor and, unless ``fixed_alpha``, the
        temperature (give them their own learning rates: actor_lr, alpha_lr)."""
        if self.fixed_alpha:
            return ("actor_network_params",)
        return ("actor_network_params", "log_alpha_params")

    def _default_out_keys(self) -> list[str]:
        keys = ["loss_actor", "loss_alpha", *self.qvalue_loss_keys, "alpha", "entropy", "kappa"]
        for critic in self.critics:
            keys += [
                self.critic_key(name, critic)
                for name in ("state_action_value", "pred_value", "target_value")
            ]
        return keys

    # ------------------------------------------------------------------ inputs
    def _critic_input_keys(self) -> list[NestedKey]:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *[("next", key) for key in self.actor_network.in_keys],
        ]
        for critic in self.critics:
            keys += [
                key
                for key in getattr(self, f"qvalue_{critic}_network").in_keys
                if key != self.tensor_keys.action
            ]
        return keys

    def _check_input(self, tensordict: TensorDictBase, keys: list[NestedKey], where: str) -> None:
        require_keys(tensordict, keys, f"{type(self).__name__}.{where}", hint=_SET_KEYS_HINT)

    # ------------------------------------------------------------------ pieces
    def critic_values(
        self, critic: str, tensordict: TensorDictBase, params: TensorDictBase
    ) -> torch.Tensor:
        """``Q_c,i(s, a)`` for every member ``i`` in ``params`` (stacked on dim 0), in ONE vmapped call.

        Returns a tensor of shape ``[params.batch_size[0], *tensordict.batch_size]``.
        """
        td = tensordict.select(
            *getattr(self, f"qvalue_{critic}_network").in_keys, strict=False
        ).expand(params.batch_size[0], *tensordict.batch_size)
        out = self._vmap_qvalue[critic](td, params)
        return out.get(self.tensor_keys.state_action_value).squeeze(-1)

    def draw_members(self, num: int) -> torch.Tensor:
        """Indices of ``num`` ensemble members drawn uniformly, with or without replacement
        (``subset_replacement``).

        Without replacement: ``argsort`` of ``N`` uniforms; with: ``randint``. Both are device ops
        (no host sync), capturable by CUDA graphs and batched by ``vmap``.
        """
        device = self.kappa.device
        if self.subset_replacement:
            return torch.randint(
                self.num_qvalue_nets, (num,), generator=self.generator, device=device
            )
        uniforms = torch.rand(self.num_qvalue_nets, generator=self.generator, device=device)
        return uniforms.argsort()[:num]

    def sample_subset(self) -> torch.Tensor:
        """The ``num_min_qs`` target critics whose min forms the TD target (see :meth:`draw_members`)."""
        return self.draw_members(self.num_min_qs)

    def _sample_action(
        self, tensordict: TensorDictBase, *, reparameterize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``a ~ pi(.|s)`` and ``log pi(a|s)`` (reparameterised when asked, else without gradients)."""
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        with set_exploration_type(ExplorationType.RANDOM), self.actor_network_params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            if reparameterize:
                return vmap_safe_rsample_and_log_prob(self.actor_network.get_dist(td))
            with torch.no_grad():
                return vmap_safe_rsample_and_log_prob(self.actor_network.get_dist(td))

    @torch.no_grad()
    def next_action(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``s'`` with ``a' ~ pi(.|s')`` and its log-probability under ``tensor_keys.log_prob``.

        One draw serves every ensemble of the batch (the online critic of OPT sees the same ``a'``).
        With ``max_target_backup`` the result has a trailing batch dimension of
        ``num_backup_actions`` draws per state.
        """
        next_td = step_mdp(tensordict).select(*self.actor_network.in_keys, strict=False)
        if self.max_target_backup:
            next_td = repeat_samples(next_td, self.num_backup_actions)
        action, log_prob = self._sample_action(next_td, reparameterize=False)
        next_td.set(self.tensor_keys.action, action)
        next_td.set(self.tensor_keys.log_prob, log_prob)
        return next_td

    @torch.no_grad()
    def target_value(
        self,
        critic: str,
        tensordict: TensorDictBase,
        next_td: TensorDictBase,
        subset: torch.Tensor,
    ) -> torch.Tensor:
        """``y_c = r + gamma (1 - d) [max_j] (min_{i in subset} Qbar_c,i(s', a'_j) [- alpha log
        pi(a'_j|s')])``: the max over draws with ``max_target_backup``, the entropy term with
        ``backup_entropy``."""
        target_params = getattr(self, f"target_qvalue_{critic}_network_params")[subset]
        next_q = self.critic_values(critic, next_td, target_params).min(0)[0]
        if self.backup_entropy:
            next_q = next_q - self.alpha * next_td.get(self.tensor_keys.log_prob)
        if self.max_target_backup:
            next_q = next_q.max(-1)[0]
        target_td = tensordict.select(
            "next", self.tensor_keys.action, *self.actor_network.in_keys, strict=False
        ).clone(False)
        target_td.set(("next", self.tensor_keys.state_action_value), next_q.unsqueeze(-1))
        return self.value_estimator.value_estimate(target_td).squeeze(-1)

    def _critic_loss(
        self,
        critic: str,
        tensordict: TensorDictBase,
        next_td: TensorDictBase,
        params: TensorDictBase | None = None,
        subset: torch.Tensor | None = None,
        current_q: torch.Tensor | None = None,
        td_error: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of one ensemble: ``sum_i d(Q_c,i(s,a), y_c)``, reduced over the batch.

        ``current_q`` (``[N, *batch]``), when given, is used as ``Q_c,i(s, a)`` instead of evaluating
        the critics again (a subclass that evaluates them together with other actions). With
        ``td_error`` the metadata add the squared TD errors ``(Q_c,i(s, a) - y_c)^2``
        (``[N, *batch]``, TorchRL's ``td_error``) for the priority :meth:`forward` writes.
        """
        if params is None:
            params = getattr(self, f"qvalue_{critic}_network_params")
        if subset is None:
            subset = self.sample_subset()
        weights = self._maybe_get_priority_weight(tensordict)
        target = self.target_value(critic, tensordict, next_td, subset)
        if current_q is None:
            current_q = self.critic_values(critic, tensordict, params)
        loss = distance_loss(
            current_q, target.expand_as(current_q), loss_function=self.loss_function
        ).sum(0)
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            self.critic_key("pred_value", critic): self._metric(current_q),
            self.critic_key("target_value", critic): self._metric(target),
        }
        if td_error:
            metadata[self.critic_key("td_error", critic)] = (current_q - target).detach().pow(2)
        return loss, metadata

    # ------------------------------------------------------------------ losses
    def _critic_outputs(
        self, tensordict: TensorDictBase, td_error: bool, where: str
    ) -> dict[str, torch.Tensor]:
        """Every ensemble's loss (:attr:`qvalue_loss_keys`) and diagnostics, with one shared
        ``a' ~ pi(.|s')``; each ensemble draws its own subset of target critics."""
        self._check_input(tensordict, self._critic_input_keys(), where)
        next_td = self.next_action(tensordict)
        out: dict[str, torch.Tensor] = {}
        for critic in self.critics:
            loss, metadata = self._critic_loss(critic, tensordict, next_td, td_error=td_error)
            out[self.critic_key("loss_qvalue", critic)] = loss
            out.update(metadata)
        return out

    def qvalue_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The critic step: every ensemble's TD loss ``loss_qvalue`` (``loss_qvalue_on``) and the
        diagnostics ``pred_value``, ``target_value``; minimise the sum of :attr:`qvalue_loss_keys`
        over the groups :attr:`critic_param_names`. Nothing is written into ``tensordict``.
        """
        return TensorDict(self._critic_outputs(tensordict, False, "qvalue_losses"), batch_size=[])

    def qvalue_off_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of the ``off`` ensemble."""
        return self._critic_loss("off", tensordict, self.next_action(tensordict))

    def qvalue_on_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TD loss of ``Q_on``, optionally at other parameters ``params`` (functional use)."""
        self._require_qvalue_on()
        return self._critic_loss("on", tensordict, self.next_action(tensordict), params)

    def _reduce_ensemble(self, q: torch.Tensor) -> torch.Tensor:
        """``R_i Q_i``: the mean (RLPD) or the min (WSRL) over the ensemble dimension 0."""
        return q.mean(0) if self.actor_q_reduction == "mean" else q.min(0)[0]

    def actor_loss(
        self, tensordict: TensorDictBase
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_pi = E[alpha log pi(a|s) - ((1-kappa) R_i Q_off,i + kappa R_i Q_on,i)(s, a)]``.

        The metadata carry the detached per-sample ``log_prob`` (for :meth:`alpha_loss`).
        """
        self._check_input(tensordict, list(self.actor_network.in_keys), "actor_loss")
        weights = self._maybe_get_priority_weight(tensordict)
        action, log_prob = self._sample_action(tensordict, reparameterize=True)
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        td.set(self.tensor_keys.action, action)
        q_reduced = {
            critic: self._reduce_ensemble(
                self.critic_values(
                    critic, td, getattr(self, f"qvalue_{critic}_network_params").detach()
                )
            )
            for critic in self.critics
        }
        q_mix = q_reduced["off"]
        if self.has_qvalue_on:
            q_mix = (1 - self.kappa) * q_reduced["off"] + self.kappa * q_reduced["on"]
        loss = self.alpha * log_prob - q_mix
        loss = self._reduce_loss(loss, tensordict=tensordict, weights=weights)
        metadata = {
            self.critic_key("state_action_value", c): self._metric(q) for c, q in q_reduced.items()
        }
        metadata["log_prob"] = log_prob.detach()
        metadata["entropy"] = -log_prob.detach().mean()
        return loss, metadata

    def alpha_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """``L_alpha = E[-log_alpha * (log pi + H_target)]`` (0 with ``fixed_alpha``)."""
        if self.fixed_alpha:
            return torch.zeros((), device=log_prob.device)
        return (-self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()

    def actor_alpha_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The actor step: ``loss_actor`` and ``loss_alpha`` from one policy sample.

        Minimise the sum of :attr:`actor_loss_keys` over the groups :attr:`actor_param_names`.
        """
        loss_actor, metadata = self.actor_loss(tensordict)
        log_prob = metadata.pop("log_prob")
        out = {
            "loss_actor": loss_actor,
            "loss_alpha": self.alpha_loss(log_prob),
            "alpha": self.alpha.clone(),
            "kappa": self.kappa.detach().clone(),
            **metadata,
        }
        return TensorDict(out, batch_size=[])

    def online_pretrain_loss(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss online pre-training minimises for ``Q_on``: its ensemble TD loss.

        ``params``, when given, is a TensorDict keyed by :attr:`online_param_names`; the loss is then
        evaluated at those parameters (the meta-adaptation inner step needs this).
        """
        on_params = None if params is None else params["qvalue_on_network_params"]
        return self.qvalue_on_loss(tensordict, on_params)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses on one batch: each ensemble's critic losses (:meth:`qvalue_losses`),
        ``loss_actor`` and ``loss_alpha`` (:meth:`actor_alpha_losses`) and the diagnostics; writes
        the priority ``tensor_keys.priority`` (``max_{c,i} (Q_c,i(s, a) - y_c)^2``) into
        ``tensordict`` as TorchRL's losses do."""
        out = self._critic_outputs(tensordict, True, "forward")
        self._write_priority(
            tensordict, [out.pop(self.critic_key("td_error", c)) for c in self.critics]
        )
        out = TensorDict(out, batch_size=[])
        out.update(self.actor_alpha_losses(tensordict))
        return out


class OPTEnsembleSACLoss(EnsembleSACLoss):
    """RLPD+OPT: :class:`EnsembleSACLoss` with a mandatory online ensemble ``Q_on`` and kappa mixing.

    ``qvalue_off_network`` is the RLPD-style offline ensemble, ``qvalue_on_network`` a freshly
    initialised ensemble trained by :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss`
    (``online_params`` / ``online_pretrain_loss``) and then fine-tuned beside ``Q_off``; the actor loss
    is the Eq. 4 analogue ``alpha log pi - ((1 - kappa) R Q_off + kappa R Q_on)``.
    """

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_off_network: TensorDictModule | list[TensorDictModule],
        qvalue_on_network: TensorDictModule | list[TensorDictModule],
        **kwargs,
    ) -> None:
        if qvalue_on_network is None:
            raise ValueError("OPTEnsembleSACLoss needs qvalue_on_network (the online ensemble)")
        super().__init__(actor_network, qvalue_off_network, qvalue_on_network, **kwargs)


_SET_KEYS_HINT = (
    "If your data names these entries differently, map them with loss.set_keys(action=..., "
    "reward=..., done=..., terminated=...)."
)

#: the automatic target entropies: RLPD's ``-|A| / 2`` and SAC's ``-|A|`` (WSRL, Cal-QL, TorchRL).
TARGET_ENTROPY_RULES = {"auto": 0.5, "-action_dim": 1.0}


def _target_entropy(
    target_entropy: str | Number,
    action_spec: TensorSpec | None,
    actor_network: TensorDictModule,
    action_key: NestedKey,
) -> float:
    """``-|A| / 2`` for ``"auto"`` (RLPD's default), ``-|A|`` for ``"-action_dim"``, else the number."""
    if isinstance(target_entropy, Number) and not isinstance(target_entropy, bool):
        return float(target_entropy)
    if target_entropy not in TARGET_ENTROPY_RULES:
        raise ValueError(
            f"target_entropy must be one of {sorted(TARGET_ENTROPY_RULES)} or a number, got "
            f"{target_entropy!r}"
        )
    spec = action_spec if action_spec is not None else getattr(actor_network, "spec", None)
    if isinstance(spec, Composite):
        spec = spec[action_key] if action_key in spec.keys(True, True) else None
    if spec is None or spec.shape is None or len(spec.shape) == 0:
        raise ValueError(
            f"target_entropy={target_entropy!r} needs the action dimension: pass action_spec or an "
            "actor with a spec"
        )
    return -TARGET_ENTROPY_RULES[target_entropy] * float(spec.shape[-1])
