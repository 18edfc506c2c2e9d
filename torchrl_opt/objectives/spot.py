r"""SPOT pieces: the behaviour VAE, its training loss and the density penalty (Wu et al., 2022).

SPOT ("Supported Policy Optimization for Offline Reinforcement Learning", Wu et al., NeurIPS 2022)
constrains a TD3 actor to the support of the behaviour policy with a penalty
``lambda * negELBO(s, pi(s))``, where ``negELBO`` is a (scaled) negative evidence lower bound of
a conditional VAE fitted to the dataset's ``(s, a)`` pairs and then frozen. OPT uses SPOT as its
AntMaze / Adroit backbone and keeps the penalty in the online actor loss, with ``lambda`` cooled
over time. This module provides:

* :class:`SPOTVAE` -- the conditional VAE (encoder ``(s, a) -> (mu, log_sigma)``, decoder
  ``(s, z) -> a``), as in SPOT's public code.
* :class:`SPOTVAELoss` (alias :class:`VAELoss`) -- its training loss as a TorchRL
  :class:`~torchrl.objectives.LossModule`.
* :class:`SPOTDensityPenalty` -- ``lambda_t * negELBO(s, a)`` for the actor loss, with ``lambda``
  in a tensor buffer and SPOT's online cooling.
* :data:`SPOT_LAMBDA_PRESETS` / :func:`spot_lambda_preset` -- SPOT's per-dataset ``lambda``.

**The exact objective** (SPOT's ``VAE.elbo_loss`` and ``train_vae.py``). For one pair
``(s, a)`` with action dimension ``d_a``, latent dimension ``d_z``, encoder output
``mu, log_sigma`` (``log_sigma`` clamped to ``[-4, 15]``), ``S`` reparameterised samples
``z_k = mu + sigma * eps_k`` with ``eps_k ~ N(0, I)`` and decoder output ``u_k = D(s, z_k)``:

.. math::

    \text{recon}(s, a) &= \frac{1}{S\, d_a} \sum_{k=1}^{S} \sum_{j=1}^{d_a} (u_{k,j} - a_j)^2
    \qquad\text{(MSE, mean over samples and action dims)}\\
    \text{KL}(s, a) &= \frac{1}{d_z} \sum_{i=1}^{d_z} \tfrac12\left(\mu_i^2 + \sigma_i^2 - 1
        - \log \sigma_i^2\right)
    \qquad\text{(closed-form } \mathrm{KL}(\mathcal N(\mu, \sigma^2)\,\|\,\mathcal N(0, I))
    \text{, mean over latent dims)}\\
    \text{negELBO}(s, a) &= \text{recon}(s, a) + \beta\, \text{KL}(s, a), \qquad \beta = 0.5 .

Both terms are *means* over dimensions, as in SPOT (not sums). With SPOT's ``d_z = 2 d_a`` this
is an affine transform of the true negative ELBO of a decoder ``N(u, beta/4 * I)``:
``negELBO = beta / (2 d_a) * (-ELBO) + const`` (SPOT's ``elbo_estimator`` uses exactly that
decoder variance). The VAE is trained on the batch mean of ``negELBO`` with ``S = 1``, which is
SPOT's ``F.mse_loss(recon, a) + beta * KL.mean()``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives.common import LossModule

from torchrl_opt.models import mlp

__all__ = [
    "SPOTVAE",
    "SPOTVAELoss",
    "VAELoss",
    "SPOTDensityPenalty",
    "spot_lambda",
    "SPOT_LAMBDA_PRESETS",
    "spot_lambda_preset",
    "UnknownSPOTPresetError",
]


class UnknownSPOTPresetError(KeyError):
    """No SPOT ``lambda`` preset for the requested ``(domain, dataset)`` pair."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_real(name: str, value: Any, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    return value


# ============================================================================================
# The conditional VAE
# ============================================================================================
class SPOTVAE(nn.Module):
    r"""SPOT's conditional VAE of the behaviour policy ``p(a | s)``.

    * Encoder ``E(s, a) -> (mu, log_sigma)``: MLP on ``concat(s, a)``, ``hidden`` ReLU layers
      (SPOT: 750-750), one linear head of size ``2 * latent_dim`` split into ``mu`` and
      ``log_sigma``; ``log_sigma`` is clamped to ``[log_std_min, log_std_max] = [-4, 15]``.
    * Decoder ``D(s, z) -> a``: MLP on ``concat(s, z)``; output
      ``a = bias + scale * tanh(h)`` with ``scale = (high - low) / 2``, ``bias = (high + low) / 2``
      (SPOT: ``max_action * tanh(h)`` for a symmetric box); without bounds the output is ``h``
      (SPOT's ``--no_max_action``).
    * Sampling from the prior (``decode(s)`` with no ``z``): ``z ~ N(0, I)`` clipped to
      ``[-prior_clip, prior_clip] = [-0.5, 0.5]``.

    Inputs may carry any leading batch dimensions: ``observation [*B, obs_dim]``,
    ``action [*B, action_dim]``.

    Args:
        obs_dim: observation size.
        action_dim: action size.
        action_low: lower bound of the action box (a tensor/sequence of size ``action_dim`` or a
            scalar); ``None`` with ``action_high=None`` for an unbounded decoder. Default ``-1``.
        action_high: upper bound of the action box. Default ``1``.
        hidden: hidden widths, default ``(750, 750)``.
        latent_dim: latent size, default ``2 * action_dim``.
        log_std_min: lower clamp of the encoder's ``log_sigma``.
        log_std_max: upper clamp of the encoder's ``log_sigma``.
        prior_clip: clip of prior latent samples in :meth:`decode`.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        action_low: torch.Tensor | Sequence[float] | float | None = -1.0,
        action_high: torch.Tensor | Sequence[float] | float | None = 1.0,
        hidden: Sequence[int] = (750, 750),
        *,
        latent_dim: int | None = None,
        log_std_min: float = -4.0,
        log_std_max: float = 15.0,
        prior_clip: float = 0.5,
    ) -> None:
        super().__init__()
        self.obs_dim = _check_positive_int("obs_dim", obs_dim)
        self.action_dim = _check_positive_int("action_dim", action_dim)
        self.latent_dim = _check_positive_int(
            "latent_dim", 2 * self.action_dim if latent_dim is None else latent_dim
        )
        self.log_std_min = _check_real("log_std_min", log_std_min)
        self.log_std_max = _check_real("log_std_max", log_std_max)
        if self.log_std_min > self.log_std_max:
            raise ValueError(
                f"log_std_min ({log_std_min}) must not exceed log_std_max ({log_std_max})."
            )
        self.prior_clip = _check_real("prior_clip", prior_clip, low=0.0)

        self.encoder = mlp(obs_dim + action_dim, 2 * self.latent_dim, hidden)
        self.decoder = mlp(obs_dim + self.latent_dim, action_dim, hidden)

        if (action_low is None) != (action_high is None):
            raise ValueError("give both action_low and action_high, or neither (unbounded).")
        self.bounded = action_low is not None
        if self.bounded:
            low = torch.as_tensor(action_low, dtype=torch.float32).expand(action_dim).clone()
            high = torch.as_tensor(action_high, dtype=torch.float32).expand(action_dim).clone()
            if not bool((high > low).all()):
                raise ValueError(
                    f"action_high must exceed action_low elementwise, got low={low.tolist()}, "
                    f"high={high.tolist()}."
                )
            self.register_buffer("action_scale", (high - low) / 2)
            self.register_buffer("action_bias", (high + low) / 2)

    def _check_inputs(self, observation: torch.Tensor, action: torch.Tensor | None) -> None:
        if observation.shape[-1] != self.obs_dim:
            raise ValueError(
                f"observation has last dim {observation.shape[-1]}, expected {self.obs_dim}."
            )
        if action is not None:
            if action.shape[-1] != self.action_dim:
                raise ValueError(
                    f"action has last dim {action.shape[-1]}, expected {self.action_dim}."
                )
            if action.shape[:-1] != observation.shape[:-1]:
                raise ValueError(
                    f"observation batch shape {tuple(observation.shape[:-1])} and action batch "
                    f"shape {tuple(action.shape[:-1])} differ."
                )

    def encode(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma) = E(s, a)``; ``log_sigma`` clamped to ``[log_std_min, log_std_max]``.

        ``sigma = exp(log_sigma)``. Shapes ``[*B, latent_dim]``.
        """
        self._check_inputs(observation, action)
        h = self.encoder(torch.cat([observation, action], dim=-1))
        mean, log_std = h.chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def decode(self, observation: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``a = D(s, z)``; with ``z=None``, ``z ~ clip(N(0, I), -prior_clip, prior_clip)``."""
        if z is None:
            z = torch.randn(
                *observation.shape[:-1],
                self.latent_dim,
                device=observation.device,
                dtype=observation.dtype,
            ).clamp(-self.prior_clip, self.prior_clip)
        h = self.decoder(torch.cat([observation, z], dim=-1))
        if self.bounded:
            return torch.tanh(h) * self.action_scale + self.action_bias
        return h

    def sample(self, observation: torch.Tensor) -> torch.Tensor:
        """An action from the behaviour model: ``D(s, clip(z, +-prior_clip))``, ``z ~ N(0, I)``."""
        self._check_inputs(observation, None)
        return self.decode(observation)

    def forward(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction ``D(s, mu + sigma * eps)`` with ``eps ~ N(0, I)``.

        Returns ``(recon, mu, log_sigma)``.
        """
        mean, log_std = self.encode(observation, action)
        z = mean + log_std.exp() * torch.randn_like(mean)
        return self.decode(observation, z), mean, log_std

    def elbo_terms(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        num_samples: int = 1,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Per-pair ``(recon, KL)`` of the module docstring, each of shape ``[*B]``.

        ``recon = mean_{k, j} (D(s, mu + sigma * eps_k)_j - a_j)^2`` over ``num_samples`` samples
        and the action dims; ``KL = mean_i 0.5 * (mu_i^2 + sigma_i^2 - 1 - 2 log sigma_i)`` over
        the latent dims. ``noise`` (shape ``[*B, num_samples, latent_dim]``) replaces the
        standard-normal draws ``eps`` when given; otherwise they are drawn with
        ``torch.randn`` in that shape.
        """
        num_samples = _check_positive_int("num_samples", num_samples)
        mean, log_std = self.encode(observation, action)
        std = log_std.exp()
        sample_shape = (*mean.shape[:-1], num_samples, self.latent_dim)
        if noise is None:
            noise = torch.randn(sample_shape, device=mean.device, dtype=mean.dtype)
        elif noise.shape != sample_shape:
            raise ValueError(
                f"noise must have shape {tuple(sample_shape)} ([*B, num_samples, latent_dim]), "
                f"got {tuple(noise.shape)}."
            )
        z = mean.unsqueeze(-2) + std.unsqueeze(-2) * noise  # [*B, S, d_z]
        obs = observation.unsqueeze(-2).expand(*observation.shape[:-1], num_samples, -1)
        recon = self.decode(obs, z)  # [*B, S, d_a]
        recon_loss = (recon - action.unsqueeze(-2)).pow(2).mean(dim=(-2, -1))
        kl = 0.5 * (mean.pow(2) + std.pow(2) - 1.0 - 2.0 * log_std)
        return recon_loss, kl.mean(dim=-1)

    def neg_elbo(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        beta: float | torch.Tensor = 0.5,
        num_samples: int = 1,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SPOT's ``elbo_loss``: ``recon(s, a) + beta * KL(s, a)`` per pair, shape ``[*B]``."""
        recon_loss, kl = self.elbo_terms(observation, action, num_samples, noise)
        return recon_loss + beta * kl


# ============================================================================================
# VAE training loss
# ============================================================================================
class SPOTVAELoss(LossModule):
    r"""Training loss of :class:`SPOTVAE`: ``loss_vae = reduce(recon + beta * KL)``.

    Per pair, ``recon = mean_j (D(s, mu + sigma * eps)_j - a_j)^2`` (one reparameterised sample,
    mean over action dims) and ``KL = mean_i 0.5 * (mu_i^2 + sigma_i^2 - 1 - 2 log sigma_i)``
    (closed-form Gaussian KL to ``N(0, I)``, mean over latent dims). With the default
    ``reduction="mean"`` this is exactly SPOT's ``F.mse_loss(recon, a) + beta * KL.mean()``
    (beta 0.5; SPOT trains 100k steps, batch 256, Adam lr 1e-3).

    Output TensorDict: ``loss_vae`` (the objective, carries gradients), ``loss_recon`` and
    ``loss_kl`` (its two terms, reduced the same way, **detached** so that summing every
    ``loss_*`` entry, TorchRL's usual pattern, still back-propagates exactly ``loss_vae``).

    Args:
        vae: the :class:`SPOTVAE` to train. Its parameters are registered as
            ``vae_network_params`` (TorchRL ``convert_to_functional``) and are the same tensors
            as ``vae``'s, so training through this loss trains ``vae`` itself.

    Keyword Args:
        beta: KL weight, default 0.5 (a float32 buffer).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the batch.

    Keys (``set_keys``): ``observation`` and ``action`` (defaults ``"observation"``,
    ``"action"``).
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys.

        Attributes:
            observation (NestedKey): states. Defaults to ``"observation"``.
            action (NestedKey): dataset actions. Defaults to ``"action"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    vae_network: SPOTVAE
    vae_network_params: TensorDictParams
    target_vae_network_params: TensorDictParams

    out_keys = ["loss_vae", "loss_recon", "loss_kl"]

    def __init__(
        self,
        vae: SPOTVAE,
        *,
        beta: float = 0.5,
        reduction: str | None = None,
    ) -> None:
        if not isinstance(vae, SPOTVAE):
            raise TypeError(f"vae must be a SPOTVAE, got {type(vae).__name__}.")
        if reduction is None:
            reduction = "mean"
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self._in_keys = None
        super().__init__()
        self.convert_to_functional(vae, "vae_network", create_target_params=False)
        self.register_coeff_buffer(
            "beta", _check_real("beta", beta, low=0.0), dtype=torch.float32
        )
        self.reduction = reduction

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def _set_in_keys(self) -> None:
        self._in_keys = [self.tensor_keys.observation, self.tensor_keys.action]

    def set_keys(self, **kwargs) -> None:
        super().set_keys(**kwargs)
        self._in_keys = None

    @property
    def in_keys(self) -> list[NestedKey]:
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values: list[NestedKey]) -> None:
        self._in_keys = values

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """``loss_vae = reduce(recon + beta * KL)``; also ``loss_recon``, ``loss_kl`` (detached)."""
        observation = tensordict.get(self.tensor_keys.observation)
        action = tensordict.get(self.tensor_keys.action)
        with self.vae_network_params.to_module(self.vae_network):
            recon, kl = self.vae_network.elbo_terms(observation, action, num_samples=1)
        loss = recon + self.beta * kl
        td_out = TensorDict(
            {
                "loss_vae": self._reduce_loss(loss, tensordict),
                "loss_recon": self._reduce_loss(recon, tensordict).detach(),
                "loss_kl": self._reduce_loss(kl, tensordict).detach(),
            }
        )
        self._clear_weakrefs(tensordict, td_out, "vae_network_params")
        return td_out


#: Alias of :class:`SPOTVAELoss`.
VAELoss = SPOTVAELoss


# ============================================================================================
# Density penalty for the actor
# ============================================================================================
def spot_lambda(
    step: int,
    lambda_: float,
    *,
    lambda_end: float = 0.2,
    cooling_steps: int = 1_000_000,
    cooling: bool = True,
) -> float:
    r"""SPOT's online ``lambda``: ``lambda_ * max(lambda_end, 1 - step / cooling_steps)``.

    This is ``SPOT_TD3.train_online`` with ``lambd_cool=True``: the factor decays linearly from 1
    and is floored at ``lambda_end`` (a *relative* floor: the final value is
    ``lambda_ * lambda_end``, reached at ``step = (1 - lambda_end) * cooling_steps``). SPOT's
    ``step`` is its training-iteration counter, incremented before the update that uses it.
    With ``cooling=False`` the value is ``lambda_`` at every step.
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}.")
    if not cooling:
        return float(lambda_)
    return float(lambda_) * max(float(lambda_end), 1.0 - int(step) / cooling_steps)


class SPOTDensityPenalty(nn.Module):
    r"""Actor penalty ``lambda_t * negELBO(s, a)`` of SPOT, as a hook for ``OPTLoss``.

    ``penalty(td) -> Tensor[*td.batch_size]`` reads ``observation`` and the actor's ``action``
    from ``td`` and returns ``lambda_t * (recon(s, a) + beta * KL(s, a))`` per sample
    (:meth:`SPOTVAE.neg_elbo` with ``num_samples`` latent samples). The gradient reaches the
    action (hence the actor); the VAE is never updated through it: with ``freeze=True`` its
    parameters get ``requires_grad=False`` and the VAE is put in eval mode (SPOT loads it and
    calls ``vae.eval()``), and if any VAE parameter still requires grad the penalty evaluates
    the VAE with detached parameters (``TensorDict.from_module(vae).detach().to_module(vae)``),
    so no gradient is ever accumulated into it.

    ``lambda_t`` lives in the float32 buffer :attr:`lambda_` (shape ``[]``) so compiled or
    CUDA-graphed losses see its updates. Online cooling (SPOT's ``lambd_cool``), applied by
    :meth:`step`:

    .. math::

        \lambda_t = \lambda_0 \max\left(\lambda_\text{end},\ 1 - t / T\right), \qquad
        \lambda_\text{end} = 0.2,\ T = 10^6,

    with ``t`` the number of :meth:`step` calls. Call :meth:`step` once per training iteration
    *before* the update to match SPOT exactly (SPOT increments its counter at the top of each
    iteration). With ``cooling=False`` (SPOT's default and its offline phase) ``lambda`` stays
    ``lambda_0``.

    Args:
        vae: the trained :class:`SPOTVAE`.
        lambda_: ``lambda_0`` (SPOT default 1.0; AntMaze values in :data:`SPOT_LAMBDA_PRESETS`).

    Keyword Args:
        lambda_end: relative floor of the cooling factor, in ``[0, 1]`` (default 0.2).
        cooling: apply the cooling in :meth:`step` (default ``False``; SPOT's fine-tuning
            configs set it ``True``).
        cooling_steps: ``T`` (default ``1_000_000``).
        beta: KL weight inside ``negELBO`` (default 0.5, SPOT's ``--beta``).
        num_samples: latent samples per pair (default 1, SPOT's ``--num_samples``).
        freeze: set the VAE's ``requires_grad`` to ``False`` and put it in eval mode.
        observation_key: observation key read from the input tensordict.
        action_key: action key read from the input tensordict.
    """

    def __init__(
        self,
        vae: SPOTVAE,
        lambda_: float = 1.0,
        *,
        lambda_end: float = 0.2,
        cooling: bool = False,
        cooling_steps: int = 1_000_000,
        beta: float = 0.5,
        num_samples: int = 1,
        freeze: bool = True,
        observation_key: NestedKey = "observation",
        action_key: NestedKey = "action",
    ) -> None:
        super().__init__()
        if not isinstance(vae, SPOTVAE):
            raise TypeError(f"vae must be a SPOTVAE, got {type(vae).__name__}.")
        self.vae = vae
        self.lambda_0 = _check_real("lambda_", lambda_, low=0.0)
        self.lambda_end = _check_real("lambda_end", lambda_end, low=0.0)
        if self.lambda_end > 1.0:
            raise ValueError(
                f"lambda_end is a relative floor of the cooling factor and must be in [0, 1], "
                f"got {lambda_end}."
            )
        if not isinstance(cooling, bool):
            raise ValueError(f"cooling must be a bool, got {cooling!r}.")
        self.cooling = cooling
        self.cooling_steps = _check_positive_int("cooling_steps", cooling_steps)
        self.beta = _check_real("beta", beta, low=0.0)
        self.num_samples = _check_positive_int("num_samples", num_samples)
        self.observation_key = observation_key
        self.action_key = action_key
        self._step_count = 0
        self.register_buffer("lambda_", torch.tensor(self.lambda_0, dtype=torch.float32))
        if freeze:
            vae.requires_grad_(False)
            vae.eval()

    # ------------------------------------------------------------------ lambda
    def value(self, step: int) -> float:
        """``lambda`` after ``step`` calls of :meth:`step` (see :func:`spot_lambda`)."""
        return spot_lambda(
            step,
            self.lambda_0,
            lambda_end=self.lambda_end,
            cooling_steps=self.cooling_steps,
            cooling=self.cooling,
        )

    @property
    def step_count(self) -> int:
        """Number of :meth:`step` increments so far."""
        return self._step_count

    def step(self, n: int = 1) -> float:
        """Advance ``t`` by ``n``, write ``lambda_t`` into :attr:`lambda_` in place, return it."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}.")
        self._step_count += int(n)
        value = self.value(self._step_count)
        with torch.no_grad():
            self.lambda_.fill_(value)  # in place: captured graphs see it, no host sync
        return value

    def get_extra_state(self) -> dict[str, Any]:
        return {"step_count": self._step_count}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        step_count = state.get("step_count") if isinstance(state, Mapping) else None
        if isinstance(step_count, bool) or not isinstance(step_count, numbers.Integral):
            raise ValueError(f"bad SPOTDensityPenalty extra state: {state!r}.")
        self._step_count = int(step_count)

    # ------------------------------------------------------------------ penalty
    def neg_elbo(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``recon(s, a) + beta * KL(s, a)`` with the VAE's parameters detached, shape ``[*B]``."""
        if any(p.requires_grad for p in self.vae.parameters()):
            # not frozen: evaluate with detached copies (same storage) of the VAE's tensors
            with TensorDict.from_module(self.vae).detach().to_module(
                self.vae, preserve_module_state=False
            ):
                return self.vae.neg_elbo(observation, action, self.beta, self.num_samples)
        return self.vae.neg_elbo(observation, action, self.beta, self.num_samples)

    def forward(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``lambda_t * negELBO(observation, action)``, shape ``tensordict.batch_size``."""
        observation = tensordict.get(self.observation_key)
        action = tensordict.get(self.action_key)
        return self.lambda_ * self.neg_elbo(observation, action)

    def extra_repr(self) -> str:
        return (
            f"lambda_0={self.lambda_0}, lambda_end={self.lambda_end}, cooling={self.cooling}, "
            f"cooling_steps={self.cooling_steps}, beta={self.beta}, "
            f"num_samples={self.num_samples}, step_count={self._step_count}"
        )


# ============================================================================================
# Per-dataset lambda presets (SPOT's public fine-tuning configs)
# ============================================================================================
#: SPOT's ``lambd`` per dataset (``configs/online_finetune/antmaze-*.yml`` and the offline
#: configs, identical): ``(domain, dataset) -> lambda_0``. OPT's AntMaze backbone uses them.
SPOT_LAMBDA_PRESETS: Mapping[tuple[str, str], float] = MappingProxyType(
    {
        ("antmaze", "umaze"): 0.25,
        ("antmaze", "umaze-diverse"): 0.25,
        ("antmaze", "medium-play"): 0.05,
        ("antmaze", "medium-diverse"): 0.025,
        ("antmaze", "large-play"): 0.025,
        ("antmaze", "large-diverse"): 0.025,
    }
)


def spot_lambda_preset(domain: str, dataset: str) -> float:
    """SPOT's ``lambda_0`` for ``(domain, dataset)``; case and ``_``/``-`` are ignored.

    Raises :class:`UnknownSPOTPresetError` listing the known pairs.
    """
    if not isinstance(domain, str) or not isinstance(dataset, str):
        raise UnknownSPOTPresetError(
            f"domain and dataset must be strings, got {domain!r}, {dataset!r}."
        )
    key = (domain.strip().lower().replace("_", "-"), dataset.strip().lower().replace("_", "-"))
    try:
        return SPOT_LAMBDA_PRESETS[key]
    except KeyError:
        known = ", ".join(f"{d}/{s}" for d, s in SPOT_LAMBDA_PRESETS)
        raise UnknownSPOTPresetError(
            f"no SPOT lambda preset for domain={domain!r}, dataset={dataset!r}. "
            f"Known (domain/dataset): {known}. Pass lambda_ explicitly for other datasets."
        ) from None
