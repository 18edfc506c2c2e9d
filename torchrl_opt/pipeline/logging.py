"""Run logging: TorchRL loggers (CSV by default), a tqdm progress bar, and an in-memory history.

Metrics arrive as TensorDicts of detached device scalars; they are turned into Python floats only
at logging points (every ``log_every`` steps), which is the only host synchronisation of a loop.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tqdm.auto import tqdm

from torchrl_opt.pipeline.config import LOGGER_BACKENDS

__all__ = ["GroupLogger", "NonFiniteMetricError", "RunLogger"]

#: the folder of a run's (or seed's) CSV / TensorBoard logs: ``<dir>/logs/scalars/<key>.csv``.
LOG_FOLDER = "logs"


class NonFiniteMetricError(FloatingPointError):
    """A logged loss or value became NaN/inf: training diverged."""


class RunLogger:
    """Scalars to a TorchRL logger and to :attr:`history` (``name -> [(step, value)]``).

    Args:
        backend: ``"csv"``, ``"tensorboard"``, ``"wandb"`` or ``"none"``.
        log_dir: directory of the run (or seed); CSV and TensorBoard logs go to
            ``<log_dir>/logs`` (CSV: ``<log_dir>/logs/scalars/<key>.csv``).
        experiment: experiment name (the wandb run's name).
        progress: show tqdm bars.
        check_finite: raise :class:`NonFiniteMetricError` when a logged metric is NaN/inf.
    """

    def __init__(
        self,
        backend: str,
        log_dir: str | Path,
        experiment: str,
        *,
        progress: bool = True,
        check_finite: bool = True,
    ) -> None:
        if backend not in LOGGER_BACKENDS:
            raise ValueError(f"Unknown logging backend {backend!r}; choose one of {LOGGER_BACKENDS}")
        self.backend = backend
        self.progress = progress
        self.check_finite = check_finite
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self._logger = None
        if backend != "none":
            from torchrl.record.loggers import get_logger

            kwargs, name = {}, LOG_FOLDER
            if backend == "wandb":
                kwargs, name = {"save_dir": str(log_dir)}, experiment
            self._logger = get_logger(backend, logger_name=str(log_dir), experiment_name=name, **kwargs)
        self._bar: tqdm | None = None
        self._bar_start = 0.0
        self._postfix: dict[str, float] = {}

    def use(self, logger) -> None:
        """Write to the TorchRL ``logger`` instance from now on (``None``: keep the current one);
        the trainer routes a run's logs into its own logger this way."""
        if logger is not None:
            self._logger, self.backend = logger, "external"

    # ------------------------------------------------------------------ scalars
    def log(self, metrics: Mapping[str, float] | TensorDictBase, step: int, prefix: str = "") -> dict:
        """Log every scalar of ``metrics`` at ``step`` under ``prefix/``; returns the floats."""
        values = _as_floats(metrics)
        for name, value in values.items():
            key = f"{prefix}/{name}" if prefix else name
            if self.check_finite and not math.isfinite(value):
                raise NonFiniteMetricError(
                    f"{key} = {value} at step {step}: training diverged. Lower the learning rate, "
                    "enable observation normalisation, or shorten offline training."
                )
            self.history[key].append((int(step), value))
            if self._logger is not None:
                self._logger.log_scalar(key, value, step=int(step))
        return values

    @property
    def csv_dir(self) -> Path | None:
        """Directory of the CSV backend's ``<key>.csv`` files (``None`` for other backends)."""
        if self.backend != "csv" or self._logger is None:
            return None
        return Path(self._logger.experiment.log_dir) / "scalars"

    def restore_history(self, history: Mapping[str, list]) -> None:
        """Replace :attr:`history` by ``history`` (a checkpoint's) and make the CSV files agree.

        A resumed run continues from its last checkpoint, so rows the killed run logged after it
        would otherwise be duplicated (the CSV backend appends). Each ``<key>.csv`` is rewritten
        atomically with exactly the rows of ``history``; CSV files of keys absent from it are
        removed. Call it before logging anything; a fresh run passes ``{}``. TensorBoard and
        wandb cannot be rewritten: there, steps between the checkpoint and the kill appear twice.
        """
        self.history = defaultdict(list)
        for key, series in history.items():
            self.history[key] = [(int(step), float(value)) for step, value in series]
        csv_dir = self.csv_dir
        if csv_dir is None:
            return
        experiment = self._logger.experiment
        for handle in experiment.files.values():
            handle.close()
        experiment.files.clear()
        experiment.scalars.clear()
        if csv_dir.is_dir():
            for path in csv_dir.rglob("*.csv"):
                key = path.relative_to(csv_dir).with_suffix("").as_posix()
                if key not in self.history:
                    path.unlink()
        for key, series in self.history.items():
            experiment.scalars[key] = list(series)
            path = csv_dir / f"{key}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w") as handle:
                handle.writelines(f"{step},{value}\n" for step, value in series)
            os.replace(tmp_name, path)

    def last(self, key: str) -> float | None:
        series = self.history.get(key)
        return series[-1][1] if series else None

    # ------------------------------------------------------------------ progress
    def start_phase(self, name: str, total: int, initial: int = 0) -> None:
        self.close_phase()
        self._postfix = {}
        self._bar_start = time.perf_counter()
        if self.progress:
            self._bar = tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True)

    def advance(self, n: int = 1, **postfix: float) -> None:
        self._postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in self._postfix.items()}, refresh=False)

    def close_phase(self) -> float:
        """Close the current bar; returns the phase's wall-clock seconds."""
        elapsed = time.perf_counter() - self._bar_start if self._bar_start else 0.0
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._bar_start = 0.0
        return elapsed


class GroupLogger:
    """:class:`RunLogger`'s interface over the per-seed loggers of a run (``S >= 1`` seeds).

    :meth:`log` takes metrics whose tensors have a leading seed dimension ``[S, ...]`` (what
    seed-batched steps return; trailing dimensions are averaged) or are scalars shared by every
    seed (``kappa``, SPOT's ``lambda``; everything of a one-seed run), writes seed ``i``'s values to
    ``loggers[i]`` (its own CSV / TensorBoard / wandb run and history) and returns the means over
    seeds (for the progress bar), reading all seeds' values with one host synchronisation. One
    progress bar, shown when ``progress``, follows the run's phases.
    """

    def __init__(self, loggers: Sequence[RunLogger], seeds: Sequence[int], *, progress: bool = True) -> None:
        if len(loggers) != len(seeds) or not loggers:
            raise ValueError(f"need one logger per seed; got {len(loggers)} for seeds {list(seeds)}")
        self.loggers = list(loggers)
        self.seeds = list(seeds)
        self._progress = RunLogger("none", ".", "", progress=progress, check_finite=False)

    def log(self, metrics: Mapping[str, float] | TensorDictBase, step: int, prefix: str = "") -> dict:
        """Log seed ``i``'s values of ``metrics`` to ``loggers[i]``; returns the means over seeds."""
        if len(self.loggers) == 1:
            return self.loggers[0].log(metrics, step, prefix)
        per_seed = _split_seeds(metrics, len(self.loggers))
        logged = []
        for seed, logger, values in zip(self.seeds, self.loggers, per_seed):
            try:
                logged.append(logger.log(values, step, prefix))
            except NonFiniteMetricError as err:
                raise NonFiniteMetricError(f"seed {seed}: {err}") from err
        return {name: sum(v[name] for v in logged) / len(logged) for name in logged[0]}

    def start_phase(self, name: str, total: int, initial: int = 0) -> None:
        label = name if len(self.loggers) == 1 else f"{name} ({len(self.loggers)} seeds)"
        self._progress.start_phase(label, total, initial)

    def advance(self, n: int = 1, **postfix: float | torch.Tensor) -> None:
        """Advance the bar; per-seed postfix values (tensors ``[S]``) show their mean."""
        means = {
            k: float(v.double().mean()) if isinstance(v, torch.Tensor) else v
            for k, v in postfix.items()
        }
        self._progress.advance(n, **means)

    def close_phase(self) -> float:
        return self._progress.close_phase()


def _split_seeds(metrics: Mapping[str, float] | TensorDictBase, num_seeds: int) -> list[dict]:
    """``[{name: float}]`` per seed from metrics with a leading seed dimension (or shared scalars),
    read with one host sync."""
    if isinstance(metrics, TensorDictBase):
        items = [("/".join(k) if isinstance(k, tuple) else k, v) for k, v in metrics.items(True, True)]
    else:
        items = list(metrics.items())
    shared: dict[str, float] = {}
    columns: dict[str, torch.Tensor] = {}
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            shared[name] = float(value)
            continue
        value = value.detach()
        if value.dim() == 0:
            columns[name] = value.double().expand(num_seeds)
        elif value.shape[0] == num_seeds:
            columns[name] = value.reshape(num_seeds, -1).double().mean(-1)
        else:
            raise ValueError(
                f"metric {name!r} has shape {tuple(value.shape)}; expected a scalar or a leading "
                f"seed dimension of {num_seeds}"
            )
    rows: list[list[float]] = [[] for _ in range(num_seeds)]
    if columns:
        device = next(iter(columns.values())).device
        table = torch.stack([c.to(device) for c in columns.values()], 1).tolist()
        rows = table
    return [{**shared, **dict(zip(columns, row))} for row in rows]


def _as_floats(metrics: Mapping[str, float] | TensorDictBase) -> dict[str, float]:
    """Python floats of ``metrics`` (non-scalar tensors are averaged), with one host sync in all:
    the tensors are stacked in float64 (exact for float32 values) and read with one ``tolist``."""
    if isinstance(metrics, TensorDictBase):
        items = [("/".join(k) if isinstance(k, tuple) else k, v) for k, v in metrics.items(True, True)]
    else:
        items = list(metrics.items())
    out: dict[str, float] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, value in items:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.numel() != 1:
                value = value.float().mean()
            tensors[name] = value.reshape(()).double()
        out[name] = value
    if tensors:
        devices = {t.device for t in tensors.values()}
        stacked = torch.stack([t.to(next(iter(devices))) for t in tensors.values()]).tolist()
        out.update(zip(tensors, stacked))
    return {name: float(value) for name, value in out.items()}
