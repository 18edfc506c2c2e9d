"""``run(cfg)``: one run of any method, from data to summary, over one seed or a seed group.

The entry point of the pipeline: validate the configuration
(:func:`~torchrl_opt.pipeline.config.to_run_config`), pick the method's plan
(:func:`~torchrl_opt.pipeline.plans.make_plan`), build the run object
(:class:`~torchrl_opt.pipeline.context.Run`) and execute it. Rerunning the same configuration
resumes it from ``<run_dir>/checkpoint.pt`` and produces the same metrics as an uninterrupted run
(same seeds, same device); a finished run returns its summary without training.
"""

from __future__ import annotations

from typing import Any

from torchrl_opt.pipeline.config import ConfigError, RunConfig, to_run_config
from torchrl_opt.pipeline.context import Run, RunResult, SeedResult
from torchrl_opt.pipeline.plans import make_plan

__all__ = ["ConfigError", "RunResult", "SeedResult", "build_run", "run"]


def build_run(cfg: RunConfig | Any) -> Run:
    """The run object of ``cfg`` (a :class:`RunConfig`, a Hydra config or a dict), not yet executed."""
    cfg = to_run_config(cfg)
    return Run(cfg, make_plan(cfg))


def run(cfg: RunConfig | Any) -> RunResult:
    """Run (or resume) ``cfg``: its method's plan over ``cfg.seeds`` (or ``cfg.seed``).

    Returns a :class:`~torchrl_opt.pipeline.context.RunResult`: ``run_dir``, ``summary`` (a seed's
    ``summary.json``, or a group's aggregate) and every seed's result (``results``; ``history`` and
    ``agent`` directly for one seed).

    Raises:
        ConfigError: a bad configuration entry, named, before anything is written.
    """
    return build_run(cfg).execute()
