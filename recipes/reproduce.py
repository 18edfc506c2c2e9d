"""Reproduction runner: ``python recipes/reproduce.py suite=NAME [run|plan|report] [key=value ...] [-- OVERRIDE ...]``.

A **suite** (``recipes/suites/<NAME>.yaml``) declares tasks x seed groups x **units**. A unit is one
configuration of the recipe (a method, an ablation, a budget) run on every task and seed group as
one Hydra multirun of ``recipes/opt.py``, one job per (task, seed group): each job trains its
seeds in one process (``seeds=[...]``), and the launcher (``launcher=basic|parallel|local|slurm``,
the presets of ``recipes/config/hydra/launcher``) spreads the jobs. Units run in the suite's order;
a unit with ``offline: UNIT`` fine-tunes every seed from the ``offline.pt`` of that unit's job of
the same task and seed group (the pipeline checks that the regenerated dataset has the same
SHA-256), so an offline unit can train the offline phase once for every later unit. A unit with
``reuse: SUITE:UNIT`` is that suite's unit (same runs, same directories). Then the runner writes
the suite's section of the report (``docs/reproduction.md``): the final normalised score of every
unit and task beside the paper's, the learning curves, the checks, the sizing arithmetic and the
exact command behind every number.

Commands::

    python recipes/reproduce.py list                      # the suites
    python recipes/reproduce.py suite=smoke               # run what is not done, then the report
    python recipes/reproduce.py suite=smoke plan          # units, job status, sizing, exact commands
    python recipes/reproduce.py suite=smoke report        # only the report, from the runs on disk
    python recipes/reproduce.py suite=table1_random units=offline launcher=slurm \\
        -- hydra.launcher.partition=gpu

Options (``key=value``): ``suite``; ``units`` (comma-separated names: run only these, in the suite's
order); ``launcher`` (``basic``: one job after the other in one process, the default;
``parallel``: joblib; ``local``: submitit on this machine; ``slurm``: submitit on Slurm);
``root`` (where runs go, default ``multirun/reproduce``: ``<root>/<suite>/<unit>/<task>/<seed dir>``;
a relative root is relative to the working directory: run from the repository root);
``parallel_units`` (default 1: units that do not depend on each other run that many at once, e.g.
every ablation's array submitted together on Slurm);
``report`` (default ``docs/reproduction.md`` of this checkout; figures go to
``reproduction/<suite>/`` beside it); ``time_limit_min`` (the suite's by default, 0: none: with
``basic`` / ``parallel`` a unit's multirun is stopped after that long and the next invocation
resumes its jobs from their checkpoints; with ``local`` / ``slurm`` it is each job's
``timeout_min``, and Slurm requeues a job that reached it); ``reps`` (bootstrap replications of the
report's confidence intervals). Everything after ``--`` is appended to every unit's command (e.g.
``device=cuda``, ``hydra.launcher.partition=gpu``).

Rerunning the same command goes on where the last one stopped: a job whose ``summary.json`` exists
with the same overrides is not launched again, a killed one resumes from its ``checkpoint.pt``.
Exit status: 0 when every selected unit is done and the report is written; 3 when a unit stopped at
its time limit (rerun to continue); 2 for a suite or configuration error (one ``error: ...`` line);
1 when a unit's command failed (its output says why).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.errors import HydraException

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "opt.py"
SUITES_DIR = REPO / "recipes" / "suites"
CONFIG_DIR = REPO / "recipes" / "config"
DEFAULT_ROOT = Path("multirun") / "reproduce"
DEFAULT_REPORT = REPO / "docs" / "reproduction.md"
#: launcher name -> the ``hydra/launcher`` preset it selects (``None``: Hydra's basic launcher).
LAUNCHERS = {"basic": None, "parallel": "parallel", "local": "local", "slurm": "slurm"}
#: exit status of a run that stopped at its time limit with work left (rerun to continue).
UNFINISHED_STATUS = 3
USER_ERROR_STATUS = 2
#: a unit fits its slot when its estimate is at most this fraction of the time limit.
MARGIN = 0.8
#: seconds between SIGTERM and SIGKILL when a unit's multirun reaches its time limit.
KILL_GRACE_S = 30
BEGIN = "<!-- reproduce:begin {name} -->"
END = "<!-- reproduce:end {name} -->"

__all__ = [
    "Job",
    "SpeedModel",
    "Suite",
    "SuiteError",
    "Unit",
    "estimate_job",
    "job_status",
    "load_suite",
    "list_suites",
    "main",
    "suite_jobs",
    "unit_commands",
    "write_report",
]


class SuiteError(ValueError):
    """A suite file or a runner option is wrong; the message names the file/key and the fix."""


@functools.cache
def _recipe():
    """``recipes/opt.py`` as a module (its resolvers, ``_seed_dir`` and the config schema)."""
    spec = importlib.util.spec_from_file_location("opt_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class SpeedModel:
    """Seconds per piece of work on the suite's target machine, for sizing units (:func:`estimate_job`).

    ``startup_s``: interpreter, imports, dataset generation or load and hash, compile / CUDA-graph
    warm-up; ``offline_step_s``: one offline update of all seeds of a job; ``pretrain_step_s``: one
    online pre-training update; ``finetune_env_step_s``: one fine-tuning environment step with its
    ``utd`` updates, per method; ``env_step_s``: one environment step of all seeds without updates
    (collection, evaluation); ``eval_episode_steps``: the episode length assumed for evaluations.
    """

    source: str
    startup_s: float
    offline_step_s: float
    pretrain_step_s: float
    finetune_env_step_s: dict[str, float]
    env_step_s: float
    eval_episode_steps: int


@dataclass(frozen=True)
class Unit:
    """One configuration of a suite, run on every task and seed group (see the module docstring).

    ``role``: ``offline`` (trains the offline phase only; its ``offline.pt`` files feed other
    units; not a column of the score table) or ``finetune``. ``offline``: the unit whose
    ``offline.pt`` this one starts from. ``prune``: files deleted from each finished job (an
    offline unit keeps its ``offline.pt`` and drops ``checkpoint.pt``). ``same_as``: a unit whose
    evaluation curves this one must reproduce exactly (reported as a check). ``paper``:
    ``task -> (mean, spread)`` of the paper, ``paper_note`` says what the spread is.
    ``owner``: the suite that runs it (another one for ``reuse``), in ``<root>/<owner>/<directory>``.
    """

    name: str
    label: str
    owner: str
    overrides: tuple[str, ...]
    role: str = "finetune"
    offline: str | None = None
    prune: tuple[str, ...] = ()
    same_as: str | None = None
    paper: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    paper_note: str = ""
    #: its directory under ``<root>/<owner>/`` (the owner's unit name; ``name`` by default).
    directory: str = ""

    def __post_init__(self) -> None:
        if not self.directory:
            object.__setattr__(self, "directory", self.name)


@dataclass(frozen=True)
class Suite:
    """A reproduction suite (``recipes/suites/<name>.yaml``)."""

    name: str
    title: str
    description: str
    tasks: tuple[str, ...]
    seed_groups: tuple[tuple[int, ...], ...]
    common: tuple[str, ...]
    units: tuple[Unit, ...]
    time_limit_min: float = 0.0
    speed_model: SpeedModel | None = None
    path: Path | None = None

    def unit(self, name: str) -> Unit:
        for unit in self.units:
            if unit.name == name:
                return unit
        raise SuiteError(f"suite {self.name!r} has no unit {name!r}; its units: {[u.name for u in self.units]}")


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def _task_parts(task: str) -> tuple[str, str]:
    env, sep, kind = task.partition("-")
    if not sep or not env or not kind:
        raise SuiteError(f"task {task!r} is not '<env>-<dataset>' (e.g. walker2d-random)")
    return env, kind


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{where} must be a list of strings (recipe overrides such as method=opt), got {value!r}")
    return tuple(value)


def _paper(value: Any, where: str) -> dict[str, tuple[float, float | None]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SuiteError(f"{where} must map a task to [mean, spread], got {value!r}")
    out = {}
    for task, numbers in value.items():
        numbers = numbers if isinstance(numbers, list) else [numbers]
        if not 1 <= len(numbers) <= 2 or not all(isinstance(n, (int, float)) for n in numbers):
            raise SuiteError(f"{where}.{task} must be [mean] or [mean, spread], got {numbers!r}")
        out[str(task)] = (float(numbers[0]), float(numbers[1]) if len(numbers) == 2 else None)
    return out


def load_suite(name: str, *, _loading: tuple[str, ...] = ()) -> Suite:
    """Read and check ``recipes/suites/<name>.yaml`` (or a path to a suite file).

    Raises:
        SuiteError: an unknown suite, a missing or malformed entry, a unit that refers to a unit
            that does not exist or comes later, a ``reuse`` of a unit whose suite lacks some of
            this suite's tasks or seed groups.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else SUITES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SuiteError(f"suite={name}: no file {path} (known suites: {', '.join(list_suites())})")
    raw = yaml.safe_load(path.read_text())
    where = str(path)
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a suite file is a mapping (name, tasks, seed_groups, units, ...)")
    known = {"name", "title", "description", "tasks", "seed_groups", "common", "units", "time_limit_min",
             "speed_model"}
    unknown = set(raw) - known
    if unknown:
        raise SuiteError(f"{where}: unknown entries {sorted(unknown)}; known: {sorted(known)}")
    suite_name = str(raw.get("name") or path.stem)
    tasks = _strings(raw.get("tasks"), f"{where}: tasks")
    if not tasks:
        raise SuiteError(f"{where}: tasks lists no task")
    for task in tasks:
        _task_parts(task)
    groups = raw.get("seed_groups")
    if (not isinstance(groups, list) or not groups
            or not all(isinstance(g, list) and g and all(isinstance(s, int) and s >= 0 for s in g) for g in groups)):
        raise SuiteError(f"{where}: seed_groups must be a non-empty list of non-empty lists of seeds, got {groups!r}")
    seed_groups = tuple(tuple(g) for g in groups)
    seen = [s for g in seed_groups for s in g]
    if len(set(seen)) != len(seen):
        raise SuiteError(f"{where}: seed_groups lists a seed twice: {groups}")
    units: list[Unit] = []
    for i, entry in enumerate(raw.get("units") or []):
        at = f"{where}: units[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise SuiteError(f"{at} must be a mapping with a name")
        unit_keys = {"name", "label", "overrides", "role", "offline", "prune", "same_as", "paper", "paper_note", "reuse"}
        if set(entry) - unit_keys:
            raise SuiteError(f"{at}: unknown entries {sorted(set(entry) - unit_keys)}; known: {sorted(unit_keys)}")
        unit_name = str(entry["name"])
        if not re.fullmatch(r"[A-Za-z0-9_]+", unit_name) or unit_name in {u.name for u in units}:
            raise SuiteError(f"{at}: name {unit_name!r} must be unique and made of letters, digits and _")
        paper = _paper(entry.get("paper"), f"{at}.paper")
        if "reuse" in entry:
            units.append(_reused(entry, at, suite_name, tasks, seed_groups, paper, _loading))
            continue
        role = entry.get("role", "finetune")
        if role not in ("offline", "finetune"):
            raise SuiteError(f"{at}: role must be 'offline' or 'finetune', got {role!r}")
        for ref in ("offline", "same_as"):
            target = entry.get(ref)
            if target is not None and target not in {u.name for u in units}:
                raise SuiteError(f"{at}: {ref}={target!r} must name an earlier unit of the suite")
        if entry.get("offline") is not None and next(u for u in units if u.name == entry["offline"]).role != "offline":
            raise SuiteError(f"{at}: offline={entry['offline']!r} is not a unit with role: offline")
        units.append(Unit(
            unit_name, str(entry.get("label", unit_name)), suite_name, _strings(entry.get("overrides"), f"{at}.overrides"),
            role, entry.get("offline"), _strings(entry.get("prune"), f"{at}.prune"), entry.get("same_as"),
            paper, str(entry.get("paper_note", "")),
        ))
    if not units:
        raise SuiteError(f"{where}: units lists no unit")
    speed = raw.get("speed_model")
    speed_model = None
    if speed is not None:
        fields = [f.name for f in dataclasses.fields(SpeedModel)]
        if not isinstance(speed, dict) or set(speed) != set(fields):
            raise SuiteError(f"{where}: speed_model must have exactly the entries {fields}, got {speed!r}")
        speed_model = SpeedModel(**speed)
    return Suite(suite_name, str(raw.get("title", suite_name)), str(raw.get("description", "")).strip(),
                 tasks, seed_groups, _strings(raw.get("common"), f"{where}: common"), tuple(units),
                 float(raw.get("time_limit_min", 0) or 0), speed_model, path)


def _reused(entry: dict, at: str, suite_name: str, tasks, seed_groups, paper, loading) -> Unit:
    """A ``reuse: SUITE:UNIT`` unit: the other suite's unit, with this suite's label and paper numbers."""
    other, _, other_unit = str(entry["reuse"]).partition(":")
    if not other or not other_unit:
        raise SuiteError(f"{at}: reuse must be SUITE:UNIT, got {entry['reuse']!r}")
    extra = set(entry) - {"name", "label", "reuse", "paper", "paper_note"}
    if extra:
        raise SuiteError(f"{at}: a reused unit takes only name, label, paper and paper_note (not {sorted(extra)})")
    if other in loading or other == suite_name:
        raise SuiteError(f"{at}: reuse={entry['reuse']!r} refers back to suite {suite_name!r}")
    source_suite = load_suite(other, _loading=(*loading, suite_name))
    source = source_suite.unit(other_unit)
    missing = sorted(set(tasks) - set(source_suite.tasks)) + [str(list(g)) for g in seed_groups
                                                               if g not in source_suite.seed_groups]
    if missing:
        raise SuiteError(f"{at}: suite {other!r} does not run {missing}, so its unit {other_unit!r} cannot be reused")
    if source.offline is not None and ":" not in source.offline:  # its offline unit, as the source suite names it
        source = dataclasses.replace(source, offline=f"{source_suite.name}:{source.offline}")
    return dataclasses.replace(source, name=str(entry["name"]), label=str(entry.get("label", source.label)),
                               paper=paper or source.paper, paper_note=str(entry.get("paper_note", source.paper_note)),
                               same_as=None)


# ----------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One job of a unit: one task and one seed group, in ``path``."""

    unit: Unit
    task: str
    seeds: tuple[int, ...]
    path: Path

    @property
    def seed_dirs(self) -> list[Path]:
        """Where each seed's ``summary.json`` and ``offline.pt`` are."""
        return [self.path] if len(self.seeds) == 1 else [self.path / f"seed{s}" for s in self.seeds]


def _seed_dir(seeds: tuple[int, ...]) -> str:
    return _recipe()._seed_dir(seeds[0], list(seeds))


def _unit_root(root: Path, unit: Unit) -> Path:
    return root / unit.owner / unit.directory


def suite_jobs(suite: Suite, unit: Unit, root: Path) -> list[Job]:
    """The jobs of ``unit`` in this suite: every task x seed group, in its owner's directory."""
    base = _unit_root(root, unit)
    return [Job(unit, task, group, base / task / _seed_dir(group)) for task in suite.tasks for group in suite.seed_groups]


def _offline_unit(suite: Suite, unit: Unit) -> Unit | None:
    if unit.offline is None:
        return None
    if ":" in unit.offline:
        other, _, name = unit.offline.partition(":")
        return load_suite(other).unit(name)
    return suite.unit(unit.offline)


def _key(override: str) -> str:
    """The key an override sets (``online_pretrain.n_tau`` for ``online_pretrain.n_tau=0``)."""
    return override.split("=", 1)[0].lstrip("+~")


def _job_overrides(suite: Suite, unit: Unit, root: Path, extra: Sequence[str]) -> list[str]:
    """The recipe overrides every job of ``unit`` shares (the task and seeds come per job)."""
    owner = suite if unit.owner == suite.name else load_suite(unit.owner)
    mine = {_key(o) for o in unit.overrides}
    overrides = [*(o for o in owner.common if _key(o) not in mine), *unit.overrides]
    offline = _offline_unit(suite, unit)
    if offline is not None:
        base = _unit_root(root, offline)
        overrides.append(
            f'offline.checkpoint="${{opt.offline_pt:{base}/${{dataset.task}}-${{dataset.kind}},${{seed}},${{seeds}}}}"'
        )
    return [*overrides, *(o for o in extra if not o.startswith("hydra"))]


#: override keys that say how a job runs, not what it learns: a finished job is done whatever they are.
EXECUTION_KEYS = ("device", "logging", "checkpoint", "acceleration")


def _parse(overrides: Sequence[str]) -> dict[str, Any]:
    """``key -> value`` of Hydra overrides (quoting and spelling normalised by Hydra's parser),
    :data:`EXECUTION_KEYS` left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = {}
    for text in overrides:
        override = parser.parse_override(text)
        key = override.key_or_group
        if not any(key == k or key.startswith(f"{k}.") for k in EXECUTION_KEYS):
            out[key] = override.value()
    return out


def job_status(job: Job, expected: Sequence[str]) -> str:
    """``done`` (every ``summary.json`` there, written with the ``expected`` overrides, execution
    keys aside: the job's ``.hydra/overrides.yaml``), ``partial`` (a ``checkpoint.pt`` to resume,
    or a finished job of other overrides: the recipe decides), or ``pending``."""
    summaries = [job.path / "summary.json", *(d / "summary.json" for d in job.seed_dirs)]
    if all(p.is_file() for p in summaries):
        recorded = job.path / ".hydra" / "overrides.yaml"
        try:
            same = _parse(yaml.safe_load(recorded.read_text()) or []) == _parse(expected)
        except (OSError, yaml.YAMLError, HydraException):  # unreadable or unparsable: let the recipe decide
            same = False
        if same:
            return "done"
        return "partial"
    if (job.path / "checkpoint.pt").is_file():
        return "partial"
    return "pending"


def _seeds_value(seeds: tuple[int, ...]) -> str:
    return "[" + ",".join(str(s) for s in seeds) + "]"


def _job_task_overrides(job: Job, shared: Sequence[str]) -> list[str]:
    env, kind = _task_parts(job.task)
    return [f"env={env}", f"dataset={kind}", f"seeds={_seeds_value(job.seeds)}", *shared]


def unit_commands(
    suite: Suite, unit: Unit, root: Path, jobs: Sequence[Job], *, launcher: str = "basic",
    extra: Sequence[str] = (), time_limit_min: float = 0.0,
) -> list[list[str]]:
    """The multirun commands (argv) that run ``jobs`` of ``unit``: one per dataset kind and set of
    seed groups (a Hydra sweep is a product), sweeping the environments and the seed groups."""
    if launcher not in LAUNCHERS:
        raise SuiteError(f"launcher={launcher}: choose one of {', '.join(LAUNCHERS)}")
    shared = _job_overrides(suite, unit, root, extra)
    batches: dict[tuple[str, tuple[tuple[int, ...], ...]], list[str]] = {}
    by_task: dict[str, list[tuple[int, ...]]] = {}
    for job in jobs:
        by_task.setdefault(job.task, []).append(job.seeds)
    for task, groups in by_task.items():
        env, kind = _task_parts(task)
        batches.setdefault((kind, tuple(groups)), []).append(env)
    hydra = [f"hydra.sweep.dir={_unit_root(root, unit)}",
             'hydra.sweep.subdir="${dataset.task}-${dataset.kind}/${opt.seed_dir:${seed},${seeds}}"']
    preset = LAUNCHERS[launcher]
    if preset is not None:
        hydra.insert(0, f"hydra/launcher={preset}")
    if time_limit_min and launcher in ("local", "slurm"):
        hydra.append(f"hydra.launcher.timeout_min={math.ceil(time_limit_min)}")
    hydra += [o for o in extra if o.startswith("hydra")]
    commands = []
    for (kind, groups), envs in batches.items():
        sweep = [f"env={','.join(envs)}", f"dataset={kind}", "seeds=" + ",".join(_seeds_value(g) for g in groups)]
        commands.append([sys.executable, str(RECIPE), "-m", *sweep, *shared, *hydra])
    return commands


def _display(command: Sequence[str]) -> str:
    """``command`` as a shell line, from the repository root."""
    words = list(command)
    if words and words[0] == sys.executable:
        words[0] = "python"
    if len(words) > 1 and words[1] == str(RECIPE):
        words[1] = "recipes/opt.py"
    return shlex.join(words)


# ----------------------------------------------------------------------------------- sizing
def _unit_config(suite: Suite, unit: Unit, task: str, seeds: tuple[int, ...]) -> Any:
    """The validated :class:`~torchrl_opt.pipeline.config.RunConfig` of one job (presets filled
    in; ``offline.checkpoint`` left out: it names files that may not exist yet)."""
    from hydra import compose, initialize_config_dir

    recipe = _recipe()  # registers the schema and the resolvers
    owner = suite if unit.owner == suite.name else load_suite(unit.owner)
    mine = {_key(o) for o in unit.overrides}
    shared = [*(o for o in owner.common if _key(o) not in mine), *unit.overrides]
    overrides = _job_task_overrides(Job(unit, task, seeds, Path()), shared)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return recipe.make_run_config(compose(config_name="opt", overrides=overrides))


def _evaluations(steps: int, every: int) -> int:
    """How many evaluations a phase of ``steps`` runs: every ``every`` steps and at its end."""
    if steps <= 0:
        return 0
    if every <= 0:
        return 1
    return steps // every + (1 if steps % every else 0)


def estimate_job(cfg: Any, model: SpeedModel, *, loads_offline: bool) -> dict[str, float]:
    """Seconds each part of one job takes under ``model`` (the sizing arithmetic, shown in the report).

    ``startup`` + offline updates x ``offline_step_s`` + offline evaluations x episodes x
    ``eval_episode_steps`` x ``env_step_s`` + N_tau x ``env_step_s`` + pre-training updates x
    ``pretrain_step_s`` + fine-tuning env steps x ``finetune_env_step_s[method]`` + fine-tuning
    evaluations x episodes x ``eval_episode_steps`` x ``env_step_s``. The offline phase counts only
    without ``offline.checkpoint`` (``loads_offline``); pre-training only for OPT with steps.
    """
    method = str(cfg.method)
    episode = cfg.eval.episodes * model.eval_episode_steps * model.env_step_s
    parts = {"startup": model.startup_s}
    if not loads_offline:
        parts["offline"] = cfg.offline.steps * model.offline_step_s
        parts["offline_eval"] = _evaluations(cfg.offline.steps, cfg.offline.eval_every) * episode
    parts["collect"] = cfg.online_pretrain.n_tau * model.env_step_s
    if method == "opt" and cfg.online_pretrain.n_tau > 0:
        parts["pretrain"] = cfg.online_pretrain.steps * model.pretrain_step_s
    if cfg.finetune.env_steps > 0:
        if method not in model.finetune_env_step_s:
            raise SuiteError(f"speed_model.finetune_env_step_s has no entry for method {method!r}")
        parts["finetune"] = cfg.finetune.env_steps * model.finetune_env_step_s[method]
        parts["finetune_eval"] = _evaluations(cfg.finetune.env_steps, cfg.eval.every) * episode
    return {k: v for k, v in parts.items() if v > 0}


def _slots(total_s: float, limit_min: float) -> int:
    """Time slots of ``limit_min`` a job needs when each may be filled to :data:`MARGIN`."""
    if limit_min <= 0:
        return 1
    return max(1, math.ceil(total_s / (MARGIN * 60 * limit_min)))


def sizing(suite: Suite) -> list[dict[str, Any]]:
    """Every unit's estimate (the first task's largest job: evaluation episodes are assumed full
    length, so tasks differ only through their configs)."""
    if suite.speed_model is None:
        return []
    rows = []
    for unit in suite.units:
        worst = None
        for task in suite.tasks:
            cfg = _unit_config(suite, unit, task, max(suite.seed_groups, key=len))
            parts = estimate_job(cfg, suite.speed_model, loads_offline=unit.offline is not None)
            if worst is None or sum(parts.values()) > sum(worst[1].values()):
                worst = (task, parts, cfg)
        task, parts, cfg = worst
        total = sum(parts.values())
        rows.append({"unit": unit.name, "task": task, "parts": parts, "total_s": total,
                     "slots": _slots(total, suite.time_limit_min), "method": str(cfg.method),
                     "steps": {"offline": int(cfg.offline.steps), "n_tau": int(cfg.online_pretrain.n_tau),
                               "pretrain": int(cfg.online_pretrain.steps), "finetune": int(cfg.finetune.env_steps),
                               "utd": int(cfg.finetune.utd), "eval_every": int(cfg.eval.every),
                               "episodes": int(cfg.eval.episodes)}})
    return rows


# ----------------------------------------------------------------------------------- running
def _run_command(command: list[str], limit_s: float) -> str:
    """Run one multirun; ``done``, ``stopped`` (the time limit killed it) or ``failed:<status>``."""
    print(f"$ {_display(command)}", flush=True)
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        status = proc.wait(timeout=limit_s if limit_s > 0 else None)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return "stopped"
    return "done" if status == 0 else f"failed:{status}"


def prepare_datasets(suite: Suite, unit: Unit, jobs: Sequence[Job]) -> None:
    """Generate (or find cached) the locally generated datasets ``jobs`` train on, here, before
    their multirun starts, loading each once as a run does (:func:`~torchrl_opt.pipeline.context.
    load_dataset`) so that its flattened copy is cached: the jobs then neither generate it
    (concurrently, one task's jobs would each generate and all but the first one finished discard
    it) nor read Minari's per-episode file (about 3 ms an episode: minutes for 1M random
    transitions) inside their time limit."""
    import torch

    from torchrl_opt.pipeline.context import load_dataset

    seen = set()
    for job in jobs:
        cfg = _unit_config(suite, unit, job.task, job.seeds)
        ds = cfg.dataset
        key = (ds.task, ds.kind, ds.size, ds.generation_seed, ds.random_policy)
        if ds.source != "generated" or key in seen:
            continue
        seen.add(key)
        print(f"dataset {ds.task}-{ds.kind} ({ds.size} transitions, seed {ds.generation_seed}): ensuring it exists",
              flush=True)
        load_dataset(dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, progress=False)), torch.device("cpu"))


def _prune(job: Job, names: Sequence[str]) -> None:
    for name in names:
        for path in {job.path / name, *(d / name for d in job.seed_dirs)}:
            if path.is_file():
                path.unlink()


def _check_offline(suite: Suite, unit: Unit, root: Path, jobs: Sequence[Job]) -> None:
    """Refuse to start ``unit`` before its offline unit wrote every ``offline.pt`` it needs."""
    source = _offline_unit(suite, unit)
    if source is None:
        return
    needed = [Job(source, j.task, j.seeds, _unit_root(root, source) / j.task / _seed_dir(j.seeds)) for j in jobs]
    missing = [j for j in needed if not all((d / "offline.pt").is_file() for d in j.seed_dirs)]
    if missing:
        raise SuiteError(
            f"unit {unit.name!r} fine-tunes from unit {source.name!r}, whose jobs "
            f"{[f'{j.task}/{_seed_dir(j.seeds)}' for j in missing]} have no offline.pt yet: run that unit "
            f"first (units={source.name})")


def _levels(suite: Suite, selected: Sequence[Unit]) -> list[list[Unit]]:
    """``selected`` in waves: a unit comes after the selected unit it fine-tunes from."""
    where = {(u.owner, u.directory): u for u in selected}
    level: dict[str, int] = {}
    for unit in selected:  # suite order: an offline unit always comes first
        source = _offline_unit(suite, unit)
        dep = where.get((source.owner, source.directory)) if source is not None else None
        level[unit.name] = level[dep.name] + 1 if dep is not None else 0
    return [[u for u in selected if level[u.name] == n] for n in range(max(level.values()) + 1)]


def _run_unit(unit: Unit, commands: Sequence[list[str]], limit_s: float) -> str:
    """Run a unit's multiruns one after the other within ``limit_s`` (0: no limit)."""
    start = time.monotonic()
    for command in commands:
        left = limit_s - (time.monotonic() - start) if limit_s else 0
        outcome = _run_command(command, max(left, 1.0) if limit_s else 0)
        if outcome != "done":
            return outcome
    return "done"


def run_suite(suite: Suite, root: Path, *, units: Sequence[str] | None, launcher: str, extra: Sequence[str],
              time_limit_min: float, parallel_units: int = 1) -> str:
    """Run every selected unit's pending jobs, wave by wave (:func:`_levels`), up to
    ``parallel_units`` units at once; ``done``, ``stopped`` or ``failed:<status>``."""
    from concurrent.futures import ThreadPoolExecutor

    selected = [suite.unit(name) for name in units] if units else list(suite.units)
    local_limit = 60 * time_limit_min if launcher in ("basic", "parallel") else 0
    for wave in _levels(suite, selected):
        plans = []
        for unit in wave:  # composing configs and generating data: here, one unit after the other
            jobs = suite_jobs(suite, unit, root)
            _check_offline(suite, unit, root, jobs)
            shared = _job_overrides(suite, unit, root, extra)
            todo = [j for j in jobs if job_status(j, _job_task_overrides(j, shared)) != "done"]
            if not todo:
                print(f"unit {unit.name}: done ({len(jobs)} jobs)", flush=True)
                continue
            print(f"unit {unit.name}: {len(todo)} of {len(jobs)} jobs to run", flush=True)
            prepare_datasets(suite, unit, todo)
            commands = unit_commands(suite, unit, root, todo, launcher=launcher, extra=extra,
                                     time_limit_min=time_limit_min)
            plans.append((unit, jobs, shared, commands))
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, parallel_units)) as pool:
            outcomes = list(pool.map(lambda plan: _run_unit(plan[0], plan[3], local_limit), plans))
        result = "done"
        for (unit, jobs, shared, _), outcome in zip(plans, outcomes):
            left_over = [j for j in jobs if job_status(j, _job_task_overrides(j, shared)) != "done"]
            if outcome == "done" and not left_over:
                for job in jobs:
                    _prune(job, unit.prune)
                print(f"unit {unit.name}: done ({time.monotonic() - start:.0f} s)", flush=True)
                continue
            if outcome.startswith("failed"):
                print(f"unit {unit.name}: its command failed with status {outcome.split(':')[1]}", flush=True)
                result = outcome
            else:
                why = f"at its time limit of {time_limit_min:g} min" if outcome == "stopped" else "with jobs left"
                print(f"unit {unit.name}: stopped {why}; rerun the same command to continue (its jobs resume "
                      "from their checkpoint.pt)", flush=True)
                result = result if result.startswith("failed") else "stopped"
        if result != "done":
            return result
    return "done"


# ----------------------------------------------------------------------------------- report
def _fmt(mean: float | None, spread: float | None = None, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if spread is None else f" ± {spread:.{digits}f}")


def _records(suite: Suite, unit: Unit, root: Path):
    """The seed-level run records of the unit's finished jobs, labelled with the unit's label."""
    from torchrl_opt.analysis import collect_runs

    dirs = [job.path for job in suite_jobs(suite, unit, root) if (job.path / "summary.json").is_file()]
    if not dirs:
        return []
    return [dataclasses.replace(r, method=unit.label) for r in collect_runs(dirs)]


def _curve_check(a: list, b: list) -> tuple[int, float] | None:
    """(points compared, max |difference|) of the ``eval/`` curves of two unit's records (same seeds)."""
    by_seed = {(r.env, r.seed): r for r in b}
    points, worst = 0, 0.0
    for ra in a:
        rb = by_seed.get((ra.env, ra.seed))
        if rb is None:
            return None
        for key, series in ra.curves.items():
            if not key.startswith("eval/"):
                continue
            other = rb.curves.get(key)
            if other is None or len(other) != len(series):
                return None
            for (sa, va), (sb, vb) in zip(series, other):
                if sa != sb:
                    return None
                points += 1
                worst = max(worst, abs(va - vb))
    return (points, worst) if points else None


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (as commands are run)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "pending"
    return f"{_fmt(float(np.mean(values)), float(np.std(values)))} (n={len(values)})"


def _score_table(suite: Suite, records: dict[str, list]) -> list[str]:
    """One row per unit, per task ours (mean ± std over seeds) beside the paper's number."""
    with_paper = [t for t in suite.tasks if any(t in u.paper for u in suite.units)]
    header = ["unit"]
    for task in suite.tasks:
        header += [task, *(["paper"] if task in with_paper else [])]
    rows = []
    for unit in suite.units:
        metric = "offline" if unit.role == "offline" else "final"
        row = [f"{unit.label} (offline score)" if unit.role == "offline" else unit.label]
        for task in suite.tasks:
            row.append(_mean_std([r.score(metric) for r in records[unit.name]
                                  if r.env == task and r.score(metric) is not None]))
            if task in with_paper:
                row.append(_fmt(*unit.paper[task]) if task in unit.paper else "-")
        rows.append(row)
    notes = ["ours: mean ± population std over the seeds (n) of the D4RL normalised score x100 at the last "
             "evaluation (offline units: after offline pre-training)",
             *(f"{u.label}, paper: {u.paper_note}" for u in suite.units if u.paper_note)]
    return ["### Final normalised score", "", "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|", *("| " + " | ".join(row) + " |" for row in rows), "",
            *(f"- {n}" for n in notes), ""]


def _figures(suite: Suite, all_records: list, figures: Path, report: Path, reps: int) -> list[str]:
    """``torchrl_opt.analysis`` tables and figures of the scored units, written into ``figures``."""
    import matplotlib

    matplotlib.use("Agg")
    from torchrl_opt.analysis import aggregate, write_analysis

    write_analysis(aggregate(all_records, ("final",), reps=reps, seed=0), figures, formats=("png",))
    lines = [f"IQM, 95% stratified bootstrap CIs ({reps} resamples) and P(X > Y): "
             f"[per-task statistics]({_relative(figures / 'per_task_final.md', report.parent)}), "
             f"[all tables and figures]({_relative(figures / 'index.md', report.parent)}).", "",
             "### Learning curves", ""]
    for task in suite.tasks:
        png = figures / f"curves_{task}.png"
        if png.is_file():
            lines += [f"![{task}: normalised score during fine-tuning]({_relative(png, report.parent)})", ""]
    return lines


def _checks(suite: Suite, records: dict[str, list]) -> list[str]:
    """One line per ``same_as`` unit: are its evaluation curves those of the other unit?"""
    lines = []
    for unit in (u for u in suite.units if u.same_as):
        other = suite.unit(unit.same_as)
        result = _curve_check(records[unit.name], records[other.name]) if records[unit.name] else None
        if result is None:
            verdict = "pending (or the runs differ in their seeds or evaluation steps)"
        else:
            points, worst = result
            verdict = (("identical" if worst == 0 else f"differ by up to {worst:.3g}")
                       + f" over {points} evaluation points (every `eval/` curve of every seed)")
        lines.append(f"- `{unit.name}` ({unit.label}) vs `{other.name}` ({other.label}): {verdict}.")
    return ["### Checks", "", *lines, ""] if lines else []


def _sizing_lines(suite: Suite) -> list[str]:
    """The sizing arithmetic of every unit (:func:`sizing`) as a table."""
    rows = sizing(suite)
    if not rows:
        return []
    model = suite.speed_model
    lines = ["### Sizing", "",
             f"Each job must fit a {suite.time_limit_min:g}-minute slot on one GPU with a margin (estimate at most "
             f"{MARGIN:.0%} of the slot, else the job spans several slots and resumes from its checkpoint.pt). "
             f"Speed model: {model.source}.", "",
             "| unit | method | work of the largest job | estimate | slots |", "|---|---|---|---|---|"]
    for row in rows:
        steps, parts = row["steps"], row["parts"]
        work = [text for key, text in (
            ("offline", f"{steps['offline']:,} offline steps"), ("collect", f"N_tau {steps['n_tau']:,}"),
            ("pretrain", f"{steps['pretrain']:,} pre-training steps"),
            ("finetune", f"{steps['finetune']:,} env steps at UTD {steps['utd']}"),
        ) if key in parts]
        seconds = ", ".join(f"{k} {v:.0f} s" for k, v in parts.items())
        lines.append(f"| `{row['unit']}` | {row['method']} | {'; '.join(work)} ({seconds}) | "
                     f"{row['total_s'] / 60:.1f} min | {row['slots']} |")
    finetune = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in model.finetune_env_step_s.items())
    return [*lines, "", f"Per-step costs: offline update {model.offline_step_s * 1e3:.2f} ms, pre-training update "
            f"{model.pretrain_step_s * 1e3:.2f} ms, fine-tuning env step {finetune}, env step without updates "
            f"{model.env_step_s * 1e3:.2f} ms (evaluation episodes counted at {model.eval_episode_steps} steps), "
            f"start-up {model.startup_s:.0f} s.", ""]


def _command_lines(suite: Suite, root: Path, summaries: dict[str, list[dict]], figures: Path, launcher: str,
                   extra: Sequence[str], analysed: bool) -> list[str]:
    """Every unit's exact multirun command(s), its progress, and the analysis command."""
    lines = ["### Commands", "",
             f"Everything: `python recipes/reproduce.py suite={suite.name}` (add `launcher=slurm -- "
             f"hydra.launcher.partition=...` on a cluster). Unit by unit, from the repository root:", ""]
    for unit in suite.units:
        jobs = suite_jobs(suite, unit, root)
        shared = "" if unit.owner == suite.name else f" (unit `{unit.directory}` of suite `{unit.owner}`, shared)"
        took = [sum((s.get("wall_clock_s") or {}).values()) for s in summaries[unit.name]]
        took_text = f"; its phases took {max(took):.0f} s in the largest job" if took else ""
        lines += [f"`{unit.name}`{shared}: {len(summaries[unit.name])} of {len(jobs)} jobs done{took_text}", "",
                  "```bash", *(_display(c) for c in unit_commands(suite, unit, root, jobs, launcher=launcher,
                                                                   extra=extra)), "```", ""]
    if analysed:
        dirs = " ".join(shlex.quote(_shown(_unit_root(root, u))) for u in suite.units if u.role != "offline")
        lines += ["Tables and figures of the analysis alone:", "", "```bash",
                  f"python -m torchrl_opt.analysis {dirs} --out {shlex.quote(_shown(figures))} --metric final",
                  "```", ""]
    return lines


def suite_section(suite: Suite, root: Path, report: Path, *, reps: int, launcher: str = "basic",
                  extra: Sequence[str] = ()) -> str:
    """The suite's Markdown section of the report: the score table beside the paper's, the
    ``torchrl_opt.analysis`` statistics and learning curves (written into ``reproduction/<suite>/``
    beside ``report``), the checks, the sizing arithmetic and the exact commands."""
    figures = report.parent / "reproduction" / suite.name
    records = {unit.name: _records(suite, unit, root) for unit in suite.units}
    all_records = [r for unit in suite.units if unit.role != "offline" for r in records[unit.name]]
    summaries = {u.name: [json.loads((j.path / "summary.json").read_text()) for j in suite_jobs(suite, u, root)
                          if (j.path / "summary.json").is_file()] for u in suite.units}
    devices = sorted({str(s.get("device")) for rows in summaries.values() for s in rows})
    jobs_all = len(suite.tasks) * len(suite.seed_groups)
    done_units = sum(len(summaries[u.name]) == jobs_all for u in suite.units)
    lines = [BEGIN.format(name=suite.name), f"## Suite `{suite.name}`: {suite.title}", "",
             *([suite.description, ""] if suite.description else []),
             f"Status: {done_units} of {len(suite.units)} units done; seeds {[list(g) for g in suite.seed_groups]}; "
             f"runs in `{root}/{suite.name}`; device {', '.join(devices) or 'n/a'}; torchrl-opt revision "
             f"{_git_revision()}; written {time.strftime('%Y-%m-%d')} by "
             f"`python recipes/reproduce.py suite={suite.name}`.", "",
             *_score_table(suite, records),
             *(_figures(suite, all_records, figures, report, reps) if all_records else []),
             *_checks(suite, records), *_sizing_lines(suite),
             *_command_lines(suite, root, summaries, figures, launcher, extra, bool(all_records)),
             END.format(name=suite.name)]
    return "\n".join(lines) + "\n"


REPORT_HEADER = """# Reproduction

Generated sections below are written by `python recipes/reproduce.py suite=NAME`; see
docs/sweeps.md and the runner's `--help`.
"""


def write_report(suite: Suite, root: Path, report: Path, *, reps: int, launcher: str = "basic",
                 extra: Sequence[str] = ()) -> Path:
    """Write (or replace) the suite's section of ``report`` between its ``reproduce:begin/end``
    markers, keeping everything else of the file; returns the report's path."""
    section = suite_section(suite, root, report, reps=reps, launcher=launcher, extra=extra)
    text = report.read_text() if report.is_file() else REPORT_HEADER
    begin, end = BEGIN.format(name=suite.name), END.format(name=suite.name)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    return report


# ----------------------------------------------------------------------------------- CLI
def _plan(suite: Suite, root: Path, launcher: str, extra: Sequence[str], time_limit_min: float) -> None:
    print(f"suite {suite.name}: {suite.title}")
    print(f"tasks {list(suite.tasks)}, seed groups {[list(g) for g in suite.seed_groups]}, root {root / suite.name}")
    estimates = {row["unit"]: row for row in sizing(suite)}
    for unit in suite.units:
        jobs = suite_jobs(suite, unit, root)
        shared = _job_overrides(suite, unit, root, extra)
        status = [job_status(j, _job_task_overrides(j, shared)) for j in jobs]
        counts = ", ".join(f"{status.count(s)} {s}" for s in ("done", "partial", "pending") if status.count(s))
        estimate = estimates.get(unit.name)
        sized = f"; estimate {estimate['total_s'] / 60:.1f} min, {estimate['slots']} slot(s)" if estimate else ""
        print(f"\nunit {unit.name} ({unit.label}, {unit.role}): {counts}{sized}")
        for command in unit_commands(suite, unit, root, jobs, launcher=launcher, extra=extra,
                                     time_limit_min=time_limit_min):
            print(f"  {_display(command)}")


USAGE = "usage: python recipes/reproduce.py [list | suite=NAME [run|plan|report] [key=value ...] [-- OVERRIDE ...]]"
OPTIONS = ("suite", "units", "launcher", "root", "report", "time_limit_min", "reps", "parallel_units")


def _options(argv: Sequence[str]) -> tuple[str, dict[str, str], list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    command, options = "run", {}
    for word in argv:
        if word in ("run", "plan", "report", "list"):
            command = word
        elif "=" in word and word.split("=", 1)[0] in OPTIONS:
            key, value = word.split("=", 1)
            options[key] = value
        else:
            raise SuiteError(f"unknown argument {word!r}: options are {', '.join(f'{o}=...' for o in OPTIONS)}, "
                             "commands run, plan, report, list; recipe overrides go after `--`")
    return command, options, extra


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        command, options, extra = _options(argv)
        if command == "list":
            for name in list_suites():
                suite = load_suite(name)
                print(f"{name}: {suite.title} ({len(suite.units)} units, tasks {', '.join(suite.tasks)})")
            return 0
        if "suite" not in options:
            raise SuiteError(f"name a suite (suite=NAME; known: {', '.join(list_suites())}). {USAGE}")
        suite = load_suite(options["suite"])
        # as given: a relative root is relative to the working directory (run from the repository
        # root, as the report's commands are written)
        root = Path(options.get("root", DEFAULT_ROOT))
        if not re.fullmatch(r"[\w./+-]+", str(root)):
            raise SuiteError(f"root={root}: use a path of letters, digits and _ . / + - only (it travels "
                             "inside recipe overrides)")
        report = Path(options.get("report", DEFAULT_REPORT)).resolve()
        launcher = options.get("launcher", "basic")
        if launcher not in LAUNCHERS:
            raise SuiteError(f"launcher={launcher}: choose one of {', '.join(LAUNCHERS)}")
        try:
            limit = float(options.get("time_limit_min", suite.time_limit_min))
            reps = int(options.get("reps", 2000))
            parallel_units = int(options.get("parallel_units", 1))
        except ValueError as err:
            raise SuiteError(f"time_limit_min, reps and parallel_units take numbers ({err})") from err
        units = [u for u in options.get("units", "").split(",") if u] or None
        for name in units or ():
            suite.unit(name)
        if command == "plan":
            _plan(suite, root, launcher, extra, limit)
            return 0
        outcome = "done"
        if command == "run":
            outcome = run_suite(suite, root, units=units, launcher=launcher, extra=extra, time_limit_min=limit,
                                parallel_units=parallel_units)
        path = write_report(suite, root, report, reps=reps, launcher=launcher, extra=extra)
        print(f"report: {path}", flush=True)
    except SuiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_STATUS
    if outcome == "stopped":
        return UNFINISHED_STATUS
    return 0 if outcome == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
