"""Hydra entry point of OPT: ``python recipes/opt.py [group=option ...] [key=value ...]``.

The recipe owns configuration only: it registers the :class:`~torchrl_opt.pipeline.config.RunConfig`
schema (``opt_schema``) and four config resolvers, composes ``recipes/config/opt.yaml``, converts
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

* ``${opt.kappa:TASK,KIND,FIELD}`` -> one field (``kappa_init``, ``kappa_end``, ``T_decay``) of
  Appendix H Table 15, from :data:`torchrl_opt.schedules.KAPPA_PRESETS`;
* ``${opt.run_name:PART,...}`` -> the non-empty parts joined by ``-`` (``none`` dropped, path
  separators replaced), used to name run directories;
* ``${opt.seed_dir:SEED,SEEDS}`` -> ``seed<SEED>``, or ``seeds<a>-<b>-...`` for a seed-batched run
  (``seeds=[a,b,...]``: every seed trained in one process, see ``torchrl_opt.pipeline.context``);
* ``${opt.offline_pt:ROOT,SEED,SEEDS}`` -> the ``offline.pt`` of the run in ``ROOT/<seed dir>``
  (``.../seed{seed}/offline.pt`` for a group), for ``offline.checkpoint`` in fine-tuning sweeps.

Torch threads: unless ``OMP_NUM_THREADS`` is set, the recipe uses one intra-op thread on CPU when
the networks are small (widest hidden layer <= 128, the ``demo`` scale), which is faster than
several threads for MLPs of that size, and PyTorch's default otherwise.

Finished runs: when ``<run_dir>/summary.json`` already holds a finished run of exactly this
configuration (and ``checkpoint.resume`` is on), the recipe prints it and returns without loading
data or building anything (:func:`finished_summary`), so rerunning a sweep skips its finished runs
at once; any other run goes to the pipeline, which resumes a killed run from ``checkpoint.pt``.

Errors a person can fix (:data:`USER_ERRORS`: a misspelt key, an unknown config option, a bad
value, a missing dataset file, a checkpoint of another run) print one ``error: ...`` line with its
hint on stderr and exit with status :data:`USER_ERROR_STATUS` (2), without a traceback
(:func:`describe_error`); ``HYDRA_FULL_ERROR=1`` shows the full traceback instead. In a multirun the
failing job's error stops the sweep the same way, after Hydra's ``Error executing job with
overrides: [...]`` line naming the job.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

try:
    import torchrl_opt  # noqa: F401
except ImportError:  # a source checkout that was not pip-installed: use the repo next to us
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from torchrl_opt.data.datasets import DatasetError
from torchrl_opt.pipeline.checkpoint import CheckpointError
from torchrl_opt.pipeline.config import ConfigError, RunConfig, register_configs, to_run_config
from torchrl_opt.pipeline.context import seeds_label
from torchrl_opt.schedules import kappa_preset_config

__all__ = [
    "USER_ERRORS",
    "USER_ERROR_STATUS",
    "cli",
    "describe_error",
    "finished_summary",
    "format_summary",
    "main",
    "make_run_config",
    "register_resolvers",
]

#: Exit status of a run stopped by an error a person can fix (:data:`USER_ERRORS`).
USER_ERROR_STATUS = 2
#: Errors of the configuration (Hydra's composition, OmegaConf, :class:`ConfigError`), of the data
#: (:class:`~torchrl_opt.data.DatasetError` and its subclasses) and of checkpoints
#: (:class:`~torchrl_opt.pipeline.checkpoint.CheckpointError`): reported in one line, exit 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetError, CheckpointError, HydraException, OmegaConfBaseException,
)
#: where the recipe's config groups live (for the options an unknown ``group=option`` could take).
CONFIG_DIR = Path(__file__).resolve().parent / "config"

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


def _offline_pt(root: Any, seed: int, seeds: Any) -> str:
    """The ``offline.pt`` of the run of ``seed`` (or of the seed group ``seeds``) whose directory is
    ``<root>/<seed dir>`` (:func:`_seed_dir`): ``<root>/seed3/offline.pt`` for one seed,
    ``<root>/seeds0-1/seed{seed}/offline.pt`` for a group, ``{seed}`` being filled in per seed by
    the pipeline (``offline.checkpoint``). Fine-tuning sweeps use it to find, for every job, the
    offline phase that a sweep with the same ``hydra.sweep.subdir`` layout trained."""
    directory = Path(str(root)) / _seed_dir(int(seed), seeds)
    if seeds is not None and len(list(seeds)) > 1:
        return str(directory / "seed{seed}" / "offline.pt")
    return str(directory / "offline.pt")


def register_resolvers() -> None:
    """Register the ``opt.kappa``, ``opt.run_name``, ``opt.seed_dir`` and ``opt.offline_pt``
    resolvers (idempotent)."""
    resolvers = {
        "opt.kappa": _kappa_field,
        "opt.run_name": _run_name,
        "opt.seed_dir": _seed_dir,
        "opt.offline_pt": _offline_pt,
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


# ----------------------------------------------------------------------------- finished runs
def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples -> lists), so that configs compare like summaries."""
    return json.loads(json.dumps(value))


def finished_summary(run_cfg: RunConfig) -> dict[str, Any] | None:
    """The ``summary.json`` of the finished run that ``run_cfg`` describes, or ``None``.

    A run is finished here when ``checkpoint.resume`` is on, ``<run_dir>/summary.json`` exists
    (the pipeline writes it when the last phase is done) and its configuration is ``run_cfg``'s,
    entry for entry (a seed group: the group's summary, with every seed's ``summary.json``
    present). Anything else returns ``None`` and goes to the pipeline, which resumes a killed run
    from ``checkpoint.pt``, or refuses a checkpoint of another configuration.
    """
    if not run_cfg.checkpoint.resume or run_cfg.run_dir is None:
        return None
    run_dir = Path(run_cfg.run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        return None
    seeds = run_cfg.seed_list
    expected = _plain(dataclasses.asdict(run_cfg))
    found = dict(summary["config"])
    if len(seeds) == 1:
        # a seed's summary names its own seed and directory (see Run.seed_summary)
        if summary.get("kind") != "run" or summary.get("seed") != seeds[0]:
            return None
        expected.update(seed=seeds[0], seeds=None, run_dir=str(run_dir))
        found["run_dir"] = str(Path(found.get("run_dir") or ""))
    else:
        if summary.get("kind") != "group" or summary.get("seeds") != seeds:
            return None
        if not all((run_dir / f"seed{seed}" / "summary.json").is_file() for seed in seeds):
            return None
    return summary if found == expected else None


# ----------------------------------------------------------------------------- readable errors
def _lines(text: str) -> list[str]:
    """The informative lines of an error message (Hydra's search-path listing and links dropped)."""
    out = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if not line or line.startswith(("See https://", "full_key:", "reference_type=", "object_type=")):
            continue
        out.append(line)
    return out


def _options(group: str) -> list[str]:
    """The options of config group ``group`` (``env``, ``hydra/launcher``, ...), from the recipe's
    config directory and Hydra's config store."""
    names = {p.stem for p in (CONFIG_DIR / group).glob("*.yaml")}
    try:
        from hydra.core.config_store import ConfigStore

        node = ConfigStore.instance().repo
        for part in group.split("/"):
            node = node[part]
        names |= {name.removesuffix(".yaml") for name, value in node.items() if not isinstance(value, dict)}
    except (KeyError, TypeError):
        pass
    return sorted(names)


def _close(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _dotted_keys(schema: type, prefix: str = "") -> list[str]:
    """Every leaf key of the dataclass ``schema``, dotted (``finetune.kappa.init``)."""
    keys = []
    for f in dataclasses.fields(schema):
        hint = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if hint is not None and dataclasses.is_dataclass(hint):
            keys += _dotted_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown_key(cause: OmegaConfBaseException) -> str | None:
    """``unknown configuration key 'finetune.utdd' (did you mean 'finetune.utd'? ...)`` for
    OmegaConf's missing-key errors on the schema's dataclasses."""
    full_key = getattr(cause, "full_key", None)
    schema = getattr(cause, "object_type", None)
    if not full_key or not str(cause).startswith("Key ") or not dataclasses.is_dataclass(schema):
        return None
    parent, _, name = str(full_key).rpartition(".")
    known = [f.name for f in dataclasses.fields(schema)]
    close = _close(name, known)
    if close is not None:
        close = f"{parent}.{close}" if parent else close
    else:  # a key of another section? (``utd=5`` for ``finetune.utd=5``)
        everywhere = _dotted_keys(RunConfig)
        match = _close(name, [key.rpartition(".")[2] for key in everywhere])
        close = next((key for key in everywhere if key.rpartition(".")[2] == match), None)
    if close is not None:
        hint = f"did you mean {close!r}?"
    else:
        hint = f"the keys of {parent or 'the run configuration'} are {', '.join(known)};"
    return f"unknown configuration key {full_key!r} ({hint} `python recipes/opt.py --cfg job` prints every key)"


def describe_error(err: BaseException) -> str:
    """One line that says what is wrong and how to fix it (no traceback).

    Handles Hydra's composition errors (a misspelt key: the closest known key; an unknown
    ``group=option``: the available options; an unparsable override), OmegaConf's type errors
    (the key and the value), and the library's :class:`ConfigError`, ``DatasetError`` and
    ``CheckpointError`` (their own messages, which carry the hint).
    """
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        unknown = _unknown_key(cause)
        if unknown is not None:
            return unknown
    if isinstance(err, MissingConfigException):
        missing = str(err.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        options = list(err.options or []) or (_options(group) if group else [])
        if group and options:
            close = _close(option, options)
            hint = f"did you mean {group}={close}? " if close else ""
            return (f"{group}={option}: no such option in config group {group!r} "
                    f"({hint}available: {', '.join(options)})")
    if isinstance(err, OverrideParseException):
        lines = _lines(str(err))
        return (f"{'; '.join(lines)} (overrides are key=value, group=option, +key=value or ~key; "
                "quote values with spaces or special characters)")
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        value = "; ".join(_lines(str(cause)))
        if "not in struct" in value:
            value += f" (+{cause.full_key}=... adds a key to a section that takes any)"
        return f"{cause.full_key}: {value}"
    message = "; ".join(_lines(str(err)) or [type(err).__name__])
    if isinstance(err, DatasetError):
        message += " (the dataset.* entries choose the data: see docs/data.md)"
    return message


#: whether errors show their traceback: ``HYDRA_FULL_ERROR=1`` as :func:`cli` found it (``None``:
#: read the environment, for :func:`main` called without :func:`cli`).
_FULL_ERROR: bool | None = None


def _full_error() -> bool:
    if _FULL_ERROR is not None:
        return _FULL_ERROR
    return os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def _user_error(err: BaseException) -> NoReturn:
    print(f"error: {describe_error(err)}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_STATUS)


register_resolvers()
register_configs()


# an absolute config path: the same configs however this file is run or imported
@hydra.main(config_path=str(CONFIG_DIR), config_name="opt", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Compose -> RunConfig -> :func:`torchrl_opt.pipeline.run.run` -> print the summary.

    A finished run of the same configuration is only printed again (:func:`finished_summary`).
    Returns the final normalised score (for Hydra sweepers that optimise a value).

    A :data:`USER_ERRORS` error of a single run prints one line and exits with status 2 (with
    ``HYDRA_FULL_ERROR=1`` it propagates); in a multirun it propagates to Hydra, which records the
    job as failed and re-raises the error in the sweep's process, where :func:`cli` reports it.
    """
    hydra_cfg = HydraConfig.get()
    try:
        run_cfg = make_run_config(cfg, hydra_cfg.runtime.output_dir)
        summary = finished_summary(run_cfg)
        if summary is not None:
            print(f"finished run found, nothing to train: {run_cfg.run_dir} "
                  "(checkpoint.resume=false trains it again)", flush=True)
        else:
            from torchrl_opt.pipeline.run import run

            _set_threads(run_cfg)
            result = run(run_cfg)
            summary = result.summary
        print(format_summary(summary, run_cfg.run_dir), flush=True)
    except USER_ERRORS as err:
        if _full_error() or hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        _user_error(err)
    return summary.get("final_normalized_score")


def cli() -> None:
    """``python recipes/opt.py ...``: :func:`main`, with Hydra's own errors (composition, override
    parsing, launcher set-up) and a multirun's failed job reported in one line, exit status 2."""
    global _FULL_ERROR
    _FULL_ERROR = show_traceback = os.environ.get("HYDRA_FULL_ERROR", "") == "1"
    previous = os.environ.get("HYDRA_FULL_ERROR")
    # Hydra prints its errors itself (several lines, exit 1) unless HYDRA_FULL_ERROR=1, with which
    # it re-raises them: set it while Hydra runs and report them here.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except USER_ERRORS as err:
        if show_traceback:
            raise
        _user_error(err)
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


if __name__ == "__main__":
    cli()
