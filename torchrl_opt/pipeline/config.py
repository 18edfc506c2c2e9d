"""Configuration of an OPT run: one dataclass per concern, the schema of the Hydra recipes.

The dataclasses double as Hydra structured configs (``register_configs``), so a misspelt key in a
recipe or on the command line is rejected by Hydra with the offending key named. Defaults are the
paper's settings (``../shared/reference/opt-algorithm.md``); the recipes' ``scale=demo`` preset shrinks
the budgets for a CPU demo.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from torchrl_opt.pipeline.updates import AccelerationConfig

__all__ = [
    "AccelerationConfig",
    "BackboneConfig",
    "BaselineConfig",
    "CheckpointConfig",
    "ConfigError",
    "DatasetConfig",
    "EvalConfig",
    "FinetuneConfig",
    "KappaConfig",
    "LoggingConfig",
    "OfflineConfig",
    "OnlinePretrainConfig",
    "PORLConfig",
    "RLPDConfig",
    "RunConfig",
    "SACEnsembleConfig",
    "WSRLConfig",
    "check_types",
    "register_configs",
    "to_run_config",
]


class ConfigError(ValueError):
    """A configuration entry is unknown, of the wrong type or out of its domain; the message names
    the entry by its dotted key (``finetune.utd``)."""


@dataclass
class DatasetConfig:
    """Where the offline data come from.

    ``source``: ``"generated"`` (built locally on first use and cached, see
    ``torchrl_opt.data.generate``), ``"minari"`` (a Minari id, downloaded when the network allows),
    ``"local_minari"`` (a Minari id already on disk) or ``"d4rl_hdf5"`` (``path`` to a D4RL file).
    """

    task: str = "hopper"
    kind: str = "random"
    source: str = "generated"
    id: str | None = None
    path: str | None = None
    size: int = 1_000_000
    generation_seed: int = 0
    #: added to every reward the agent trains on, offline and online (AntMaze: -1, as IQL/SPOT);
    #: evaluation reports the env's raw returns.
    reward_shift: float = 0.0


@dataclass
class BackboneConfig:
    """Networks and per-backbone hyperparameters (``name``: ``td3``, ``spot`` or ``iql``)."""

    name: str = "td3"
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    layer_norm: bool = False
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    # TD3 / TD3+BC / SPOT
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    actor_delay: int = 2
    bc_alpha: float = 2.5
    online_bc_alpha: float | None = None
    exploration_noise: float = 0.1
    # SPOT
    vae_steps: int = 100_000
    vae_lr: float = 1e-3
    vae_beta: float = 0.5
    vae_hidden: list[int] = field(default_factory=lambda: [750, 750])
    spot_lambda: float = 0.25
    spot_lambda_end: float = 0.2
    spot_cooling_steps: int = 1_000_000
    # IQL
    expectile: float = 0.7
    temperature: float = 3.0
    value_lr: float = 3e-4


@dataclass
class OfflineConfig:
    """Phase 1: offline pre-training. ``checkpoint`` reuses a finished phase instead of training."""

    steps: int = 1_000_000
    batch_size: int = 256
    checkpoint: str | None = None
    normalize_observations: bool = False
    eval_every: int = 50_000


@dataclass
class OnlinePretrainConfig:
    """Phase 2: collect ``n_tau`` steps with the frozen offline policy, then ``steps`` updates of Q_on.

    ``mode``: ``meta`` (Eq. 3), ``online`` (B_on only), ``joint`` (Eq. 10), ``offline``.
    ``steps=0`` leaves Q_on at its random initialisation (the paper's random-init ablation).
    """

    n_tau: int = 25_000
    steps: int = 50_000
    batch_size: int = 256
    mode: str = "meta"
    order: int = 2
    alpha: float = 3e-4
    loss_ratio_weighting: bool = False
    lr: float = 3e-4


@dataclass
class KappaConfig:
    """Kappa schedule: ``preset`` (Appendix H for the task/dataset), ``linear`` or ``constant``."""

    kind: str = "preset"
    init: float = 1.0
    end: float = 1.0
    t_decay: int = 0
    start: int = 0


@dataclass
class FinetuneConfig:
    """Phase 3: online fine-tuning. ``use_q_on=False`` is the vanilla fine-tuning baseline.

    ``prefetch_action``: compute the next action right after each env step, before that step's
    updates, so that stepping the env overlaps asynchronous GPU updates (a one-step policy lag;
    needs direct env stepping, see ``acceleration.direct_env``). Off by default.
    """

    env_steps: int = 275_000
    utd: int = 5
    batch_size: int = 256
    replay: str = "balanced"
    use_q_on: bool = True
    kappa: KappaConfig = field(default_factory=KappaConfig)
    density_lr: float = 3e-4
    temperature: float = 5.0
    prefetch_action: bool = False


@dataclass
class EvalConfig:
    every: int = 5_000
    episodes: int = 10
    max_steps: int = 1000


@dataclass
class LoggingConfig:
    """``backend``: ``csv`` (default), ``tensorboard``, ``wandb`` or ``none``."""

    backend: str = "csv"
    dir: str = "runs"
    experiment: str | None = None
    progress: bool = True
    log_every: int = 1_000


@dataclass
class CheckpointConfig:
    """Atomic checkpoints every ``every`` env steps (0: only at phase ends); ``resume`` a run dir."""

    every: int = 25_000
    resume: bool = True


# ------------------------------------------------------------------ seed systems (issue 7)
@dataclass
class SACEnsembleConfig:
    """Networks and SAC hyperparameters shared by every baseline (RLPD's defaults).

    ``target_entropy=None`` means ``-|A| / 2``. ``actor_every=None`` means "once per environment
    step" (every ``utd`` updates, as RLPD's update); offline it is every update.
    """

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    critic_layer_norm: bool = True
    actor_layer_norm: bool = False
    num_qvalue_nets: int = 10
    num_min_qs: int = 2
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    alpha_init: float = 1.0
    target_entropy: float | None = None
    backup_entropy: bool = True
    actor_every: int | None = None


@dataclass
class RLPDConfig:
    """RLPD online phase: ``start_steps`` uniform-random actions before learning, UTD ``utd``,
    ``offline_fraction`` of every batch from ``B_off``."""

    utd: int = 20
    start_steps: int = 5_000
    offline_fraction: float = 0.5


@dataclass
class WSRLConfig:
    """WSRL: ``warmup_steps`` (K) of the frozen pre-trained policy, then UTD ``utd`` on online data.

    ``warmup_deterministic``: act with the policy's mode during warm-up (default: sample it).
    """

    warmup_steps: int = 5_000
    utd: int = 4
    warmup_deterministic: bool = False


@dataclass
class PORLConfig:
    """PORL: policy-only fine-tuning.

    ``policy_source``: ``"bc"`` (behaviour cloning for ``bc_steps`` on ``B_off``) or ``"offline"``
    (the RLPD-style offline phase's actor; its critics are discarded). ``presample_steps`` with the
    frozen policy and epsilon-greedy exploration (``epsilon``: probability of a uniform action); the
    first ``batch_size`` of them seed the buffer before any update. Both ``presample_steps`` and
    ``epsilon`` are not given in the PORL summary available here: configuration, not fact.
    """

    utd: int = 16
    presample_steps: int = 5_000
    epsilon: float = 0.1
    policy_source: str = "bc"
    bc_steps: int = 100_000
    bc_lr: float = 3e-4


@dataclass
class BaselineConfig:
    """Which baseline and its settings; the rest (dataset, budgets, eval, logging, checkpoints,
    acceleration) comes from :class:`~torchrl_opt.pipeline.config.RunConfig`."""

    method: str = "rlpd"
    sac: SACEnsembleConfig = field(default_factory=SACEnsembleConfig)
    rlpd: RLPDConfig = field(default_factory=RLPDConfig)
    wsrl: WSRLConfig = field(default_factory=WSRLConfig)
    porl: PORLConfig = field(default_factory=PORLConfig)



@dataclass
class RunConfig:
    seed: int = 0
    #: a seed-batched run: these seeds trained together in one process, every update of all seeds
    #: one vmapped graph (:mod:`torchrl_opt.pipeline.seeds`); ``seed`` is then unused. ``None`` (the
    #: default): one run of ``seed``.
    seeds: list[int] | None = None
    device: str = "auto"
    env_id: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    online_pretrain: OnlinePretrainConfig = field(default_factory=OnlinePretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    acceleration: AccelerationConfig = field(default_factory=AccelerationConfig)
    run_dir: str | None = None
    #: ``opt`` (this pipeline: OPT or, with ``finetune.use_q_on=false``, the backbone's vanilla
    #: fine-tuning) or a seed system of :mod:`torchrl_opt.pipeline.baselines`: ``rlpd``,
    #: ``rlpd_offline``, ``rlpd_opt``, ``wsrl``, ``porl`` (settings under ``baseline``).
    system: str = "opt"
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


def register_configs() -> None:
    """Register :class:`RunConfig` as the Hydra schema ``opt_schema``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="opt_schema", node=RunConfig)


def to_run_config(cfg: Any) -> RunConfig:
    """Turn a Hydra/OmegaConf config (or a dict) into a type-checked :class:`RunConfig`.

    Raises:
        ConfigError: for an unknown key or a value OmegaConf cannot convert (the message names
            the key), or a value of the wrong type (see :func:`check_types`).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, RunConfig):
        check_types(cfg)
        return cfg
    if OmegaConf.is_config(cfg):
        # Hydra's `+key=value` lands on the node itself; as a plain container the merge into the
        # structured schema rejects it like any other unknown key.
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        structured = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
        out = OmegaConf.to_object(structured)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"{key}: " if key else ""
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"bad configuration entry {where}{message}") from err
    check_types(out)
    return out


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return isinstance(value, hint)


def check_types(cfg: Any, prefix: str = "") -> None:
    """Check every field of the dataclass ``cfg`` (recursively) against its annotation.

    ``int`` fields take ints (not bools), ``float`` fields ints or floats, ``X | None`` also
    ``None``, ``list[int]`` lists of ints. Raises :class:`ConfigError` naming the dotted key.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"{key} must be a {hint.__name__}, got {type(value).__name__}")
            check_types(value, prefix=f"{key}.")
        elif not _type_ok(value, hint):
            name = getattr(hint, "__name__", None) or str(hint)
            raise ConfigError(f"{key}={value!r} has type {type(value).__name__}; expected {name}")
