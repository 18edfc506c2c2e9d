"""Schedules for OPT's value-mixing coefficient ``kappa`` (paper Sec. 3.2, Appendix H).

During online fine-tuning OPT's actor maximises ``(1 - kappa) * Q_off + kappa * Q_on`` (Eq. 4), and
``kappa`` follows a *linear* schedule from ``kappa_init`` to ``kappa_end`` over ``T_decay`` steps
(Appendix H, Table 15). :class:`KappaSchedule` implements it as

.. math::

    \\kappa(t) = \\begin{cases}
        \\kappa_\\text{init} & t < t_0 \\\\
        \\kappa_\\text{init} + \\frac{t - t_0}{T_\\text{decay}}
            (\\kappa_\\text{end} - \\kappa_\\text{init}) & t_0 \\le t < t_0 + T_\\text{decay} \\\\
        \\kappa_\\text{end} & t \\ge t_0 + T_\\text{decay}
    \\end{cases}

with ``t_0 = start_step``; ``T_decay = 0`` jumps to ``kappa_end`` at ``t_0``.

The value is a pure function of the step (:meth:`KappaSchedule.value`). For compiled or
CUDA-graphed losses, which hold ``kappa`` as a tensor buffer (``OPTLoss.kappa``: float32, shape
``[]``), :meth:`KappaSchedule.step` advances an internal counter and writes the new value *in
place* (``Tensor.fill_``) into the buffers it was given with :meth:`KappaSchedule.attach` or
``step(into=...)``. Anything that captured the buffer earlier (a compiled graph, a CUDA graph, a
reference held by the user) therefore sees the new value without recompiling, and the write
issues no host-device synchronisation.

The per-dataset presets of Table 15 live in :data:`KAPPA_PRESETS` (the one place in the code
base for that table) and are reached through :func:`kappa_preset`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

__all__ = [
    "AdaptiveKappa",
    "KappaScheduleError",
    "UnknownKappaPresetError",
    "KappaSchedule",
    "KAPPA_PRESETS",
    "kappa_preset",
    "kappa_preset_config",
]


class KappaScheduleError(ValueError):
    """Invalid kappa-schedule configuration, state or target buffer."""


class UnknownKappaPresetError(KeyError):
    """No Table 15 preset for the requested ``(domain, dataset)`` pair."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise KappaScheduleError(
            f"{name} must be a real number, got {value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value):
        raise KappaScheduleError(f"{name} must be finite, got {value}.")
    return value


def _as_kappa(name: str, value: Any) -> float:
    value = _as_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise KappaScheduleError(f"{name} must lie in [0, 1], got {value}.")
    return value


def _as_count(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise KappaScheduleError(f"{name} must be a non-negative integer, got {value!r}.")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        # allow integral floats such as 1e5 (common in configs), nothing else
        if not (math.isfinite(float(value)) and float(value).is_integer()):
            raise KappaScheduleError(f"{name} must be a non-negative integer, got {value}.")
        value = int(value)
    if isinstance(value, numbers.Integral):
        value = int(value)
    else:
        raise KappaScheduleError(
            f"{name} must be a non-negative integer, got {value!r} of type "
            f"{type(value).__name__}."
        )
    if value < 0:
        raise KappaScheduleError(f"{name} must be >= 0, got {value}.")
    return value


def _check_buffer(buffer: Any) -> torch.Tensor:
    if not isinstance(buffer, torch.Tensor):
        raise KappaScheduleError(
            f"kappa target must be a torch.Tensor buffer, got {type(buffer).__name__}."
        )
    if not buffer.is_floating_point():
        raise KappaScheduleError(
            f"kappa target must be a floating-point tensor, got dtype {buffer.dtype}."
        )
    if buffer.requires_grad:
        raise KappaScheduleError(
            "kappa target requires grad; register kappa as a buffer (register_buffer), "
            "not as a Parameter."
        )
    return buffer


class KappaSchedule:
    """Linear (or constant) schedule of OPT's ``kappa`` with in-place buffer updates.

    ``value(t) = kappa_init`` for ``t < start_step``; ``kappa_init + (t - start_step) / T_decay *
    (kappa_end - kappa_init)`` for ``start_step <= t < start_step + T_decay``; ``kappa_end``
    afterwards (``T_decay = 0``: ``kappa_end`` from ``start_step`` on).

    Args:
        kappa_init: value at (and before) ``start_step``, in ``[0, 1]``.
        kappa_end: value reached after ``T_decay`` steps, in ``[0, 1]``.
        T_decay: number of steps of the linear ramp, ``>= 0``.
        start_step: step at which the ramp starts, ``>= 0``. Default 0.

    The internal counter (:attr:`step_count`) starts at 0; every :meth:`step` call adds one and
    writes ``value(step_count)`` into the attached buffers. Call :meth:`step` once per unit of
    ``T_decay`` (Table 15 counts online environment steps).

    Example:
        >>> loss_kappa = torch.zeros(())          # e.g. OPTLoss.kappa
        >>> sched = KappaSchedule(0.1, 0.9, T_decay=100).attach(loss_kappa)
        >>> round(float(loss_kappa), 6)
        0.1
        >>> _ = sched.step(n=50)
        >>> round(float(loss_kappa), 6)
        0.5
    """

    def __init__(
        self,
        kappa_init: float,
        kappa_end: float,
        T_decay: int,
        start_step: int = 0,
    ) -> None:
        self.kappa_init = _as_kappa("kappa_init", kappa_init)
        self.kappa_end = _as_kappa("kappa_end", kappa_end)
        self.T_decay = _as_count("T_decay", T_decay)
        self.start_step = _as_count("start_step", start_step)
        self._step_count = 0
        self._targets: list[torch.Tensor] = []

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant(cls, kappa: float) -> KappaSchedule:
        """A schedule whose value is ``kappa`` at every step."""
        kappa = _as_kappa("kappa", kappa)
        return cls(kappa, kappa, T_decay=0, start_step=0)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KappaSchedule:
        """Build from ``{"kappa_init", "kappa_end", "T_decay"[, "start_step"]}`` (e.g. a preset)."""
        if not isinstance(config, Mapping):
            raise KappaScheduleError(
                f"config must be a mapping, got {type(config).__name__}."
            )
        required = ("kappa_init", "kappa_end", "T_decay")
        missing = [k for k in required if k not in config]
        unknown = sorted(set(config) - {*required, "start_step"})
        if missing or unknown:
            raise KappaScheduleError(
                f"bad kappa schedule config: missing keys {missing}, unknown keys {unknown}; "
                f"expected {list(required)} and optionally 'start_step'."
            )
        return cls(
            config["kappa_init"],
            config["kappa_end"],
            config["T_decay"],
            config.get("start_step", 0),
        )

    def config(self) -> dict[str, float | int]:
        """The constructor arguments as plain python numbers."""
        return {
            "kappa_init": self.kappa_init,
            "kappa_end": self.kappa_end,
            "T_decay": self.T_decay,
            "start_step": self.start_step,
        }

    # ------------------------------------------------------------------ values
    @property
    def is_constant(self) -> bool:
        """True when the value never changes (``kappa_init == kappa_end``)."""
        return self.kappa_init == self.kappa_end

    @property
    def end_step(self) -> int:
        """First step at which the value equals ``kappa_end``: ``start_step + T_decay``."""
        return self.start_step + self.T_decay

    def value(self, step: int) -> float:
        """``kappa(step)``: a pure function of ``step`` (see the class docstring)."""
        step = _as_count("step", step)
        if step >= self.end_step:
            return self.kappa_end
        if step <= self.start_step:
            return self.kappa_init
        frac = (step - self.start_step) / self.T_decay
        return self.kappa_init + frac * (self.kappa_end - self.kappa_init)

    @property
    def step_count(self) -> int:
        """Number of :meth:`step` increments so far (the schedule's current step)."""
        return self._step_count

    @property
    def current(self) -> float:
        """``value(step_count)``."""
        return self.value(self._step_count)

    # ------------------------------------------------------------------ buffers
    def attach(self, buffer: torch.Tensor) -> KappaSchedule:
        """Register ``buffer`` to receive every new value in place; writes the current value now.

        ``buffer`` must be a floating-point tensor that does not require grad (a registered
        buffer such as ``OPTLoss.kappa``). Every element is set (``fill_``), so a per-seed buffer
        of shape ``[n_seeds]`` works too. Returns ``self`` for chaining.
        """
        buffer = _check_buffer(buffer)
        if not any(buffer is t for t in self._targets):
            self._targets.append(buffer)
        self._write(buffer, self.current)
        return self

    def detach_buffers(self) -> None:
        """Forget every buffer registered with :meth:`attach`."""
        self._targets.clear()

    @property
    def attached(self) -> tuple[torch.Tensor, ...]:
        """The buffers registered with :meth:`attach`."""
        return tuple(self._targets)

    @staticmethod
    def _write(buffer: torch.Tensor, value: float) -> None:
        # fill_ with a python scalar: in place (captured graphs see it), no host-device sync.
        with torch.no_grad():
            buffer.fill_(value)

    def write(self, into: torch.Tensor | None = None) -> float:
        """Write the current value into the attached buffers (and ``into``); return it."""
        value = self.current
        if into is not None:
            self._write(_check_buffer(into), value)
        for target in self._targets:
            self._write(target, value)
        return value

    def step(self, into: torch.Tensor | None = None, n: int = 1) -> float:
        """Advance the counter by ``n`` (default 1) and write the new value in place.

        The value ``value(step_count + n)`` is written into every attached buffer and into
        ``into`` when given (``into`` is not attached for later calls). Returns the new value.
        """
        n = _as_count("n", n)
        if into is not None:
            _check_buffer(into)
        self._step_count += n
        return self.write(into)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, float | int]:
        """Configuration and counter as plain python numbers (attached buffers excluded)."""
        return {**self.config(), "step_count": self._step_count}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore configuration and counter exactly, then rewrite the attached buffers.

        Raises :class:`KappaScheduleError` on missing/unknown keys or invalid values (the
        schedule is left unchanged in that case).
        """
        if not isinstance(state_dict, Mapping):
            raise KappaScheduleError(
                f"state_dict must be a mapping, got {type(state_dict).__name__}."
            )
        expected = {"kappa_init", "kappa_end", "T_decay", "start_step", "step_count"}
        missing = sorted(expected - set(state_dict))
        unknown = sorted(set(state_dict) - expected)
        if missing or unknown:
            raise KappaScheduleError(
                f"bad KappaSchedule state_dict: missing keys {missing}, unknown keys {unknown}."
            )
        fresh = KappaSchedule(
            state_dict["kappa_init"],
            state_dict["kappa_end"],
            state_dict["T_decay"],
            state_dict["start_step"],
        )
        step_count = _as_count("step_count", state_dict["step_count"])
        self.kappa_init = fresh.kappa_init
        self.kappa_end = fresh.kappa_end
        self.T_decay = fresh.T_decay
        self.start_step = fresh.start_step
        self._step_count = step_count
        self.write()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kappa_init={self.kappa_init}, kappa_end={self.kappa_end}, "
            f"T_decay={self.T_decay}, start_step={self.start_step}, "
            f"step_count={self._step_count})"
        )


class AdaptiveKappa:
    """Kappa driven by the two critics' measured accuracy on recent online data (an extension of
    OPT, not the paper's method: the paper sets kappa by hand per dataset family, Appendix H).

    After every critic update, with ``delta_c,i = Q_c,i(s, a) - y_c`` the TD errors of critic
    ``c``'s members on the batch and ``M`` its online rows (``is_online``)::

        m_c = mean_{i, j in M} delta_c,i(j)^2                   (the critic's error on online data)
        e_c <- e_c + rate * (m_c - e_c)                         (exponential average; e_c = m_c at first)
        kappa = clamp(e_off / (e_off + e_on), kappa_min, kappa_max)

    so the critic that fits the online data better gets more weight in the actor's objective
    (Eq. 4). A batch without online rows changes nothing; until the first one kappa is ``init``.
    Everything is a device op on tensor state (no host synchronisation), written into the attached
    buffers in place, like :class:`KappaSchedule`; :meth:`state_dict` holds the averages, so a
    resumed run continues exactly.
    """

    def __init__(
        self, init: float = 0.5, kappa_min: float = 0.1, kappa_max: float = 0.9, rate: float = 0.005,
        *, device: torch.device | str = "cpu",
    ) -> None:
        self.init = _as_kappa("init", init)
        self.kappa_min = _as_kappa("kappa_min", kappa_min)
        self.kappa_max = _as_kappa("kappa_max", kappa_max)
        if not self.kappa_min <= self.init <= self.kappa_max:
            raise KappaScheduleError(
                f"need kappa_min <= init <= kappa_max, got {self.kappa_min}, {self.init}, {self.kappa_max}"
            )
        rate = _as_number("rate", rate)
        if not 0.0 < rate <= 1.0:
            raise KappaScheduleError(f"rate must lie in (0, 1], got {rate}")
        self.rate = rate
        self.errors = torch.zeros(2, device=device)  # (e_off, e_on)
        self.seen = torch.zeros((), dtype=torch.bool, device=device)
        self.kappa = torch.full((), self.init, device=device)
        self._targets: list[torch.Tensor] = []

    def value(self, step: int = 0) -> float:
        """The value before any observation (``init``): what a loss is built with."""
        return self.init

    @property
    def current(self) -> float:
        """The current kappa (a host read: for logging only)."""
        return float(self.kappa)

    def attach(self, buffer: torch.Tensor) -> AdaptiveKappa:
        """Register ``buffer`` (e.g. ``OPTLoss.kappa``) and write the current kappa into it."""
        buffer = _check_buffer(buffer)
        if not any(buffer is t for t in self._targets):
            self._targets.append(buffer)
        self.write()
        return self

    def write(self) -> None:
        with torch.no_grad():
            for target in self._targets:
                target.copy_(self.kappa)

    def step(self) -> None:
        """Per environment step: nothing (kappa moves with :meth:`observe`)."""

    @torch.no_grad()
    def observe(self, td_error_off: torch.Tensor, td_error_on: torch.Tensor, is_online: torch.Tensor) -> None:
        """Update the averages with one critic update's squared TD errors ``[members, B]`` (or
        ``[B]``) of ``Q_off`` and ``Q_on`` and the batch's ``is_online`` flags ``[B]``, then kappa."""
        weight = is_online.reshape(-1).to(self.errors.dtype)
        count = weight.sum()
        m = torch.stack([
            (error.reshape(-1, weight.numel()).mean(0).to(self.errors.dtype) * weight).sum() / count.clamp(min=1)
            for error in (td_error_off, td_error_on)
        ])
        has = count > 0
        updated = torch.where(self.seen, self.errors + self.rate * (m - self.errors), m)
        self.errors.copy_(torch.where(has, updated, self.errors))
        self.seen.logical_or_(has)
        ratio = self.errors[0] / (self.errors.sum() + 1e-12)
        kappa = torch.where(self.seen, ratio.clamp(self.kappa_min, self.kappa_max), self.kappa.new_tensor(self.init))
        self.kappa.copy_(kappa)
        self.write()

    def state_dict(self) -> dict[str, Any]:
        return {"init": self.init, "kappa_min": self.kappa_min, "kappa_max": self.kappa_max,
                "rate": self.rate, "errors": self.errors.clone(), "seen": self.seen.clone(),
                "kappa": self.kappa.clone()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        expected = {"init", "kappa_min", "kappa_max", "rate", "errors", "seen", "kappa"}
        if set(state_dict) != expected:
            raise KappaScheduleError(
                f"bad AdaptiveKappa state_dict: keys {sorted(state_dict)}, expected {sorted(expected)}"
            )
        self.init, self.kappa_min = float(state_dict["init"]), float(state_dict["kappa_min"])
        self.kappa_max, self.rate = float(state_dict["kappa_max"]), float(state_dict["rate"])
        for name in ("errors", "seen", "kappa"):
            getattr(self, name).copy_(state_dict[name])
        self.write()



# ---------------------------------------------------------------------- Table 15 presets
def _preset(kappa_init: float, T_decay: int, kappa_end: float) -> Mapping[str, float | int]:
    return MappingProxyType(
        {"kappa_init": kappa_init, "kappa_end": kappa_end, "T_decay": T_decay}
    )


_MUJOCO_RANDOM = _preset(1.0, 0, 1.0)  # Table 15 "1 / - / 1": Q_off unused, no ramp
_MUJOCO_MEDIUM = _preset(0.3, 150_000, 0.9)
_MUJOCO_MEDIUM_REPLAY = _preset(0.1, 150_000, 0.9)
_ANTMAZE = _preset(0.1, 100_000, 0.9)
_ANTMAZE_LARGE_DIVERSE = _preset(0.1, 200_000, 0.9)
_ADROIT_CLONED = _preset(0.1, 250_000, 0.9)


#: OPT paper, Appendix H, Table 15: ``(domain, dataset) -> {kappa_init, kappa_end, T_decay}``.
#: ``T_decay`` counts online fine-tuning steps; Table 15's "-" (MuJoCo random) is ``T_decay=0``
#: with ``kappa_init = kappa_end = 1`` (a constant schedule). Read-only.
KAPPA_PRESETS: Mapping[tuple[str, str], Mapping[str, float | int]] = MappingProxyType(
    {
        **{
            (env, dataset): cfg
            for env in ("halfcheetah", "hopper", "walker2d")
            for dataset, cfg in (
                ("random", _MUJOCO_RANDOM),
                ("medium", _MUJOCO_MEDIUM),
                ("medium-replay", _MUJOCO_MEDIUM_REPLAY),
            )
        },
        ("antmaze", "umaze"): _ANTMAZE,
        ("antmaze", "umaze-diverse"): _ANTMAZE,
        ("antmaze", "medium-play"): _ANTMAZE,
        ("antmaze", "medium-diverse"): _ANTMAZE,
        ("antmaze", "large-play"): _ANTMAZE,
        ("antmaze", "large-diverse"): _ANTMAZE_LARGE_DIVERSE,
        ("pen", "cloned"): _ADROIT_CLONED,
        ("hammer", "cloned"): _ADROIT_CLONED,
        ("door", "cloned"): _ADROIT_CLONED,
        ("relocate", "cloned"): _ADROIT_CLONED,
    }
)


def _normalise_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise UnknownKappaPresetError(
            f"kappa preset {what} must be a string, got {type(name).__name__}."
        )
    return name.strip().lower().replace("_", "-")


def kappa_preset_config(domain: str, dataset: str) -> dict[str, float | int]:
    """Table 15's ``{kappa_init, kappa_end, T_decay}`` for ``(domain, dataset)`` (a fresh dict).

    ``domain`` is the MuJoCo task (``halfcheetah``, ``hopper``, ``walker2d``), ``antmaze``, or
    the Adroit task (``pen``, ``hammer``, ``door``, ``relocate``); ``dataset`` the D4RL dataset
    name (``medium-replay``, ``large-diverse``, ``cloned``, ...). Case and ``_``/``-`` are
    ignored. Raises :class:`UnknownKappaPresetError` listing the known pairs.
    """
    key = (_normalise_name(domain, "domain"), _normalise_name(dataset, "dataset"))
    try:
        return dict(KAPPA_PRESETS[key])
    except KeyError:
        known = ", ".join(f"{d}/{s}" for d, s in KAPPA_PRESETS)
        raise UnknownKappaPresetError(
            f"no kappa preset (Table 15) for domain={domain!r}, dataset={dataset!r}. "
            f"Known (domain/dataset): {known}. Use KappaSchedule(...) for other settings."
        ) from None


def kappa_preset(domain: str, dataset: str, start_step: int = 0) -> KappaSchedule:
    """A fresh :class:`KappaSchedule` with Table 15's values for ``(domain, dataset)``.

    ``start_step`` (default 0) offsets the ramp, e.g. when the counter also counts the online
    pre-training samples.
    """
    return KappaSchedule(**kappa_preset_config(domain, dataset), start_step=start_step)
