"""Functional update steps: forward, gradient, Adam and Polyak update as one capturable function.

:func:`~torchrl_opt.pipeline.updates.make_step` runs ``loss.backward()``, ``optimizer.step()`` and
``zero_grad()``; ``torch.compile`` breaks the graph at each of them. The steps here compute the same
update without autograd's tape or a ``torch.optim`` optimiser::

    g, L   = grad_and_value(theta -> sum_k loss_fn(batch)[k] at theta)(theta)   (torch.func)
    theta  <- Adam(theta, g)                                                     (FunctionalAdam)
    theta' <- theta' + tau * (theta - theta')                                    (Polyak, torch.lerp)

so that ``torch.compile(step, fullgraph=True)`` captures the whole step in one graph (and
``tensordict.nn.CudaGraphModule`` replays it as one CUDA graph).

How the loss sees the differentiated parameters: every parameter group of a TorchRL
:class:`~torchrl.objectives.LossModule` (``actor_network_params``, ``qvalue_off_network_params``,
...) is a :class:`~tensordict.TensorDictParams`. ``TensorDict.to_module(loss)`` swaps a group's
content for the given tensors (it replaces the group's ``_param_td``) and restores it on exit; the
loss's own methods (``qvalue_losses``, ``actor_loss``, ``MetaAdaptationLoss.forward``, the IQL
losses) then read the ``torch.func``-wrapped tensors, so they are reused unchanged. Only the
``nn.Parameter`` leaves of the named groups are differentiated and updated, exactly the parameters
:func:`~torchrl_opt.pipeline.agents.make_update_specs` gives to ``torch.optim.Adam``; buffers in those
groups (the actor's ``action_scale``) are passed through.

Meta-gradients: :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss` already takes an inner
``torch.func.grad_and_value``; the outer gradient here is a second ``grad_and_value`` around it,
which ``torch.func`` differentiates to second order (``order=2``) or through a detached inner
gradient (``order=1``).

Seed batching (:class:`SeedBatchedStep`): ``S`` independently initialised copies of one loss are
stacked with a leading seed dimension on every parameter group (:func:`stack_seeds`; each copy's
parameters become views of the stacked storage, so the per-seed modules stay live for collection,
evaluation and checkpoints). One template loss runs the functional step under
``torch.vmap(..., randomness="different")`` over seeds, the batch carrying a leading seed dimension
``[S, B]``. Each seed has its own gradient (vmap of ``grad`` is a per-seed gradient, not a gradient
of a sum), its own Adam moments and step counter, and its own target networks. The TorchRL machinery
nests correctly: the outer seed vmap wraps ``to_module`` of the whole group, inside which the loss's
own ``_vmap_func`` (critic ensemble vmap with its own ``to_module``) runs as an inner vmap. Loss
buffers that are not parameter groups (``kappa``, the discount ``gamma``, action bounds) are shared by
all seeds and read from the template loss, so a :class:`~torchrl_opt.schedules.KappaSchedule`
writing ``loss.kappa`` in place drives every seed. Sub-modules that hold per-seed networks outside
the parameter groups (SPOT's penalty VAE) are stacked too (:func:`stack_module_states`) and swapped
into the template's module for each seed's slice of the vmap. Every step that trains the same losses
must share one :class:`SeedStack` (the stacked storage the losses' leaves are views of).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import (
    TensorDict,
    TensorDictBase,
    TensorDictParams,
)
from torch import nn
from torch.func import grad_and_value
from torchrl.objectives import SoftUpdate
from torchrl.objectives.common import LossModule

from torchrl_opt.objectives.utils import plain_params

__all__ = [
    "FunctionalAdam",
    "FunctionalStep",
    "FunctionalStepError",
    "SeedBatchedStep",
    "SeedStack",
    "make_functional_step",
    "stack_module_states",
    "stack_seeds",
    "target_update_pairs",
]

LossFn = Callable[[TensorDictBase], TensorDictBase]


class FunctionalStepError(ValueError):
    """A functional step or optimiser was configured with groups, keys or states that do not fit."""


# --------------------------------------------------------------------------- helpers
def _leaves(td: TensorDictBase) -> list[torch.Tensor]:
    return list(td.values(True, True))


def _param_keys(group: TensorDictBase) -> list[tuple[str, ...]]:
    """Nested keys of the ``nn.Parameter`` leaves of ``group`` (buffers excluded)."""
    keys = []
    for key, value in group.items(True, True):
        if isinstance(value, nn.Parameter):
            keys.append(key if isinstance(key, tuple) else (key,))
    return keys


def _group(loss_module: nn.Module, name: str) -> TensorDictParams:
    if name not in loss_module._modules or not isinstance(
        loss_module._modules[name], TensorDictParams
    ):
        groups = [k for k, m in loss_module._modules.items() if isinstance(m, TensorDictParams)]
        raise FunctionalStepError(
            f"{type(loss_module).__name__} has no parameter group {name!r}; its groups are {groups}"
        )
    return loss_module._modules[name]


def _write_back(live: Sequence[TensorDictBase], new: Sequence[TensorDictBase]) -> None:
    """Copy every leaf of ``new[i]`` into the leaf of ``live[i]`` at the same key, in one foreach."""
    dst, src = [], []
    for live_td, new_td in zip(live, new):
        for key, value in new_td.items(True, True):
            dst.append(live_td.get(key))
            src.append(value)
    torch._foreach_copy_(dst, src)


def _install(loss_module: nn.Module, groups: TensorDictBase) -> TensorDict:
    """Make each ``TensorDictParams`` group ``name`` of ``loss_module`` read ``groups[name]``.

    This is what ``groups.to_module(loss_module)`` does to ``TensorDictParams`` children (it replaces
    their ``_param_td``), written out because ``to_module``'s swap copy builds a new
    ``TensorDictParams`` (an ``nn.Module.__init__``), which Dynamo cannot trace. Returns the previous
    contents, to be installed back.
    """
    saved = {}
    for name, group in groups.items():
        params = loss_module._modules[name]
        saved[name] = params._param_td
        params._param_td = group
    return TensorDict(saved, batch_size=[])


def _merge(full: TensorDictBase, part: TensorDictBase) -> TensorDictBase:
    """``full`` with the leaves of ``part`` put in place of its own (a new TensorDict)."""
    out = full.clone(False)
    for key, value in part.items(True, True):
        out.set(key, value)
    return out


# --------------------------------------------------------------------------- Adam
class FunctionalAdam:
    """Adam over a TensorDict of parameters, with its state in TensorDicts and tensor ops only.

    For each leaf ``theta`` with gradient ``g`` and step count ``t`` (a tensor, incremented first)::

        g   <- g + wd * theta                      (L2 weight decay, Adam)    or
        theta <- theta * (1 - lr * wd)             (decoupled, AdamW)
        m   <- m + (1 - beta1) * (g - m)           (torch.lerp, as torch.optim.Adam)
        v   <- beta2 * v + (1 - beta2) * g * g
        theta <- theta - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The bias corrections are computed from the step *tensor* (in float64, then rounded to the
    parameter dtype, as ``torch.optim.Adam`` rounds its Python-float corrections), so there is no
    host synchronisation and the same code runs inside ``torch.compile``, a CUDA graph and
    ``torch.vmap``. On CPU it reproduces ``torch.optim.Adam`` (single-tensor path) to the last bit;
    compiled, to float32 rounding.

    Args:
        params: the live parameters (a TensorDict of tensors; leading batch dimensions, e.g. seeds,
            are allowed: every leaf is updated elementwise).
        lr: as ``torch.optim.Adam``; or one learning rate per top-level key of ``params`` (a
            mapping: the parameter groups of ``torch.optim.Adam``, e.g. SAC's actor and temperature).
        betas, eps, weight_decay: as ``torch.optim.Adam``.
        decoupled_weight_decay: AdamW's decoupled decay instead of L2.
        step_shape: shape of the step counter (``()``, or ``(S,)`` for ``S`` stacked seeds).

    State: ``state["exp_avg"]``, ``state["exp_avg_sq"]`` (same structure as ``params``) and
    ``state["step"]`` (float32 tensor of ``step_shape``).
    """

    def __init__(
        self,
        params: TensorDictBase,
        lr: float | dict[str, float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        step_shape: Sequence[int] = (),
    ) -> None:
        lrs = dict(lr) if isinstance(lr, dict) else {None: lr}
        if not all(value > 0 for value in lrs.values()):
            raise FunctionalStepError(f"lr must be positive, got {lr}")
        if isinstance(lr, dict) and set(lr) != set(params.keys()):
            raise FunctionalStepError(
                f"per-group learning rates {sorted(lr)} do not match the parameter groups "
                f"{sorted(params.keys())}"
            )
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise FunctionalStepError(f"betas must lie in [0, 1), got {betas}")
        if not eps > 0:
            raise FunctionalStepError(f"eps must be positive, got {eps}")
        if weight_decay < 0:
            raise FunctionalStepError(f"weight_decay must be >= 0, got {weight_decay}")
        if not _leaves(params):
            raise FunctionalStepError("FunctionalAdam got no parameters to optimise")
        self.params = params
        self.lr = {k: float(v) for k, v in lr.items()} if isinstance(lr, dict) else float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        leaf = _leaves(params)[0]
        if tuple(params.batch_size[: len(step_shape)]) != tuple(step_shape):
            raise FunctionalStepError(
                f"params of batch size {tuple(params.batch_size)} cannot carry a step counter of "
                f"shape {tuple(step_shape)}"
            )
        with torch.no_grad():
            self.state = TensorDict(
                {
                    "exp_avg": params.detach().apply(torch.zeros_like),
                    "exp_avg_sq": params.detach().apply(torch.zeros_like),
                    "step": torch.zeros(tuple(step_shape), dtype=torch.float32, device=leaf.device),
                },
                batch_size=tuple(step_shape),
            )

    # ---------------------------------------------------------------- maths
    def update(
        self, params: TensorDictBase, grads: TensorDictBase, state: TensorDictBase
    ) -> tuple[TensorDictBase, TensorDictBase]:
        """One Adam step as a pure function: ``(params, grads, state) -> (new_params, new_state)``.

        ``grads`` must have the structure of ``params``. Nothing is modified in place.
        """
        beta1, beta2 = self.betas
        step = state["step"] + 1
        step64 = step.to(torch.float64)
        bias_correction1 = 1 - beta1**step64
        bias_correction2_sqrt = (1 - beta2**step64).sqrt()
        new_params, new_m, new_v = {}, {}, {}
        m_td, v_td = state["exp_avg"], state["exp_avg_sq"]
        for key, theta in params.items(True, True):
            lr = self._lr_of(key)
            step_size = lr / bias_correction1
            g = grads.get(key)
            m, v = m_td.get(key), v_td.get(key)
            if self.weight_decay != 0:
                if self.decoupled_weight_decay:
                    theta = theta * (1 - lr * self.weight_decay)
                else:
                    g = g.add(theta, alpha=self.weight_decay)
            m = torch.lerp(m, g, 1 - beta1)
            v = torch.addcmul(v * beta2, g, g, value=1 - beta2)
            denom = v.sqrt() / bias_correction2_sqrt.to(v.dtype) + self.eps
            # addcdiv's order: theta + (value * m) / denom, with value = -step_size rounded to dtype
            theta = theta + (-step_size).to(m.dtype) * m / denom
            new_params[key], new_m[key], new_v[key] = theta, m, v
        new_state = TensorDict(
            {
                "exp_avg": _rebuild(m_td, new_m),
                "exp_avg_sq": _rebuild(v_td, new_v),
                "step": step,
            },
            batch_size=state.batch_size,
        )
        return _rebuild(params, new_params), new_state

    def _lr_of(self, key: str | tuple[str, ...]) -> float:
        if not isinstance(self.lr, dict):
            return self.lr
        return self.lr[key[0] if isinstance(key, tuple) else key]

    @torch.no_grad()
    def step(self, grads: TensorDictBase) -> None:
        """Apply :meth:`update` to the live ``params`` and ``state`` in place."""
        new_params, new_state = self.update(self.params, grads, self.state)
        _write_back([self.params, self.state], [new_params, new_state])

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters and a copy of the state (``exp_avg``, ``exp_avg_sq`` flat, ``step``)."""
        return {
            "state": {
                key: value.detach().clone()
                for key, value in self.state.flatten_keys(".").items()
            },
            "hyperparameters": {
                "lr": self.lr,
                "betas": self.betas,
                "eps": self.eps,
                "weight_decay": self.weight_decay,
                "decoupled_weight_decay": self.decoupled_weight_decay,
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy a :meth:`state_dict` in place (compiled / CUDA-graphed steps keep their tensors)."""
        if set(state_dict) != {"state", "hyperparameters"}:
            raise FunctionalStepError(
                f"not a FunctionalAdam state_dict: keys {sorted(state_dict)}"
            )
        ours = self.state.flatten_keys(".")
        theirs = state_dict["state"]
        if set(theirs) != set(ours.keys()):
            raise FunctionalStepError(
                "FunctionalAdam state_dict does not match the parameters: missing "
                f"{sorted(set(ours.keys()) - set(theirs))}, unexpected "
                f"{sorted(set(theirs) - set(ours.keys()))}"
            )
        for key, value in theirs.items():
            if tuple(value.shape) != tuple(ours[key].shape):
                raise FunctionalStepError(
                    f"FunctionalAdam state {key!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(ours[key].shape)}"
                )
        hp = state_dict["hyperparameters"]
        lr = hp["lr"]
        self.lr = {k: float(v) for k, v in lr.items()} if isinstance(lr, dict) else float(lr)
        self.betas = tuple(float(b) for b in hp["betas"])
        self.eps = float(hp["eps"])
        self.weight_decay = float(hp["weight_decay"])
        self.decoupled_weight_decay = bool(hp["decoupled_weight_decay"])
        with torch.no_grad():
            for key, value in theirs.items():
                ours[key].copy_(value)


def _rebuild(like: TensorDictBase, leaves: dict) -> TensorDictBase:
    """A TensorDict with the nested structure (and batch sizes) of ``like`` and the given leaves."""
    out = like.empty(recurse=True)
    for key, value in leaves.items():
        out.set(key, value)
    return out


# --------------------------------------------------------------------------- target updates
def target_update_pairs(
    updater: Any, loss_module: LossModule
) -> tuple[list[tuple[str, str]], float]:
    """``(pairs, weight)`` of a pipeline target updater, for :func:`make_functional_step`.

    * TorchRL's :class:`~torchrl.objectives.SoftUpdate` moves every ``target_<name>`` of the loss
      with ``theta' <- lerp(theta', theta, 1 - eps)``; the weight returned is ``1 - eps`` exactly as
      SoftUpdate computes it (so the functional update matches it bit for bit).
    * :class:`~torchrl_opt.pipeline.updates.TargetUpdate` moves the targets of its groups
      ``updater.names`` that exist, with weight ``tau``.
    """
    if isinstance(updater, SoftUpdate):
        names = [
            name[len("target_"):]
            for name in loss_module._modules
            if name.startswith("target_") and name.endswith("_params")
        ]
        return [(name, f"target_{name}") for name in names], 1 - updater.eps
    if hasattr(updater, "names") and hasattr(updater, "tau"):
        names = [name for name in updater.names if f"target_{name}" in loss_module._modules]
        return [(name, f"target_{name}") for name in names], float(updater.tau)
    raise FunctionalStepError(
        f"Cannot read target pairs from {type(updater).__name__}; pass target_updater_pairs and tau"
    )


# --------------------------------------------------------------------------- the step
class FunctionalStep:
    """A drop-in alternative to :func:`~torchrl_opt.pipeline.updates.make_step`.

    ``step(batch) -> detached loss_fn(batch)``, computing, for the ``nn.Parameter`` leaves ``theta``
    of the groups ``param_names`` of ``loss_module``::

        (g, L) = grad_and_value(theta -> sum_{k in loss_keys} loss_fn(batch)[k])(theta)
        theta  <- FunctionalAdam(theta, clip(g))             (written in place into the live params)
        theta'_t <- lerp(theta'_t, theta_s, tau)             for (s, t) in target_updater_pairs

    ``clip(g)`` is ``g * min(1, max_grad_norm / (||g||_2 + 1e-6))`` when ``max_grad_norm`` is set (as
    ``torch.nn.utils.clip_grad_norm_``). The target update reads the *updated* sources, as
    ``make_step`` runs ``optimizer.step()`` before ``target_updater.step()``.

    The body is one function (no ``backward``, no ``torch.optim``, no host sync) that
    ``torch.compile(step, fullgraph=True)`` captures whole. :attr:`optimizer` holds the Adam state
    (``state_dict``/``load_state_dict``). :meth:`pure` is the same update as a pure function, used by
    :class:`SeedBatchedStep` under ``torch.vmap``.
    """

    def __init__(
        self,
        loss_module: LossModule,
        param_names: Sequence[str],
        loss_fn: LossFn,
        loss_keys: Sequence[str],
        lr: float | dict[str, float],
        *,
        target_updater_pairs: Sequence[tuple[str, str]] | None = None,
        tau: float = 0.005,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        max_grad_norm: float | None = None,
    ) -> None:
        if not param_names:
            raise FunctionalStepError("param_names is empty: nothing to train")
        if not loss_keys:
            raise FunctionalStepError("loss_keys is empty: nothing to minimise")
        if not 0.0 <= tau <= 1.0:
            raise FunctionalStepError(f"tau must lie in [0, 1], got {tau}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise FunctionalStepError(f"max_grad_norm must be positive, got {max_grad_norm}")
        self.loss_module = loss_module
        self.param_names = tuple(param_names)
        self.loss_fn = loss_fn
        self.loss_keys = tuple(loss_keys)
        self.tau = float(tau)
        self.max_grad_norm = max_grad_norm
        pairs = list(target_updater_pairs or ())
        for source, target in pairs:
            _group(loss_module, source)
            _group(loss_module, target)
        self.target_pairs = pairs
        params = {}
        for name in self.param_names:
            group = plain_params(_group(loss_module, name))
            keys = _param_keys(group)
            if not keys:
                raise FunctionalStepError(f"parameter group {name!r} has no nn.Parameter leaves")
            params[name] = group.select(*keys)
        #: the live trainable leaves (the loss's own ``nn.Parameter`` objects), keyed by group.
        self.params = TensorDict(params, batch_size=[])
        self.optimizer = FunctionalAdam(
            self.params,
            lr,
            betas,
            eps,
            weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )

    # ---------------------------------------------------------------- pure maths
    def live_groups(self) -> TensorDictBase:
        """The full groups (parameters and buffers) the step reads: trained groups and targets."""
        names = dict.fromkeys(
            [*self.param_names, *[n for pair in self.target_pairs for n in pair]]
        )
        return TensorDict(
            {name: plain_params(_group(self.loss_module, name)) for name in names},
            batch_size=[],
        )

    def pure(
        self,
        groups: TensorDictBase,
        adam_state: TensorDictBase,
        batch: TensorDictBase,
        install: TensorDictBase | None = None,
    ) -> tuple[TensorDictBase, TensorDictBase, TensorDictBase, TensorDictBase]:
        """The step as a pure function of tensors.

        Args:
            groups: full groups keyed by name, holding at least :attr:`param_names` and the groups of
                the target pairs (see :meth:`live_groups`).
            adam_state: the optimiser state (``FunctionalAdam.state`` layout).
            batch: the loss's input.
            install: extra groups swapped into the loss while it runs (the seed-batched step installs
                every group; the single step reads the untrained groups live).

        Returns:
            ``(new_params, new_adam_state, new_targets, metrics)``: the updated trainable leaves (keyed
            like :attr:`params`), the new Adam state, the new target groups keyed by target name, and
            the detached output of ``loss_fn``.
        """
        trainable_keys = [
            (name, *(key if isinstance(key, tuple) else (key,)))
            for name in self.param_names
            for key in self.params[name].keys(True, True)
        ]
        theta = groups.select(*trainable_keys)
        trained_groups = groups.select(*self.param_names)
        loss_module, loss_fn, loss_keys = self.loss_module, self.loss_fn, self.loss_keys

        def objective(theta_: TensorDictBase) -> tuple[torch.Tensor, TensorDictBase]:
            swap = _merge(trained_groups, theta_)
            if install is not None:
                swap = _merge(install, swap)
            saved = _install(loss_module, swap)
            try:
                out = loss_fn(batch)
            finally:
                _install(loss_module, saved)
            total = sum(out.get(key) for key in loss_keys)
            return total, out.detach()

        grads, (_, metrics) = grad_and_value(objective, has_aux=True)(theta)
        if self.max_grad_norm is not None:
            grads = _clip_by_total_norm(grads, self.max_grad_norm)
        new_theta, new_state = self.optimizer.update(theta, grads, adam_state)
        new_targets = {}
        for source, target in self.target_pairs:
            src = groups.get(source)
            if source in self.param_names:
                src = _merge(src, new_theta.get(source))
            tgt = groups.get(target)
            new_targets[target] = _rebuild(
                tgt,
                {
                    key: torch.lerp(value, src.get(key), self.tau)
                    for key, value in tgt.items(True, True)
                },
            )
        return new_theta, new_state, TensorDict(new_targets, batch_size=[]), metrics

    # ---------------------------------------------------------------- the live step
    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        with torch.no_grad():
            groups = self.live_groups()
            new_theta, new_state, new_targets, metrics = self.pure(
                groups, self.optimizer.state, batch
            )
            _write_back(
                [self.params, self.optimizer.state, groups],
                [new_theta, new_state, new_targets],
            )
        return metrics


def _clip_by_total_norm(grads: TensorDictBase, max_norm: float) -> TensorDictBase:
    """``g * min(1, max_norm / (||g||_2 + 1e-6))`` over all leaves (``clip_grad_norm_``)."""
    leaves = _leaves(grads)
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g, 2) for g in leaves]), 2
    )
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return grads.apply(lambda g: g * coef)


def make_functional_step(
    loss_module: LossModule,
    param_names: Sequence[str],
    loss_fn: LossFn,
    loss_keys: Sequence[str],
    lr: float | dict[str, float],
    *,
    target_updater_pairs: Sequence[tuple[str, str]] | None = None,
    tau: float = 0.005,
    max_grad_norm: float | None = None,
    **adam_kwargs: Any,
) -> FunctionalStep:
    """Build a :class:`FunctionalStep` (see there for the update it computes).

    ``loss_module`` owns the parameter groups ``param_names`` (e.g. ``("qvalue_off_network_params",
    "qvalue_on_network_params")``); ``loss_fn`` may be any callable reading them through the module
    (a bound loss method, a :class:`~torchrl_opt.objectives.meta.MetaAdaptationLoss` wrapping it).
    ``adam_kwargs`` go to :class:`FunctionalAdam` (``betas``, ``eps``, ``weight_decay``,
    ``decoupled_weight_decay``).
    """
    return FunctionalStep(
        loss_module,
        param_names,
        loss_fn,
        loss_keys,
        lr,
        target_updater_pairs=target_updater_pairs,
        tau=tau,
        max_grad_norm=max_grad_norm,
        **adam_kwargs,
    )


# --------------------------------------------------------------------------- seed batching
def _stack_and_repoint(per_seed: Sequence[TensorDictBase], what: str) -> TensorDictBase:
    """Stack ``per_seed`` (same keys and shapes) into new storage ``[S, ...]`` and re-point every
    seed's leaves (``.data``) at their slice of it."""
    keys = list(per_seed[0].keys(True, True))
    for td in per_seed[1:]:
        if list(td.keys(True, True)) != keys:
            raise FunctionalStepError(f"{what} has different keys across seeds")
        for key in keys:
            if td.get(key).shape != per_seed[0].get(key).shape:
                raise FunctionalStepError(f"{what} leaf {key} has different shapes across seeds")
    with torch.no_grad():
        stacked = torch.stack([td.detach() for td in per_seed], 0).contiguous()
        for i, td in enumerate(per_seed):
            for key in keys:
                td.get(key).data = stacked.get(key)[i]
    return stacked


def _check_same_loss(losses: Sequence[LossModule]) -> None:
    if len(losses) < 1:
        raise FunctionalStepError("stack_seeds needs at least one loss")
    first = losses[0]
    names = [k for k, m in first._modules.items() if isinstance(m, TensorDictParams)]
    for loss in losses[1:]:
        if type(loss) is not type(first):
            raise FunctionalStepError(
                f"stack_seeds got losses of types {type(first).__name__} and {type(loss).__name__}"
            )
        other = [k for k, m in loss._modules.items() if isinstance(m, TensorDictParams)]
        if other != names:
            raise FunctionalStepError(f"losses have different parameter groups: {names} vs {other}")


def stack_seeds(losses: Sequence[LossModule]) -> TensorDict:
    """Stack the parameter groups of ``S`` copies of one loss along a new leading seed dimension.

    Returns a TensorDict of batch size ``[S]`` keyed by group name (every ``TensorDictParams`` child
    of the losses: trained groups, targets, frozen groups). Each loss's leaves are then re-pointed
    (``.data``) at their slice of the stacked storage, so updates written into the stack are seen by
    every per-seed module, and the per-seed modules keep working on their own.

    Raises :class:`FunctionalStepError` when the losses differ in type, groups, keys or shapes.
    """
    _check_same_loss(losses)
    names = [k for k, m in losses[0]._modules.items() if isinstance(m, TensorDictParams)]
    groups = {
        name: _stack_and_repoint(
            [plain_params(getattr(loss, name)) for loss in losses], f"group {name!r}"
        )
        for name in names
    }
    return TensorDict(groups, batch_size=[len(losses)])


def stack_module_states(losses: Sequence[LossModule]) -> dict[str, TensorDictBase]:
    """Stack the state of the losses' other sub-modules that hold parameters, per seed.

    A loss can read networks that are not one of its parameter groups: SPOT's actor penalty
    (``actor_penalty``) holds the seed's frozen behaviour VAE. For every direct child module that
    is not a ``TensorDictParams`` group and owns ``nn.Parameter`` s, the parameters and buffers of
    all seeds (``TensorDict.from_module``) are stacked ``[S, ...]`` and re-pointed like
    :func:`stack_seeds`' groups; :class:`SeedBatchedStep` installs seed ``i``'s slice into the template
    loss's module while the seed's update runs. Returns ``{child name: stacked state}`` (empty for
    losses without such children).
    """
    _check_same_loss(losses)
    names = [
        name
        for name, module in losses[0]._modules.items()
        if not isinstance(module, TensorDictParams)
        and module is not None
        and any(True for _ in module.parameters())
    ]
    return {
        name: _stack_and_repoint(
            [TensorDict.from_module(getattr(loss, name)) for loss in losses], f"module {name!r}"
        )
        for name in names
    }


def _with_modules(template: nn.Module, states: dict[str, TensorDictBase], fn: Callable[[], Any]):
    """``fn()`` with ``template.<name>`` reading ``states[name]`` (nested contexts, compilable)."""
    items = list(states.items())

    def run(i: int):
        if i == len(items):
            return fn()
        name, state = items[i]
        with state.to_module(getattr(template, name), preserve_module_state=False):
            return run(i + 1)

    return run(0)


@dataclass
class SeedStack:
    """``S`` copies of one loss whose parameter groups live in one stacked TensorDict.

    Build it once per set of losses with :meth:`of` (which calls :func:`stack_seeds`) and give it to
    every :class:`SeedBatchedStep` that trains those losses (critic and actor steps, the pre-training
    step): they must all read and write the *same* stacked storage, which the per-seed losses' leaves
    are views of. Stacking the same losses twice would re-point their leaves at the second stack and
    silently detach the steps built on the first.
    """

    losses: list[LossModule]
    #: every parameter group of every seed, batch size ``[S]`` (see :func:`stack_seeds`).
    groups: TensorDict
    #: the other per-seed sub-modules' states (see :func:`stack_module_states`).
    modules: dict[str, TensorDictBase] = field(default_factory=dict)

    @classmethod
    def of(cls, losses: Sequence[LossModule]) -> SeedStack:
        """Stack ``losses`` (see :func:`stack_seeds` and :func:`stack_module_states`)."""
        losses = list(losses)
        return cls(losses, stack_seeds(losses), stack_module_states(losses))

    @property
    def num_seeds(self) -> int:
        return len(self.losses)

    @property
    def template(self) -> LossModule:
        """``losses[0]``: the loss whose code the seed-batched steps run."""
        return self.losses[0]


class SeedBatchedStep:
    """``S`` seeds of one functional step in one graph: ``torch.vmap`` over a leading seed dimension.

    Args:
        losses: a :class:`SeedStack` (shared by every step that trains the same losses), or ``S``
            independently initialised copies of one loss (same type and sizes), stacked here.
        step: a :class:`FunctionalStep` built on ``losses[0]`` (the template whose code runs; its
            ``loss_fn`` must read the template's groups, e.g. ``losses[0].qvalue_losses`` or a
            ``MetaAdaptationLoss(losses[0])``).
        randomness: ``torch.vmap`` randomness over seeds; ``"different"`` (default) draws independent
            noise per seed (TD3's target smoothing), ``"same"`` shares it.

    Calling it with a batch of batch size ``[S, B]`` (seed ``i`` reads ``batch[i]``) computes, for every
    seed ``i`` independently, ``step.pure`` on seed ``i``'s groups and Adam state, and writes the new
    parameters, Adam state and targets back in place; it returns the per-seed metrics (batch size
    ``[S]``). Because ``vmap(grad(f))`` is a per-seed gradient, the result equals ``S`` independent
    runs (up to the noise draws). After stacking, ``losses[i]`` holds seed ``i``'s live parameters.
    """

    def __init__(
        self,
        losses: SeedStack | Sequence[LossModule],
        step: FunctionalStep,
        *,
        randomness: str = "different",
    ) -> None:
        stack = losses if isinstance(losses, SeedStack) else SeedStack.of(losses)
        if step.loss_module is not stack.template:
            raise FunctionalStepError("step must be built on losses[0], the template loss")
        if randomness not in ("different", "same", "error"):
            raise FunctionalStepError("randomness must be 'different', 'same' or 'error'")
        self.stack = stack
        self.num_seeds = stack.num_seeds
        self.losses = stack.losses
        self.step = step
        self.randomness = randomness
        #: every parameter group of every seed, batch size ``[S]`` (shared through ``stack``).
        self.groups = stack.groups
        trainable_keys = [
            (name, *(key if isinstance(key, tuple) else (key,)))
            for name in step.param_names
            for key in step.params[name].keys(True, True)
        ]
        self.params = self.groups.select(*trainable_keys)
        self.optimizer = FunctionalAdam(
            self.params,
            step.optimizer.lr,
            step.optimizer.betas,
            step.optimizer.eps,
            step.optimizer.weight_decay,
            decoupled_weight_decay=step.optimizer.decoupled_weight_decay,
            step_shape=(self.num_seeds,),
        )

    def _one_seed(self, groups, modules, adam_state, batch):
        return _with_modules(
            self.stack.template,
            modules,
            lambda: self.step.pure(groups, adam_state, batch, install=groups),
        )

    def __call__(self, batch: TensorDictBase) -> TensorDictBase:
        if batch.batch_size[:1] != torch.Size([self.num_seeds]):
            raise FunctionalStepError(
                f"batch must have a leading seed dimension of size {self.num_seeds}, got batch "
                f"size {tuple(batch.batch_size)}"
            )
        with torch.no_grad():
            new_theta, new_state, new_targets, metrics = torch.vmap(
                self._one_seed, in_dims=(0, 0, 0, 0), randomness=self.randomness
            )(self.groups, self.stack.modules, self.optimizer.state, batch)
            _write_back(
                [self.params, self.optimizer.state, self.groups],
                [new_theta, new_state, new_targets],
            )
        return metrics
