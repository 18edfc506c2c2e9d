"""The hand-over from an offline agent to OPT's fine-tuning loss.

OPT fine-tunes the offline agent's actor and critic ``Q_off`` (and IQL's ``V_off``) beside a new
online critic ``Q_on``. The losses copy the critics they are given into stacked functional
parameters (TorchRL's ``convert_to_functional``), so a trained offline agent is handed over by
copying *parameters*, not modules. One call does it, whatever the offline agent is:

* :func:`load_offline` ``(loss, source)`` copies the actor, ``Q_off`` (and ``V_off``) and their
  targets from ``source`` into an existing :class:`~torchrl_opt.objectives.td3_opt.OPTLoss` or
  :class:`~torchrl_opt.objectives.iql_opt.OPTIQLLoss`;
* :func:`opt_loss_from_offline` ``(source, qvalue_on_network=...)`` builds that loss from a TorchRL
  loss module and then loads it.

``source`` may be

* this library's offline checkpoint ``offline.pt`` (a path, or the loaded dict
  ``{"format_version": 1 | 2, "meta": ..., "offline_loss": <state_dict>, "vae": ..., ...}``);
* a loss module: TorchRL's ``TD3Loss`` / ``TD3BCLoss`` / ``IQLLoss``, or this library's ``OPTLoss`` /
  ``OPTIQLLoss`` (the offline loss);
* the ``state_dict()`` of any of those (TorchRL's names ``qvalue_network_params``,
  ``value_network_params`` are mapped onto ``qvalue_off_network_params``, ``value_off_network_params``);
* plain modules: ``{"actor": actor, "qvalue": [q_1, ..., q_n], "value": v}`` (``"value"`` for IQL
  only; one ``qvalue`` module is copied into every member; the targets start equal to the live
  critics).

What is copied, and what never is:

* copied in place (``Tensor.copy_``: optimisers, compiled graphs and CUDA graphs that hold the
  loss's parameters stay valid): ``actor_network_params`` (and its target), ``qvalue_off_*`` and
  ``target_qvalue_off_*``, ``value_off_*``, and the VAE inside SPOT's ``actor_penalty``;
* never copied: the online pair (``qvalue_on_*``, ``value_on_*``: fresh, trained by online
  pre-training), ``kappa`` (a :class:`~torchrl_opt.schedules.KappaSchedule` attached to it keeps
  its buffer *and* its value), the value estimator's settings (``gamma`` is the fine-tuning
  loss's), and SPOT's penalty schedule (``lambda_``, its step count);
* checked: the action bounds must agree; every other entry of the loss must come from
  ``source`` (or be named in ``fresh``); entries of ``source`` the loss lacks raise
  :class:`OfflineStateError` naming them (skip them with ``ignore``), as do shape mismatches.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.objectives.common import LossModule

from torchrl_opt.objectives.iql_opt import OPTIQLLoss
from torchrl_opt.objectives.td3_opt import OPTLoss

__all__ = [
    "OFFLINE_FORMAT_VERSIONS",
    "OfflineHandover",
    "OfflineStateError",
    "load_offline",
    "opt_loss_from_offline",
]

#: the ``format_version`` values of ``offline.pt`` this module reads.
OFFLINE_FORMAT_VERSIONS = (1, 2)

# TorchRL's single-critic names -> this library's offline-critic names.
_TORCHRL_GROUPS = {
    "qvalue_network_params": "qvalue_off_network_params",
    "target_qvalue_network_params": "target_qvalue_off_network_params",
    "value_network_params": "value_off_network_params",
    "target_value_network_params": "target_value_off_network_params",
}
# loss entries that are never loaded: schedules and settings, not learned state.
_NEVER_LOADED = ("kappa", "_value_estimator.", "actor_penalty.lambda_", "actor_penalty._extra_state")
# loss entries the source need not provide: the online pair, the penalty, the never-loaded ones.
_OPTIONAL = (
    "qvalue_on_network_params.",
    "target_qvalue_on_network_params.",
    "value_on_network_params.",
    "target_value_on_network_params.",
    "actor_penalty.",
    *_NEVER_LOADED,
)
_BOUNDS = ("min_action", "max_action")


class OfflineStateError(ValueError):
    """The offline source cannot initialise the loss (foreign, missing or mismatched entries)."""


@dataclass(frozen=True)
class OfflineHandover:
    """What :func:`load_offline` did.

    Attributes:
        loaded: the loss's state entries copied from the source.
        kept: the loss's state entries left as they were (online pair, kappa, schedules, ``fresh``).
        meta: ``offline.pt``'s ``"meta"`` (env id, backbone, spaces); ``{}`` for other sources.
        extras: ``offline.pt``'s other entries (``"vae"``, ``"obs_loc"``, ``"obs_scale"``: the
            observation normalisation the offline agent was trained with); ``{}`` otherwise.
    """

    loaded: tuple[str, ...]
    kept: tuple[str, ...]
    meta: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- sources
def _read_checkpoint(payload: Mapping[str, Any], where: str) -> tuple[dict, dict, dict]:
    version = payload.get("format_version")
    if version is not None and version not in OFFLINE_FORMAT_VERSIONS:
        raise OfflineStateError(
            f"{where} has format_version {version!r}; this library reads offline checkpoints of "
            f"versions {OFFLINE_FORMAT_VERSIONS}."
        )
    state = payload["offline_loss"]
    if not isinstance(state, Mapping):
        raise OfflineStateError(
            f"{where}['offline_loss'] must be a loss state_dict, got {type(state).__name__}."
        )
    extras = {
        k: v for k, v in payload.items() if k not in ("format_version", "meta", "offline_loss")
    }
    return dict(state), dict(payload.get("meta") or {}), extras


def _module_state(prefix: str, modules: Sequence[nn.Module], members: int | None) -> dict:
    """State-dict entries of a parameter group built from plain modules."""
    if members is None:
        params = TensorDict.from_module(modules[0], as_module=True)
    else:
        if len(modules) == 1:
            modules = list(modules) * members
        if len(modules) != members:
            raise OfflineStateError(
                f"got {len(modules)} modules for {prefix} but the loss has {members} members."
            )
        params = torch.stack([TensorDict.from_module(m, as_module=True) for m in modules], 0)
    return {
        f"{prefix}.{key}": value.detach().clone()
        for key, value in params.flatten_keys(".").items()
    }


def _modules_state(loss: LossModule, source: Mapping[str, Any]) -> dict:
    unknown = sorted(set(source) - {"actor", "qvalue", "value"})
    if unknown or "actor" not in source or "qvalue" not in source:
        raise OfflineStateError(
            "plain-module sources are {'actor': actor, 'qvalue': [q_1, ..., q_n], 'value': v} "
            f"('value' for IQL only); got the keys {sorted(source)}."
        )
    qvalue = source["qvalue"]
    qvalue = list(qvalue) if isinstance(qvalue, (list, tuple)) else [qvalue]
    state = _module_state("actor_network_params", [source["actor"]], None)
    critic = _module_state("qvalue_off_network_params", qvalue, loss.num_qvalue_nets)
    state.update(critic)
    state.update({f"target_{k}": v.clone() for k, v in critic.items()})
    if "target_actor_network_params" in loss._modules:
        state.update(
            {f"target_{k}": v.clone() for k, v in state.items() if k.startswith("actor_")}
        )
    if "value" in source:
        state.update(_module_state("value_off_network_params", [source["value"]], None))
    return state


def _rename_torchrl(state: Mapping[str, Any]) -> dict:
    out = {}
    for key, value in state.items():
        group, _, rest = key.partition(".")
        out[f"{_TORCHRL_GROUPS.get(group, group)}.{rest}" if rest else key] = value
    return out


def _resolve(
    loss: LossModule, source: Any, map_location: str | torch.device | None
) -> tuple[dict, dict, dict, str]:
    """``(state in this library's names, meta, extras, description)`` of ``source``."""
    meta: dict = {}
    extras: dict = {}
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        if not os.path.isfile(where):
            raise OfflineStateError(f"No offline checkpoint at {where}")
        payload = torch.load(where, map_location=map_location, weights_only=True)
        if not isinstance(payload, Mapping) or "offline_loss" not in payload:
            raise OfflineStateError(
                f"{where} is not an offline checkpoint (no 'offline_loss' entry); expected "
                "this library's offline.pt."
            )
        state, meta, extras = _read_checkpoint(payload, where)
        description = f"offline checkpoint {where}"
    elif isinstance(source, LossModule):
        state, description = source.state_dict(), f"{type(source).__name__} module"
    elif isinstance(source, Mapping):
        if "offline_loss" in source:
            state, meta, extras = _read_checkpoint(source, "the offline checkpoint dict")
            description = "the offline checkpoint dict"
        elif any(isinstance(v, nn.Module) for v in source.values()) or (
            "qvalue" in source and "actor" in source
        ):
            state, description = _modules_state(loss, source), "the given modules"
        else:
            state, description = dict(source), "the state_dict"
    else:
        raise TypeError(
            "source must be a path to offline.pt, its loaded dict, a loss module (TD3Loss, "
            "TD3BCLoss, IQLLoss, OPTLoss, OPTIQLLoss), a loss state_dict, or "
            f"{{'actor': ..., 'qvalue': [...]}} modules; got {type(source).__name__}."
        )
    return _rename_torchrl(state), meta, extras, description


# --------------------------------------------------------------------------- loading
def load_offline(
    loss: LossModule,
    source: Any,
    *,
    fresh: Sequence[str] = (),
    ignore: Sequence[str] = (),
    map_location: str | torch.device | None = "cpu",
) -> OfflineHandover:
    """Initialise the fine-tuning ``loss`` from the offline agent ``source``.

    Copies the actor, ``Q_off`` (and ``V_off``) and their targets in place; leaves the online
    pair, ``kappa`` (and any schedule attached to it) and the penalty schedule untouched. See the
    module docstring for the accepted sources and the exact rules.

    Args:
        loss: an ``OPTLoss`` or ``OPTIQLLoss`` (with or without ``Q_on``), built with the same
            architectures as the offline agent.
        source: ``offline.pt`` (path or dict), a TorchRL or torchrl-opt loss module or its
            ``state_dict``, or ``{"actor": ..., "qvalue": [...], "value": ...}`` modules.

    Keyword Args:
        fresh: prefixes of loss entries that may stay at their current values although the
            source has them (e.g. ``("qvalue_off", "target_qvalue_off")`` to restart ``Q_off``).
        ignore: prefixes of source entries to skip (e.g. ``("actor_penalty",)`` to hand a SPOT
            agent over to a loss without the penalty).
        map_location: where ``torch.load`` puts a checkpoint's tensors (default ``"cpu"``; they
            are then copied onto the loss's devices).

    Returns:
        an :class:`OfflineHandover` (entries loaded and kept, ``offline.pt``'s meta and extras).

    Raises:
        OfflineStateError: entries of ``source`` the loss lacks, entries of the loss the source
            does not provide, mismatched shapes or action bounds, an unknown checkpoint version.
    """
    state, meta, extras, where = _resolve(loss, source, map_location)
    fresh, ignore = tuple(fresh), tuple(ignore)
    target = loss.state_dict()
    state = {
        k: v
        for k, v in state.items()
        if not k.startswith(_NEVER_LOADED) and not (ignore and k.startswith(ignore))
    }
    for key in _BOUNDS:
        if key in state and key in target and not torch.equal(
            state.pop(key).to(target[key].device), target[key]
        ):
            raise OfflineStateError(
                f"{where} was trained with other action bounds ({key} differs): build the loss "
                "with the offline agent's action_spec."
            )
    unexpected = sorted(k for k in state if k not in target)
    if unexpected:
        raise OfflineStateError(
            f"{where} has entries {type(loss).__name__} lacks: {unexpected}. The source must be "
            "the same kind of agent (TD3/TD3+BC/SPOT -> OPTLoss, IQL -> OPTIQLLoss) with the "
            "same networks; pass ignore=(prefix, ...) to skip entries on purpose."
        )
    optional = _OPTIONAL + _BOUNDS + fresh
    missing = sorted(k for k in target if k not in state and not k.startswith(optional))
    if missing:
        raise OfflineStateError(
            f"{where} does not provide these entries of {type(loss).__name__}: {missing}. "
            "Check that the loss has the offline agent's architecture (and delay_actor/"
            "delay_qvalue), or list them in fresh=(prefix, ...) to keep their current values."
        )
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
    for key, value in list(state.items()):
        expected = target[key].shape
        if value.shape != expected:
            if value.shape == expected[1:] and expected[:1] == (1,):
                state[key] = value.unsqueeze(0)  # TorchRL's single-critic layout
                continue
            raise OfflineStateError(
                f"entry {key!r} has shape {tuple(value.shape)} in {where} but "
                f"{tuple(expected)} in {type(loss).__name__}: the networks differ (hidden sizes, "
                "num_qvalue_nets)."
            )
    with torch.no_grad():
        result = loss.load_state_dict(state, strict=False)
    # every entry given was one of the loss's: nothing can be unexpected here
    assert not result.unexpected_keys, result.unexpected_keys
    loaded = tuple(sorted(state))
    kept = tuple(sorted(k for k in target if k not in state))
    return OfflineHandover(loaded=loaded, kept=kept, meta=meta, extras=extras)


def opt_loss_from_offline(
    source: LossModule,
    qvalue_on_network: nn.Module | Sequence[nn.Module] | None = None,
    *,
    value_on_network: nn.Module | None = None,
    **loss_kwargs: Any,
) -> LossModule:
    """Build OPT's fine-tuning loss from a trained offline loss module, then :func:`load_offline`.

    ``source`` is TorchRL's ``TD3Loss``/``TD3BCLoss`` (gives an ``OPTLoss``), ``IQLLoss`` (gives an
    ``OPTIQLLoss``), or this library's ``OPTLoss``/``OPTIQLLoss``. The new loss *shares* the
    source's actor module (so the policy a collector holds acts with the fine-tuned weights), gets
    copies of its critics (and value network), its action bounds and ``num_qvalue_nets``, and the
    new online critic ``qvalue_on_network`` (with ``value_on_network`` for IQL) when given.
    ``loss_kwargs`` go to the loss's constructor (``kappa``, ``loss_function``, ...; the value
    estimator is the new loss's default: call ``make_value_estimator(gamma=...)``).
    """
    if not isinstance(source, LossModule):
        raise TypeError(
            "opt_loss_from_offline needs the offline loss module (it reads its networks); for "
            "offline.pt or a state_dict, build the loss with the same networks and call "
            f"load_offline(loss, source). Got {type(source).__name__}."
        )
    names = dict(source.named_children()) | source.__dict__
    critic = names.get("qvalue_off_network", names.get("qvalue_network"))
    value = names.get("value_off_network", names.get("value_network"))
    actor = names.get("actor_network")
    if critic is None or actor is None:
        raise TypeError(
            f"{type(source).__name__} has no actor_network/qvalue_network: not an actor-critic "
            "offline loss."
        )
    members = getattr(source, "num_qvalue_nets", 2)
    critics = [copy.deepcopy(critic) for _ in range(members)]
    if value is not None:
        loss = OPTIQLLoss(
            actor,
            critics,
            copy.deepcopy(value),
            qvalue_on_network,
            value_on_network,
            num_qvalue_nets=members,
            **loss_kwargs,
        )
    else:
        if value_on_network is not None:
            raise ValueError("value_on_network is for IQL sources; this source has no V network")
        bounds = (source.min_action.detach().clone(), source.max_action.detach().clone())
        loss = OPTLoss(
            actor,
            critics,
            qvalue_on_network,
            bounds=bounds,
            num_qvalue_nets=members,
            **loss_kwargs,
        )
    load_offline(loss, source)
    return loss
