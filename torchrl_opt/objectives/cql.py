"""EnsembleCQLLoss: CQL(H) and Cal-QL on the SAC critic ensemble (WSRL's and Cal-QL's offline phase).

Conservative Q-learning (Kumar et al. 2020) adds to each critic's TD loss a regulariser that pushes
down a soft maximum of its Q-values over sampled actions and pushes up its value at the data action.
For every critic ``i`` and state ``s`` of the batch, with ``n = num_cql_actions`` actions from each of
three proposals (uniform on the action box ``U``, the policy at ``s``, the policy at ``s'``; the policy
samples and their log-densities carry no gradient) and temperature ``T``::

    v_ij = Q_i(s, a_j) - log mu_j(a_j)                    (importance_sample=True, CQL(H) as in the code)
    gap_i(s) = T * logsumexp_j (v_ij / T) - Q_i(s, a_data)  over the 3n samples j
    L_cql = alpha * sum_i w_i * E_s[ clip(gap_i(s), clip_min, clip_max) ]

with ``mu_j`` the proposal density of sample ``j`` (``1 / vol(U)`` for uniform samples, ``pi(a_j|.)``
for policy samples). Every ``Q`` above is evaluated at the *current* state ``s``, including the actions
drawn at ``s'`` (as in CQL's, Cal-QL's and WSRL's code). ``w_i = 1`` for all critics, or, with
``cql_critic_subsample = m`` (WSRL's REDQ ensemble: ``critic_subsample_size = 2``), ``w_i = (N / m)
* #{draws of member i}`` for ``m`` members drawn per update: the regulariser of a random subset of
critics, rescaled so that ``sum_i w_i = N`` (WSRL averages its TD loss over all ``N`` critics and its CQL
loss over the ``m`` drawn ones; this loss sums both over critics, which multiplies WSRL's critic loss
by ``N``, a constant Adam does not see). Without importance sampling (WSRL's kitchen setting) the data
action joins the samples: ``v = [Q_i(s, a_j)]_j ++ [Q_i(s, a_data)] - T log(3n + 1)``.

**Cal-QL** (Nakamoto et al. 2023, ``calibrated=True``) lower-bounds the policy samples' Q-values by the
Monte Carlo return-to-go ``G(s)`` of the state's episode in the dataset (``tensor_keys.mc_return``,
from :func:`torchrl_opt.data.returns.monte_carlo_returns`) before the importance correction::

    Q_i(s, a_j) <- max(Q_i(s, a_j), G(s))     for the 2n policy samples (and the uniform ones too with
                                                calql_bound_random_actions=True, a WSRL option)

so that CQL cannot push a policy action's value below the behaviour policy's return: where the bound
is active, that sample passes no gradient to the critic.

**Lagrange form** (``cql_lagrange=True``, WSRL's and Cal-QL's AntMaze setting): the weight becomes a
trained multiplier ``lambda``, in WSRL's form (``cql_lagrange_form="softplus"``: ``lambda =
softplus(theta)``, ``cql_alpha`` unused) or the Cal-QL repository's (``"exp"``: ``lambda = cql_alpha *
min(exp(theta), 1e6)``), ``theta`` initialised so that ``softplus(theta)`` / ``exp(theta)`` equals
``cql_alpha_init`` (WSRL: 1.0; Cal-QL: ``e``, its ``log_alpha_prime = 1``), and::

    L_cql = sg(lambda) * sum_i w_i * (E_s[gap_i(s)] - tau_gap)            (no clipping, as WSRL)
    L_cql_alpha = -lambda * (sg(mean_i,s gap) - tau_gap)                  (raises lambda while gap > tau)

``theta`` lives in the ``cql_alpha_params`` group, trained by the critic step (it is in
:attr:`critic_param_names`, and ``loss_cql_alpha`` in :attr:`qvalue_loss_keys`).

The TD part, the actor and the temperature are
:class:`~torchrl_opt.objectives.sac_ensemble.EnsembleSACLoss`'s; the defaults are WSRL's CQL
pre-training of its 10-critic ensemble (``--use_redq``): random pairs of target critics drawn with
replacement, the max-target backup over ``num_cql_actions`` next actions, no entropy in the backup,
an actor that maximises the min over all critics, target entropy ``-|A|`` (see ``docs/peers.md``).
The critic step minimises ``loss_qvalue + loss_cql`` (+ ``loss_cql_alpha``).

**TorchRL's CQLLoss.** ``torchrl.objectives.CQLLoss`` is a 2-critic SAC+CQL(H) loss; with 2 critics
and matching settings (``num_qvalue_nets=2, num_min_qs=2, subset_replacement=False,
cql_critic_subsample=None, max_target_backup=False, backup_entropy=False, actor_q_reduction="min",
target_entropy="-action_dim"``; TorchRL's ``deterministic_backup=True, max_q_backup=False,
with_lagrange=False, loss_function="l2"``, ``min_q_weight = cql_alpha``) this loss equals it except in
two places, where this one follows the CQL/Cal-QL/WSRL code: (1) TorchRL's ``logsumexp`` runs over the
three proposals *per sample index* (a ``[B * n, 3]`` tensor) instead of over all ``3n`` samples per
state; (2) TorchRL evaluates the actions drawn at ``s'`` at ``s'`` (``Q(s', a')``) instead of at ``s``.
Both vanish at ``num_cql_actions=1`` on a batch with ``s' = s``, where the two losses agree in value and
gradient (tested). TorchRL's ``with_lagrange`` trains ``alpha'`` but does not apply it to the critic
loss; its uniform samples are drawn on ``[-1, 1]`` whatever the action spec (here: the spec's box).
It is not reused directly because it is fixed to 2 critics, draws in place (not vmap-safe over seeds)
and has the two differences above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import nn
from torchrl.data.tensor_specs import Bounded, Composite
from torchrl.envs.utils import step_mdp

from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss, repeat_samples

__all__ = ["CQL_ALPHA_KEY", "EnsembleCQLLoss", "LAGRANGE_FORMS"]

#: where the Lagrange multiplier's raw parameter ``theta`` lives in ``cql_alpha_params``.
CQL_ALPHA_KEY = ("lagrange", "raw_cql_alpha")
#: parameterisations of the Lagrange multiplier: WSRL's softplus, the Cal-QL repository's exp.
LAGRANGE_FORMS = ("softplus", "exp")


class EnsembleCQLLoss(EnsembleSACLoss):
    """CQL(H) / Cal-QL regularised TD loss for an ``N``-critic SAC ensemble (see the module docstring).

    Args:
        actor_network: a stochastic ``TanhNormal`` actor
            (:func:`torchrl_opt.models.make_gaussian_actor`).
        qvalue_network: the ensemble: a list of ``num_qvalue_nets`` independently initialised critics.

    Keyword Args:
        cql_alpha: the regulariser's weight ``alpha`` (WSRL's ``cql_alpha``, TorchRL's
            ``min_q_weight``): 5.0 (default; WSRL/Cal-QL locomotion and kitchen), 1.0 (Adroit).
            With ``cql_lagrange`` only the ``"exp"`` form uses it. A buffer: the online phase
            may change it in place (WSRL's ``online_cql_alpha``).
        num_cql_actions: samples ``n`` per proposal and state (default 10).
        cql_temperature: ``T`` (default 1.0).
        importance_sample: subtract the proposals' log-densities (CQL(H) as in the code; default
            True). False: WSRL's variant with the data action in the logsumexp.
        cql_clip_diff_min: lower clip of ``gap`` (default unbounded, as all sources).
        cql_clip_diff_max: upper clip of ``gap`` (default unbounded).
        cql_critic_subsample: ``m`` members regularised per update (drawn like the TD subset, with or
            without replacement), or ``None`` for all. Default 2 (WSRL's ``--use_redq``).
        calibrated: Cal-QL's lower bound from ``tensor_keys.mc_return`` (default False: CQL).
        calql_bound_random_actions: also bound the uniform samples (WSRL option; default False).
        cql_lagrange: train the weight as a Lagrange multiplier (AntMaze in WSRL and Cal-QL;
            default False).
        cql_lagrange_form: ``"softplus"`` (WSRL, default) or ``"exp"`` (Cal-QL's repository).
        cql_target_action_gap: ``tau_gap`` of the Lagrange form (WSRL/Cal-QL AntMaze: 0.8; default 1.0).
        cql_alpha_init: initial ``softplus(theta)`` / ``exp(theta)`` (default 1.0, WSRL; Cal-QL: ``e``).
        subset_replacement: as :class:`EnsembleSACLoss`; WSRL's CQL default True.
        actor_q_reduction: as :class:`EnsembleSACLoss`; WSRL's CQL default ``"min"``.
        target_entropy: as :class:`EnsembleSACLoss`; WSRL's CQL default ``"-action_dim"``.
        backup_entropy: as :class:`EnsembleSACLoss`; WSRL's CQL default False.
        max_target_backup: as :class:`EnsembleSACLoss`; WSRL's CQL default True.
        num_backup_actions: next actions of the max-target backup (default: ``num_cql_actions``).
        **kwargs (Any): the other :class:`EnsembleSACLoss` options (``num_qvalue_nets``, ``num_min_qs``,
            ``alpha_init``, ``fixed_alpha``, ``action_spec``, ``loss_function``, ``reduction``,
            ``generator``, ``deactivate_vmap``). There is no ``Q_on``: CQL and Cal-QL are offline
            pre-training losses here.

    ``qvalue_losses`` returns ``loss_qvalue``, ``loss_cql`` (and ``loss_cql_alpha``), ``pred_value``,
    ``target_value`` and the detached diagnostics ``cql_diff`` (mean ``gap``), ``cql_ood_value`` (mean
    soft maximum), ``cql_alpha`` (the weight in use) and, with ``calibrated``, ``calql_bound_rate``
    (fraction of sampled Q-values below the bound, over all samples).
    """

    @dataclass
    class _AcceptedKeys(EnsembleSACLoss._AcceptedKeys):
        """The ensemble SAC keys plus ``mc_return``: the Monte Carlo return-to-go Cal-QL reads
        (shape ``[*B]`` or ``[*B, 1]``; default ``"mc_return"``)."""

        mc_return: NestedKey = "mc_return"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    cql_alpha_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        cql_alpha: float = 5.0,
        num_cql_actions: int = 10,
        cql_temperature: float = 1.0,
        importance_sample: bool = True,
        cql_clip_diff_min: float = -math.inf,
        cql_clip_diff_max: float = math.inf,
        cql_critic_subsample: int | None = 2,
        calibrated: bool = False,
        calql_bound_random_actions: bool = False,
        cql_lagrange: bool = False,
        cql_lagrange_form: str = "softplus",
        cql_target_action_gap: float = 1.0,
        cql_alpha_init: float = 1.0,
        subset_replacement: bool = True,
        actor_q_reduction: str = "min",
        target_entropy: str | float = "-action_dim",
        backup_entropy: bool = False,
        max_target_backup: bool = True,
        num_backup_actions: int | None = None,
        **kwargs,
    ) -> None:
        for name in ("qvalue_on_network", "kappa"):
            if name in kwargs:
                raise TypeError(
                    f"EnsembleCQLLoss has no online ensemble: remove {name!r} (CQL/Cal-QL pre-train "
                    "Q_off; fine-tune with EnsembleSACLoss or OPTEnsembleSACLoss)"
                )
        if num_cql_actions < 1:
            raise ValueError(f"num_cql_actions must be >= 1, got {num_cql_actions}")
        if not cql_temperature > 0:
            raise ValueError(f"cql_temperature must be positive, got {cql_temperature}")
        if cql_alpha < 0:
            raise ValueError(f"cql_alpha must be >= 0, got {cql_alpha}")
        if not cql_clip_diff_min < cql_clip_diff_max:
            raise ValueError(
                f"cql_clip_diff_min={cql_clip_diff_min} must be below "
                f"cql_clip_diff_max={cql_clip_diff_max}"
            )
        if cql_lagrange and not cql_alpha_init > 0:
            raise ValueError(f"cql_alpha_init must be positive, got {cql_alpha_init}")
        if cql_lagrange_form not in LAGRANGE_FORMS:
            raise ValueError(
                f"cql_lagrange_form must be one of {LAGRANGE_FORMS}, got {cql_lagrange_form!r}"
            )
        super().__init__(
            actor_network,
            qvalue_network,
            None,
            subset_replacement=subset_replacement,
            actor_q_reduction=actor_q_reduction,
            target_entropy=target_entropy,
            backup_entropy=backup_entropy,
            max_target_backup=max_target_backup,
            num_backup_actions=num_cql_actions if num_backup_actions is None else num_backup_actions,
            **kwargs,
        )
        subsample = cql_critic_subsample
        if subsample is not None and not 1 <= subsample <= self.num_qvalue_nets:
            raise ValueError(
                f"cql_critic_subsample must be None or lie in [1, num_qvalue_nets="
                f"{self.num_qvalue_nets}], got {cql_critic_subsample}"
            )
        self.num_cql_actions = num_cql_actions
        self.cql_temperature = float(cql_temperature)
        self.importance_sample = bool(importance_sample)
        self.cql_clip_diff_min = float(cql_clip_diff_min)
        self.cql_clip_diff_max = float(cql_clip_diff_max)
        self.cql_critic_subsample = cql_critic_subsample
        self.calibrated = bool(calibrated)
        self.calql_bound_random_actions = bool(calql_bound_random_actions)
        self.cql_lagrange = bool(cql_lagrange)
        self.cql_lagrange_form = cql_lagrange_form
        self.cql_target_action_gap = float(cql_target_action_gap)

        spec = _bounded_action_spec(kwargs.get("action_spec"), actor_network, self.tensor_keys.action)
        device = self.kappa.device
        low = spec.space.low.to(device=device, dtype=torch.get_default_dtype())
        high = spec.space.high.to(device=device, dtype=torch.get_default_dtype())
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        # log-density of the uniform proposal on the action box: -sum log(high - low)
        self.register_buffer("uniform_log_density", -(high - low).log().sum())
        self.register_buffer("cql_alpha", torch.tensor(float(cql_alpha), device=device))
        if self.cql_lagrange:
            if cql_lagrange_form == "softplus":
                raw = math.log(math.expm1(cql_alpha_init))  # softplus^-1
            else:
                raw = math.log(cql_alpha_init)
            self.cql_alpha_params = TensorDictParams(
                TensorDict(
                    {CQL_ALPHA_KEY: nn.Parameter(torch.tensor(raw, device=device))}, batch_size=[]
                ),
                no_convert=True,
            )
        self._set_in_keys()

    # ------------------------------------------------------------------ parameters and keys
    @property
    def cql_weight(self) -> torch.Tensor:
        """The regulariser's weight in use (detached): ``cql_alpha``, or the multiplier ``lambda``."""
        if self.cql_lagrange:
            return self._lagrange_multiplier().detach()
        return self.cql_alpha

    def _lagrange_multiplier(self) -> torch.Tensor:
        """``lambda = softplus(theta)`` (WSRL) or ``cql_alpha * min(exp(theta), 1e6)`` (Cal-QL)."""
        theta = self.cql_alpha_params.get(CQL_ALPHA_KEY)
        if self.cql_lagrange_form == "softplus":
            return nn.functional.softplus(theta)
        return self.cql_alpha * theta.exp().clamp(max=1e6)

    @property
    def critic_param_names(self) -> tuple[str, ...]:
        """The critic step's groups: the ensemble, and the Lagrange multiplier if any."""
        names = super().critic_param_names
        return (*names, "cql_alpha_params") if self.cql_lagrange else names

    @property
    def qvalue_loss_keys(self) -> tuple[str, ...]:
        """What the critic step minimises: ``loss_qvalue``, ``loss_cql`` (and ``loss_cql_alpha``)."""
        keys = (*super().qvalue_loss_keys, "loss_cql")
        return (*keys, "loss_cql_alpha") if self.cql_lagrange else keys

    def _default_out_keys(self) -> list[str]:
        keys = [*super()._default_out_keys(), "cql_diff", "cql_ood_value", "cql_alpha"]
        return [*keys, "calql_bound_rate"] if self.calibrated else keys

    def _critic_input_keys(self) -> list[NestedKey]:
        # the policy is also sampled at s
        return [*super()._critic_input_keys(), *self.actor_network.in_keys]

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        if getattr(self, "calibrated", False):
            self._in_keys = list(dict.fromkeys([*self._in_keys, self.tensor_keys.mc_return]))

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def cql_actions(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The ``3n`` sampled actions per state and their proposal log-densities ``log mu``.

        Returns a TensorDict of batch size ``[*B, 3n]`` with ``tensor_keys.action`` and
        ``"log_density"``: first ``n`` uniform actions on the action box (``log mu = -sum log(high -
        low)``), then ``n`` draws of ``pi(.|s)``, then ``n`` draws of ``pi(.|s')`` (``log mu = log pi``).
        Drawn in that order (uniform, ``s``, ``s'``), row-major over ``[*B, n]``.
        """
        n = self.num_cql_actions
        observations = tensordict.select(*self.actor_network.in_keys, strict=False)
        batch = tuple(observations.batch_size)
        low, high = self.action_low, self.action_high
        uniform = torch.rand((*batch, n, low.shape[-1]), device=low.device, dtype=low.dtype)
        random_actions = low + (high - low) * uniform
        current, current_log_prob = self._sample_action(
            repeat_samples(observations, n), reparameterize=False
        )
        next_obs = step_mdp(tensordict).select(*self.actor_network.in_keys, strict=False)
        following, following_log_prob = self._sample_action(
            repeat_samples(next_obs, n), reparameterize=False
        )
        log_density = torch.cat(
            [
                self.uniform_log_density.to(current_log_prob.dtype).expand(*batch, n),
                current_log_prob,
                following_log_prob,
            ],
            -1,
        )
        return TensorDict(
            {
                self.tensor_keys.action: torch.cat([random_actions, current, following], -2),
                "log_density": log_density,
            },
            batch_size=(*batch, 3 * n),
        )

    def cql_gap(
        self,
        q_data: torch.Tensor,
        q_samples: torch.Tensor,
        log_density: torch.Tensor,
        mc_return: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``gap_i(s) = T logsumexp_j(v_ij / T) - Q_i(s, a_data)`` (see the module docstring).

        Args:
            q_data: ``Q_i(s, a_data)``, shape ``[N, *B]``.
            q_samples: ``Q_i(s, a_j)`` of the :meth:`cql_actions`, shape ``[N, *B, 3n]``.
            log_density: their ``log mu``, shape ``[*B, 3n]``.
            mc_return: Cal-QL's bound ``G(s)``, shape ``[*B]`` (required with ``calibrated``).

        Returns:
            ``gap`` (shape ``[N, *B]``) and detached diagnostics (``cql_ood_value``, and
            ``calql_bound_rate`` with ``calibrated``).
        """
        n, temperature = self.num_cql_actions, self.cql_temperature
        info = {}
        if self.calibrated:
            if mc_return is None:
                raise ValueError("calibrated=True (Cal-QL) needs mc_return")
            bound = mc_return.to(q_samples.dtype).unsqueeze(-1).expand(*mc_return.shape, 3 * n)
            if not self.calql_bound_random_actions:
                bound = torch.cat(
                    [torch.full_like(bound[..., :n], -math.inf), bound[..., n:]], -1
                )
            info["calql_bound_rate"] = (q_samples < bound).to(q_samples.dtype).mean().detach()
            q_samples = torch.maximum(q_samples, bound)
        if self.importance_sample:
            values = q_samples - log_density
        else:
            values = torch.cat([q_samples, q_data.unsqueeze(-1)], -1) - temperature * math.log(
                3 * n + 1
            )
        ood = torch.logsumexp(values / temperature, -1) * temperature
        info["cql_ood_value"] = self._metric(ood)
        return ood - q_data, info

    def _member_weights(self) -> torch.Tensor | None:
        """``w_i = (N / m) * #{draws of i}`` for ``m = cql_critic_subsample`` members (``None``: all)."""
        if self.cql_critic_subsample is None:
            return None
        members = self.draw_members(self.cql_critic_subsample)
        arange = torch.arange(self.num_qvalue_nets, device=members.device)
        counts = (members.unsqueeze(-1) == arange).sum(0)
        return counts.to(self.kappa.dtype) * (self.num_qvalue_nets / self.cql_critic_subsample)

    def _mc_return(self, tensordict: TensorDictBase) -> torch.Tensor:
        key = self.tensor_keys.mc_return
        mc_return = tensordict.get(key, None)
        if mc_return is None:
            raise KeyError(
                f"Cal-QL (calibrated=True) reads the Monte Carlo return-to-go under {key!r}, which the "
                "batch lacks: compute it once for the dataset with "
                "torchrl_opt.data.returns.monte_carlo_returns and store it there (or point "
                "set_keys(mc_return=...) at yours)."
            )
        batch = tensordict.batch_size
        if mc_return.shape == (*batch, 1):
            return mc_return.squeeze(-1)
        if mc_return.shape != batch:
            raise ValueError(
                f"{key!r} has shape {tuple(mc_return.shape)}; expected {tuple(batch)} or "
                f"{(*batch, 1)} (one return per transition)"
            )
        return mc_return

    # ------------------------------------------------------------------ the critic step
    def qvalue_losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The critic step: TD loss ``loss_qvalue`` and CQL/Cal-QL regulariser ``loss_cql`` of the
        ensemble (and the Lagrange multiplier's ``loss_cql_alpha``) with the diagnostics; minimise
        :attr:`qvalue_loss_keys` over :attr:`critic_param_names`.

        Random draws, in order: ``a' ~ pi(.|s')`` (:meth:`next_action`), the TD subset, the CQL
        subset (if any), the CQL actions (:meth:`cql_actions`).
        """
        return super().qvalue_losses(tensordict)

    def _critic_outputs(
        self, tensordict: TensorDictBase, td_error: bool, where: str
    ) -> dict[str, torch.Tensor]:
        self._check_input(tensordict, self._critic_input_keys(), where)
        mc_return = self._mc_return(tensordict) if self.calibrated else None
        next_td = self.next_action(tensordict)
        subset = self.sample_subset()
        member_weights = self._member_weights()
        samples = self.cql_actions(tensordict)
        num_samples = samples.batch_size[-1]

        # Q at the data action and at the 3n samples, in one vmapped call: [N, *B, 1 + 3n]
        action_key = self.tensor_keys.action
        q_in = tensordict.select(
            *[k for k in self.qvalue_off_network.in_keys if k != action_key], strict=False
        )
        q_in = repeat_samples(q_in, 1 + num_samples).clone(False)
        q_in.set(
            action_key,
            torch.cat([tensordict.get(action_key).unsqueeze(-2), samples.get(action_key)], -2),
        )
        q_all = self.critic_values("off", q_in, self.qvalue_off_network_params)
        q_data, q_samples = q_all[..., 0], q_all[..., 1:]

        loss_qvalue, metadata = self._critic_loss(
            "off", tensordict, next_td, subset=subset, current_q=q_data, td_error=td_error
        )
        gap, info = self.cql_gap(q_data, q_samples, samples.get("log_density"), mc_return)
        out = {"loss_qvalue": loss_qvalue, **metadata, **info}
        out.update(self._cql_losses(gap, member_weights, tensordict))
        return out

    def _cql_losses(
        self,
        gap: torch.Tensor,
        member_weights: torch.Tensor | None,
        tensordict: TensorDictBase,
    ) -> dict[str, torch.Tensor]:
        """``loss_cql`` (and ``loss_cql_alpha``) from the per-critic ``gap`` ``[N, *B]``."""
        weights = self._maybe_get_priority_weight(tensordict)
        out = {"cql_diff": self._metric(gap)}
        if not self.cql_lagrange and (
            math.isfinite(self.cql_clip_diff_min) or math.isfinite(self.cql_clip_diff_max)
        ):
            gap = gap.clamp(self.cql_clip_diff_min, self.cql_clip_diff_max)
        per_critic = gap if member_weights is None else gap * member_weights.reshape(
            -1, *[1] * (gap.ndim - 1)
        )
        # sum_i w_i * E_s[gap_i(s)], with sum_i w_i = N
        regulariser = self._reduce_loss(per_critic.sum(0), tensordict=tensordict, weights=weights)
        if self.cql_lagrange:
            multiplier = self._lagrange_multiplier()
            gap_target = self.cql_target_action_gap
            out["loss_cql"] = multiplier.detach() * (
                regulariser - self.num_qvalue_nets * gap_target
            )
            out["loss_cql_alpha"] = -multiplier * (
                regulariser.detach() / self.num_qvalue_nets - gap_target
            )
            out["cql_alpha"] = multiplier.detach()
        else:
            out["loss_cql"] = self.cql_alpha * regulariser
            out["cql_alpha"] = self.cql_alpha.clone()
        return out


def _bounded_action_spec(spec, actor_network: TensorDictModule, action_key: NestedKey) -> Bounded:
    """The action box of the uniform CQL proposal: ``spec``, else the actor's spec."""
    spec = spec if spec is not None else getattr(actor_network, "spec", None)
    if isinstance(spec, Composite):
        spec = spec[action_key] if action_key in spec.keys(True, True) else None
    if not isinstance(spec, Bounded):
        raise TypeError(
            "EnsembleCQLLoss samples uniform actions on the action box: pass a Bounded action_spec "
            f"(or an actor with one), got {type(spec).__name__}"
        )
    return spec
