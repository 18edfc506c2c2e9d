"""The settings each backbone and peer was published with, per domain, and where each comes from.

One place for these facts: a configuration entry left ``None`` is filled from here when the
configuration is validated (:func:`torchrl_opt.pipeline.config.to_run_config`), so a programmatic
``RunConfig(method="wsrl")`` and the recipes get the same values, and the resolved values are what
the run's ``summary.json`` and checkpoint fingerprint record. An explicit value always wins.

Sources (read at these commits):

* ``CORL``: corl-team/CORL ``eeeeef2`` (Tarasov et al. 2022), ``configs/finetune/spot/*``,
  ``configs/finetune/iql/*``, ``configs/offline/iql/*``: the offline-to-online settings of SPOT and
  IQL the OPT paper's backbones follow.
* ``WSRL``: zhouzypaul/wsrl ``891ee35`` (Zhou et al. 2024), ``experiments/configs/*`` and
  ``experiments/scripts/*`` (details and file:line references in ``docs/peers.md``).
* ``RLPD``: ikostrikov/rlpd (Ball et al. 2023); ``OPT``: the OPT paper (Shin, Kim et al. 2025).

=========  ==========================================================================
table      rows
=========  ==========================================================================
``BACKBONE_PRESETS``  per backbone: network defaults and learning rates
``SPOT_PRESETS``      per domain (CORL's SPOT fine-tuning configs)
``IQL_PRESETS``       per domain (CORL's IQL configs)
``WSRL_PRESETS``      WSRL's agent (all domains) and per-domain pre-training
=========  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "BACKBONE_PRESETS",
    "IQL_PRESETS",
    "SPOT_PRESETS",
    "WSRL_AGENT",
    "WSRL_PRESETS",
    "backbone_presets",
    "method_presets",
]


def _frozen(table: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in table.items()})


#: per backbone (``BackboneConfig`` entries). ``td3``: TD3 / TD3+BC (Fujimoto et al.; OEMA);
#: ``spot``: CORL SPOT (``actor_lr: 0.0001`` in every ``configs/finetune/spot/*`` file);
#: ``iql``: CORL IQL (``actor_lr: 3e-4``); ``sac``: RLPD (10 critics, LayerNorm critics, ensemble
#: mean for the actor, backup entropy, ``-|A|/2``, pairs without replacement).
BACKBONE_PRESETS = _frozen({
    "td3": {"actor_lr": 3e-4, "actor_layer_norm": False, "critic_layer_norm": False, "num_qvalue_nets": 2,
            "actor_dropout": 0.0},
    "spot": {"actor_lr": 1e-4, "actor_layer_norm": False, "critic_layer_norm": False, "num_qvalue_nets": 2,
             "actor_dropout": 0.0},
    "iql": {"actor_lr": 3e-4, "actor_layer_norm": False, "critic_layer_norm": False, "num_qvalue_nets": 2},
    "sac": {"actor_lr": 3e-4, "alpha_lr": 3e-4, "actor_layer_norm": False, "critic_layer_norm": True,
            "num_qvalue_nets": 10, "actor_q_reduction": "mean", "backup_entropy": True,
            "target_entropy_per_dim": 0.5, "subset_replacement": False, "max_target_backup": False,
            "actor_dropout": 0.0},
})

#: CORL ``configs/finetune/spot/<task>/<dataset>.yaml``: AntMaze ``lambd_end: 0.2``,
#: ``discount: 0.99`` offline and ``online_discount: 0.995`` for every maze (``lambd`` per maze:
#: :data:`torchrl_opt.objectives.spot.SPOT_LAMBDA_PRESETS`); Adroit (pen/hammer/door/relocate
#: cloned) ``lambd: 1.0``, ``lambd_end: 0.5``, ``online_discount: 0.99``. MuJoCo: SPOT's paper
#: defaults (the OPT paper runs SPOT on AntMaze and Adroit only).
SPOT_PRESETS = _frozen({
    "antmaze": {"spot_lambda_end": 0.2, "online_gamma": 0.995},
    "adroit": {"spot_lambda": 1.0, "spot_lambda_end": 0.5},
    "mujoco": {"spot_lambda": 0.25, "spot_lambda_end": 0.2},
})

#: CORL ``configs/{offline,finetune}/iql/*``: ``iql_tau`` (expectile) / ``beta`` (temperature):
#: MuJoCo 0.7 / 3.0; AntMaze 0.9 / 10.0; Adroit 0.8 / 3.0 with ``actor_dropout: 0.1``;
#: ``normalize: true`` (state normalisation) everywhere.
IQL_PRESETS = _frozen({
    "mujoco": {"expectile": 0.7, "temperature": 3.0, "actor_dropout": 0.0, "normalize_observations": True},
    "antmaze": {"expectile": 0.9, "temperature": 10.0, "actor_dropout": 0.0, "normalize_observations": True},
    "adroit": {"expectile": 0.8, "temperature": 3.0, "actor_dropout": 0.1, "normalize_observations": True},
})

#: WSRL's agent in every domain (``BackboneConfig`` entries): LayerNorm in actor and critic
#: (``wsrl_config.py:12-13``), actor 1e-4 / critic 3e-4 / temperature 1e-4 (``sac_config.py``), the
#: actor maximises the min over all critics (``sac.py:302``), no backup entropy
#: (``sac_config.py:7``), target entropy ``-|A|`` (``sac.py:526``), target pairs drawn with
#: replacement (``sac.py:238``); 20 deterministic evaluation episodes (``finetune.py``).
WSRL_AGENT = MappingProxyType({
    "actor_lr": 1e-4, "critic_lr": 3e-4, "alpha_lr": 1e-4, "actor_layer_norm": True,
    "critic_layer_norm": True, "actor_q_reduction": "min", "backup_entropy": False,
    "target_entropy_per_dim": 1.0, "subset_replacement": True,
})
WSRL_EVAL_EPISODES = 20
#: the paper's offline pre-training length (Appendix F: 1M gradient steps) for the other methods.
OFFLINE_STEPS = 1_000_000

#: WSRL's pre-training per domain (``WSRLConfig`` entries; ``experiments/scripts/*``,
#: ``train_config.py``): locomotion CQL for 250k steps (alpha 5); AntMaze Cal-QL for 1M steps with a
#: Lagrange multiplier (target gap 0.8) and the sparse-reward rule (failure reward: the raw 0 reward,
#: after the dataset's reward shift), max-target backup online; Adroit Cal-QL for 20k steps, alpha 1
#: (D4RL's cloned datasets have dense rewards: no failure rule).
WSRL_PRESETS = _frozen({
    "mujoco": {"offline_regularizer": "cql", "offline_steps": 250_000, "cql_alpha": 5.0,
               "cql_lagrange": False, "cql_target_action_gap": 0.8, "failure_reward": None,
               "max_target_backup": False},
    "antmaze": {"offline_regularizer": "calql", "offline_steps": 1_000_000, "cql_alpha": 5.0,
                "cql_lagrange": True, "cql_target_action_gap": 0.8, "failure_reward": 0.0,
                "max_target_backup": True},
    "adroit": {"offline_regularizer": "calql", "offline_steps": 20_000, "cql_alpha": 1.0,
               "cql_lagrange": False, "cql_target_action_gap": 0.8, "failure_reward": None,
               "max_target_backup": False},
})


def backbone_presets(backbone: str, domain: str | None, method: str) -> dict[str, Any]:
    """The ``BackboneConfig`` values of ``backbone`` on ``domain`` for ``method`` (later tables
    win: backbone, then the backbone's domain table, then WSRL's agent). ``domain=None``: the
    backbone's own row (MuJoCo's SPOT lambda for SPOT)."""
    out = dict(BACKBONE_PRESETS[backbone])
    domain = "mujoco" if domain is None else domain
    if backbone == "spot":
        out.update(SPOT_PRESETS.get(domain, {}))
    if backbone == "iql":
        out.update({k: v for k, v in IQL_PRESETS.get(domain, {}).items() if k != "normalize_observations"})
    if method == "wsrl":
        out.update(WSRL_AGENT)
        out["max_target_backup"] = WSRL_PRESETS[domain]["max_target_backup"]
    return out


def method_presets(method: str, backbone: str, domain: str) -> dict[str, Any]:
    """Values of other sections: ``{"offline.normalize_observations": ..., "offline.steps": ...,
    "wsrl.<key>": ..., "eval.episodes": ...}`` for ``method`` with ``backbone`` on ``domain``."""
    out: dict[str, Any] = {
        "offline.normalize_observations": IQL_PRESETS.get(domain, {}).get("normalize_observations", False)
        if backbone == "iql" else False,
        "eval.episodes": WSRL_EVAL_EPISODES if method == "wsrl" else 10,
        "offline.steps": WSRL_PRESETS[domain]["offline_steps"] if method == "wsrl" else OFFLINE_STEPS,
    }
    for key, value in WSRL_PRESETS[domain].items():
        if key not in ("max_target_backup", "offline_steps"):
            out[f"wsrl.{key}"] = value
    return out
