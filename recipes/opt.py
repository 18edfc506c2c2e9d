"""Hydra entry point of OPT: ``python recipes/opt.py [group=option ...] [key=value ...]``.

The recipe owns configuration only: it registers the :class:`~torchrl_opt.pipeline.config.RunConfig`
schema (``opt_schema``) and three config resolvers, composes ``recipes/config/opt.yaml``, converts
it to a validated ``RunConfig`` and hands it to :func:`torchrl_opt.pipeline.run.run`, which owns
every phase of training. Then it prints the run's summary.

Examples (see ``docs/recipes.md``)::

    python recipes/opt.py                                    # CPU demo: hopper/random, a few minutes
    python recipes/opt.py env=walker2d dataset=random backbone=td3 scale=paper
    python recipes/opt.py env=antmaze dataset=large-diverse scale=paper   # SPOT, Table 15 kappa
    python recipes/opt.py method=vanilla                     # vanilla fine-tuning, no Q_on
    python recipes/opt.py method=rlpd                        # or rlpd_offline, rlpd_opt, wsrl, porl
    python recipes/opt.py ablation=qon_random_init           # one file per paper ablation
    python recipes/opt.py -m seed=0,1,2                      # multi-seed sweep (3 processes)
    python recipes/opt.py seeds=[0,1,2]                      # 3 seeds batched in one process

Config resolvers (registered by :func:`register_resolvers`, usable in any YAML of the recipe):

* ``${opt.spot_lambda:TASK,KIND}`` -> SPOT's ``lambda`` for the dataset, from
  :data:`torchrl_opt.objectives.spot.SPOT_LAMBDA_PRESETS`;
* ``${opt.kappa:TASK,KIND,FIELD}`` -> one field (``kappa_init``, ``kappa_end``, ``T_decay``) of
  Appendix H Table 15, from :data:`torchrl_opt.schedules.KAPPA_PRESETS`;
* ``${opt.run_name:PART,...}`` -> the non-empty parts joined by ``-`` (``none`` dropped, path
  separators replaced), used to name run directories;
* ``${opt.seed_dir:SEED,SEEDS}`` -> ``seed<SEED>``, or ``seeds<a>-<b>-...`` for a seed-batched run
  (``seeds=[a,b,...]``: every seed trained in one process, see ``torchrl_opt.pipeline.context``).

Torch threads: unless ``OMP_NUM_THREADS`` is set, the recipe uses one intra-op thread on CPU when
the networks are small (widest hidden layer <= 128, the ``demo`` scale), which is faster than
several threads for MLPs of that size, and PyTorch's default otherwise.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

try:
    import torchrl_opt  # noqa: F401
except ImportError:  # a source checkout that was not pip-installed: use the repo next to us
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from torchrl_opt.objectives.spot import spot_lambda_preset
from torchrl_opt.pipeline.config import RunConfig, register_configs, to_run_config
from torchrl_opt.pipeline.context import seeds_label
from torchrl_opt.schedules import kappa_preset_config

__all__ = ["format_summary", "main", "make_run_config", "register_resolvers"]

#: Widest hidden layer for which the recipe runs a CPU job on one thread (see module docstring).
SMALL_NET_WIDTH = 128


def _kappa_field(task: str, kind: str, field: str) -> float | int:
    """Appendix H Table 15 entry ``field`` of ``(task, kind)`` (the single table in schedules.py)."""
    config = kappa_preset_config(task, kind)
    if field not in config:
        raise KeyError(f"opt.kappa: unknown field {field!r}; known fields: {sorted(config)}")
    return config[field]


#: longest piece of a run-directory name kept verbatim (see :func:`_run_name`).
MAX_NAME_PART = 120


def _run_name(*parts: Any) -> str:
    """``"-".join`` of the non-empty parts; ``none`` (the empty ablation) is dropped.

    A multi-choice ablation (``ablation=[a,b]``) arrives as a list and contributes ``a+b``; path
    separators in overrides (``offline.checkpoint=a/b``) become ``_`` so the name stays one folder.
    """
    names = []
    for part in parts:
        if isinstance(part, (list, tuple, ListConfig)):
            part = "+".join(str(p) for p in part if str(p) != "none")
        part = "" if part is None else str(part)
        if part in ("", "none", "[]"):
            continue
        part = part.replace(os.sep, "_").replace("/", "_")
        if len(part) > MAX_NAME_PART:
            # file systems cap a folder name at 255 bytes: long override lists become a stable
            # digest (the overrides themselves are in the run's .hydra/overrides.yaml)
            digest = hashlib.sha1(part.encode()).hexdigest()[:12]
            part = f"{part[:MAX_NAME_PART - 14]}-h{digest}"
        names.append(part)
    return "-".join(names)


def _seed_dir(seed: int, seeds: Any) -> str:
    """The last run-directory part: ``seed<seed>`` for one run, ``seeds<a>-<b>-...`` for a
    seed-batched run (``seeds=[a,b,...]``; a digest when the list is long)."""
    if seeds is None:
        return f"seed{seed}"
    seeds = [int(s) for s in seeds]
    return f"seed{seeds[0]}" if len(seeds) == 1 else seeds_label(seeds)


def register_resolvers() -> None:
    """Register the ``opt.spot_lambda``, ``opt.kappa``, ``opt.run_name`` and ``opt.seed_dir``
    resolvers (idempotent)."""
    resolvers = {
        "opt.spot_lambda": spot_lambda_preset,
        "opt.kappa": _kappa_field,
        "opt.run_name": _run_name,
        "opt.seed_dir": _seed_dir,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def make_run_config(cfg: DictConfig, output_dir: str | None = None) -> RunConfig:
    """The validated :class:`RunConfig` of a composed recipe config.

    ``run_dir`` defaults to ``output_dir`` (Hydra's output directory) when the config leaves it
    null. Unknown keys (also ones added with ``+key=...``) and wrong types raise OmegaConf's
    errors, which name the key.
    """
    register_resolvers()
    # A plain container, not the composed DictConfig: Hydra's ``+key=value`` overrides add keys to
    # the structured node itself, and merging that node into RunConfig would keep them silently.
    run_cfg = to_run_config(OmegaConf.to_container(cfg, resolve=True))
    if run_cfg.run_dir is None and output_dir is not None:
        run_cfg.run_dir = str(output_dir)
    return run_cfg


def _set_threads(run_cfg: RunConfig) -> None:
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return
    on_cpu = run_cfg.device == "cpu" or (run_cfg.device == "auto" and not torch.cuda.is_available())
    if on_cpu and max(run_cfg.backbone.hidden, default=0) <= SMALL_NET_WIDTH:
        torch.set_num_threads(1)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _fmt_seeds(summary: dict[str, Any], key: str) -> str:
    """``mean +- std`` over seeds, then every seed's value."""
    per_seed = ", ".join(
        f"{seed}: {_fmt(values.get(key))}" for seed, values in summary.get("per_seed", {}).items()
    )
    return f"{_fmt(summary.get(key))} +- {_fmt(summary.get(f'{key}_std'))} (seeds {per_seed})"


def format_summary(summary: dict[str, Any], run_dir: str | Path) -> str:
    """Human-readable lines of a run's ``summary.json``: scores (x100) and wall-clock per phase.

    A seed-batched run's summary (``seeds=[...]``) shows the mean and standard deviation over its
    seeds, and each seed's score.
    """
    wall = summary.get("wall_clock_s", {}) or {}
    total = sum(wall.values())
    phases = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in wall.items())
    cfg = summary.get("config", {})
    dataset = cfg.get("dataset", {})
    method = summary.get("method", cfg.get("method"))
    seeds = summary.get("seeds")
    fmt = (lambda key: _fmt_seeds(summary, key)) if seeds else (lambda key: _fmt(summary.get(key)))
    which = f"seeds={seeds}" if seeds else f"seed={cfg.get('seed')}"
    bias = summary.get("final_value_bias") or {}
    bias_line = ", ".join(
        f"{critic} {values['bias']:+.2f} (|err| {values['abs_error']:.2f})" for critic, values in bias.items()
    )
    return "\n".join(
        [
            (
                f"run: {dataset.get('task')}-{dataset.get('kind')} "
                f"backbone={cfg.get('backbone', {}).get('name')} method={method} "
                f"{which} env={summary.get('env_id')} device={summary.get('device')}"
            ),
            f"offline normalised score: {fmt('offline_normalized_score')}",
            f"final normalised score:   {fmt('final_normalized_score')}",
            f"best normalised score:    {fmt('best_normalized_score')}",
            *(
                [f"value bias on online states, Q(s,pi(s)) - discounted MC return (final evaluation"
                 f"{', mean over seeds' if seeds else ''}): {bias_line}"]
                if bias else []
            ),
            f"wall-clock: {total:.1f}s ({phases})",
            f"summary: {Path(run_dir) / 'summary.json'}",
        ]
    )


register_resolvers()
register_configs()


@hydra.main(config_path="config", config_name="opt", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Compose -> RunConfig -> :func:`torchrl_opt.pipeline.run.run` -> print the summary.

    Returns the final normalised score (for Hydra sweepers that optimise a value).
    """
    from torchrl_opt.pipeline.run import run

    run_cfg = make_run_config(cfg, HydraConfig.get().runtime.output_dir)
    _set_threads(run_cfg)
    result = run(run_cfg)
    print(format_summary(result.summary, result.run_dir), flush=True)
    return result.summary.get("final_normalized_score")


if __name__ == "__main__":
    main()
