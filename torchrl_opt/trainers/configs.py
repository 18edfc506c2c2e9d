"""Hydra configuration of :class:`~torchrl_opt.trainers.OPTTrainer`, in TorchRL's ``trainers.algorithms.configs`` style.

:class:`OPTTrainerConfig` is a structured config whose ``_target_`` is a factory (like TorchRL's
``TD3TrainerConfig`` -> ``_make_td3_trainer``), so a TorchRL user writes::

    from hydra.utils import instantiate
    trainer = instantiate(cfg.trainer)   # cfg.trainer: an OPTTrainerConfig node
    trainer.train()

The OPT part of the node reuses the pipeline's dataclasses (``dataset``, ``backbone``, ``offline``,
``online_pretrain``, ``finetune``, ``eval``, ``acceleration``; ``offline.checkpoint`` is the offline
checkpoint); the TorchRL part is the ``Trainer`` keywords (``logger`` — e.g. TorchRL's
``CSVLoggerConfig`` node —, ``save_trainer_file``, ``checkpoint``, intervals, extra ``hooks``).
:func:`register_opt_trainer_configs` stores it as ``trainer=opt`` in Hydra's ``ConfigStore``, next
to TorchRL's ``trainer=sac`` / ``trainer=td3``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torchrl.trainers import TrainerHookBase
from torchrl.trainers.algorithms.configs.trainers import TrainerConfig

from torchrl_opt.pipeline.config import (
    AccelerationConfig,
    BackboneConfig,
    DatasetConfig,
    EvalConfig,
    FinetuneConfig,
    LoggingConfig,
    OfflineConfig,
    OnlinePretrainConfig,
    PORLConfig,
    RLPDConfig,
    RunConfig,
    WSRLConfig,
    to_run_config,
)
from torchrl_opt.trainers.opt_trainer import OPTTrainer, TrainerConfigError

__all__ = ["OPTTrainerConfig", "register_opt_trainer_configs"]

#: ``OPTTrainerConfig`` fields that make up the pipeline's :class:`RunConfig`.
_RUN_FIELDS = ("seed", "method", "device", "env_id", "dataset", "backbone", "offline",
               "online_pretrain", "finetune", "eval", "acceleration", "rlpd", "wsrl", "porl", "run_dir")


@dataclass
class OPTTrainerConfig(TrainerConfig):
    """Hydra configuration for :class:`~torchrl_opt.trainers.OPTTrainer`.

    OPT fields have the pipeline's defaults (the paper's settings); ``log_every`` and ``progress``
    drive online pre-training's logging, ``log_dir`` is where the offline phase writes
    ``offline.pt`` when ``offline.checkpoint`` is unset (``run_dir`` overrides it).
    """

    seed: int = 0
    method: str = "opt"
    device: str = "auto"
    env_id: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)
    online_pretrain: OnlinePretrainConfig = field(default_factory=OnlinePretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    acceleration: AccelerationConfig = field(default_factory=AccelerationConfig)
    rlpd: RLPDConfig = field(default_factory=RLPDConfig)
    wsrl: WSRLConfig = field(default_factory=WSRLConfig)
    porl: PORLConfig = field(default_factory=PORLConfig)
    run_dir: str | None = None
    log_dir: str = "runs"
    log_every: int = 1000
    # TorchRL Trainer keywords
    logger: Any = None
    progress_bar: bool = True
    save_trainer_file: Any = None
    save_trainer_interval: int = 10000
    log_interval: int = 10000
    checkpoint: Any = None
    checkpoint_rotation: Any = None
    checkpoint_metadata: Any = None
    log_timings: bool = False
    auto_log_optim_steps: bool = True
    update_weights_interval: int = 0
    hooks: list[Any] | None = None

    _target_: str = "torchrl_opt.trainers.configs._make_opt_trainer"

    def __post_init__(self) -> None:
        super().__post_init__()


def _make_opt_trainer(**kwargs: Any) -> OPTTrainer:
    """Factory behind :class:`OPTTrainerConfig`: a :class:`RunConfig` from the OPT fields, then
    :meth:`OPTTrainer.from_run_config` with the TorchRL keywords, then the extra ``hooks``."""
    from torchrl.record.loggers import Logger

    known = {f.name for f in fields(OPTTrainerConfig)} - {"_target_"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TrainerConfigError(f"unknown OPTTrainerConfig keys: {unknown}")
    run_cfg = {name: kwargs.pop(name) for name in _RUN_FIELDS if name in kwargs}
    run_cfg["logging"] = LoggingConfig(
        backend="none",
        dir=kwargs.pop("log_dir", "runs"),
        progress=bool(kwargs.get("progress_bar", True)),
        log_every=int(kwargs.pop("log_every", 1000)),
    )
    cfg: RunConfig = to_run_config(run_cfg)
    hooks = kwargs.pop("hooks", None)
    logger = kwargs.get("logger")
    if logger is not None and not isinstance(logger, Logger):
        raise TrainerConfigError(f"logger must be a TorchRL Logger (or its config), got {type(logger).__name__}")
    trainer = OPTTrainer.from_run_config(cfg, **kwargs)
    for index, hook in enumerate(hooks or []):
        if not isinstance(hook, TrainerHookBase):
            raise TrainerConfigError(
                f"trainer hooks must be TrainerHookBase instances, got {type(hook).__name__} at index {index}"
            )
        hook.register(trainer)
    return trainer


def register_opt_trainer_configs() -> None:
    """Store :class:`OPTTrainerConfig` as ``group="trainer", name="opt"`` in Hydra's ``ConfigStore``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="trainer", name="opt", node=OPTTrainerConfig)
