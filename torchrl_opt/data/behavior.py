"""Online behaviour agents (SAC / TD3) that generate D4RL-style datasets.

D4RL built its MuJoCo datasets from one online SAC run per task (Fu et al., 2020):

* ``medium``: a partially trained policy, stopped once its evaluation return reaches a target
  (about one third of the expert's); the *policy* is then rolled out to build the dataset;
* ``medium-replay``: every transition the agent saw until it reached that target, i.e. the
  content of its replay buffer;
* ``expert``: the converged agent, trained for the full budget.

:func:`train_behavior_agent` runs that online agent with TorchRL pieces only: a
:class:`~torchrl.collectors.Collector` on the CPU env, a :class:`~torchrl.data.ReplayBuffer` over a
:class:`~torchrl.data.LazyTensorStorage` sized to the whole budget (nothing is ever overwritten, so
the buffer *is* the medium-replay dataset), TorchRL's :class:`~torchrl.objectives.SACLoss` /
:class:`~torchrl.objectives.TD3Loss` with :class:`~torchrl.objectives.SoftUpdate`, and the networks of
:mod:`torchrl_opt.models`.

Update step and GPU path
------------------------
:class:`BehaviorLearner` owns networks, loss, optimisers and the update step. The update functions
contain no host synchronisation (no ``.item()``, no branches on tensor values), so that on CUDA
they are compiled with :func:`torch.compile` and replayed with
:class:`tensordict.nn.CudaGraphModule`:

* ``compile=None`` (default) means *auto*: compile on CUDA, eager on CPU; ``compile=True`` also
  works on CPU (useful for checking that the compiled update equals the eager one).
* ``cudagraphs=None`` means *auto*: on when the device is CUDA and ``compile`` is on. The
  compiled function is then wrapped in ``CudaGraphModule(fn, warmup=cudagraph_warmup)``;
  the warm-up calls (default 5) let ``torch.compile`` finish compiling before the graph is
  captured. Adam is built with ``capturable=True`` so its step counters live on the device.
* ``compile_mode=None`` picks ``"default"`` when ``CudaGraphModule`` does the graphing (inductor's
  own cudagraphs would nest inside it) and ``"reduce-overhead"`` on CUDA without
  ``CudaGraphModule``; ``"default"`` on CPU. Any :func:`torch.compile` mode may be given.
* ``compile_backend="inductor"`` (default); another backend (e.g. ``"aot_eager"``, which traces
  the same graphs without generating kernels, much quicker to compile on CPU) ignores the mode.

SAC runs as one graph (critic + actor + temperature losses summed, one Adam over three parameter
groups, soft target update). TD3 runs as two graphs, as in Fujimoto et al. (2018): a critic step
every update and an actor step plus soft target update every ``policy_delay`` updates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import CudaGraphModule, TensorDictModule, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import Bounded, LazyTensorStorage, RandomSampler, ReplayBuffer
from torchrl.modules import AdditiveGaussianModule
from torchrl.objectives import SACLoss, SoftUpdate, TD3Loss

from torchrl_opt.envs import evaluate_policy, make_env
from torchrl_opt.models import (
    bounded_action_spec,
    make_gaussian_actor,
    make_qvalue_ensemble,
    make_td3_actor,
)

__all__ = [
    "SUPPORTED_ALGOS",
    "TRANSITION_KEYS",
    "BehaviorAgentResult",
    "BehaviorConfig",
    "BehaviorConfigError",
    "BehaviorLearner",
    "train_behavior_agent",
]

SUPPORTED_ALGOS: tuple[str, ...] = ("sac", "td3")

#: The keys of every stored transition (TorchRL layout), in this order.
TRANSITION_KEYS: tuple[Any, ...] = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
)

#: Offset added to ``seed`` for the evaluation env, so evaluation episodes never replay the
#: training env's initial states.
EVAL_SEED_OFFSET = 10_000

_CHECKPOINT_FORMAT = 1


class BehaviorConfigError(ValueError):
    """Invalid argument or hyperparameter for the behaviour agent."""


@dataclass
class BehaviorConfig:
    """Hyperparameters of the behaviour agent (defaults: standard SAC / TD3 for MuJoCo).

    Training: ``init_random_frames`` uniform-random warm-up steps, then ``updates_per_step``
    gradient updates per environment step, run in blocks after each collected batch of
    ``frames_per_batch`` steps (1000, as rlkit's SAC that generated D4RL).
    """

    hidden: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    init_random_frames: int = 5000
    frames_per_batch: int = 1000
    updates_per_step: int = 1
    num_qvalue_nets: int = 2
    loss_function: str = "l2"
    # SAC
    alpha_init: float = 1.0
    target_entropy: float | str = "auto"
    # TD3
    policy_noise: float = 0.2  # target smoothing noise, in units of the half action range
    noise_clip: float = 0.5  # same units
    policy_delay: int = 2
    exploration_noise: float = 0.1  # collection noise std / half action range, per dimension
    # evaluation
    eval_max_steps: int = 1000
    # speed
    compile: bool | None = None
    cudagraphs: bool | None = None
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    cudagraph_warmup: int = 5

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise BehaviorConfigError(
                f"hidden must be non-empty positive widths, got {self.hidden}"
            )
        for name in (
            "batch_size",
            "frames_per_batch",
            "updates_per_step",
            "num_qvalue_nets",
            "policy_delay",
            "eval_max_steps",
            "cudagraph_warmup",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BehaviorConfigError(f"{name} must be a positive integer, got {value!r}")
        if (
            isinstance(self.init_random_frames, bool)
            or not isinstance(self.init_random_frames, int)
            or self.init_random_frames < 0
        ):
            raise BehaviorConfigError(
                f"init_random_frames must be a non-negative integer, got {self.init_random_frames!r}"
            )
        if self.init_random_frames % self.frames_per_batch:
            raise BehaviorConfigError(
                f"init_random_frames ({self.init_random_frames}) must be a multiple of "
                f"frames_per_batch ({self.frames_per_batch})"
            )
        if not self.lr > 0:
            raise BehaviorConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.gamma <= 1.0:
            raise BehaviorConfigError(f"gamma must lie in (0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise BehaviorConfigError(f"tau must lie in (0, 1], got {self.tau}")
        if not self.alpha_init > 0:
            raise BehaviorConfigError(f"alpha_init must be > 0, got {self.alpha_init}")
        for name in ("policy_noise", "noise_clip", "exploration_noise"):
            if getattr(self, name) < 0:
                raise BehaviorConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.loss_function not in ("l1", "l2", "smooth_l1"):
            raise BehaviorConfigError(
                f"loss_function must be 'l1', 'l2' or 'smooth_l1', got {self.loss_function!r}"
            )
        if isinstance(self.target_entropy, str) and self.target_entropy != "auto":
            raise BehaviorConfigError(
                f"target_entropy must be a float or 'auto', got {self.target_entropy!r}"
            )

    @classmethod
    def from_kwargs(cls, **hyperparams: Any) -> BehaviorConfig:
        """Build a config, rejecting unknown names with the list of valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(hyperparams) - valid)
        if unknown:
            raise BehaviorConfigError(
                f"Unknown behaviour-agent hyperparameter(s) {unknown}; valid: {sorted(valid)}"
            )
        return cls(**hyperparams)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists instead of tuples), safe for ``torch.load(weights_only=True)``."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out


@dataclass
class BehaviorAgentResult:
    """What :func:`train_behavior_agent` returns.

    Attributes:
        policy: stochastic collection policy on the CPU (SAC: samples its TanhNormal; TD3:
            deterministic action plus Gaussian noise ``exploration_noise * (high - low) / 2``,
            clipped to the action box). Under ``ExplorationType.DETERMINISTIC`` it acts greedily.
        transitions: every transition collected, flat ``[N]``, keys :data:`TRANSITION_KEYS`.
        env_steps: environment steps taken (``== transitions.shape[0]``).
        reached_target: whether an evaluation reached ``target_return``.
        final_eval_return: mean return of the last evaluation.
        eval_history: ``(env_step, mean deterministic return)`` for every evaluation.
        checkpoint: tensors/primitives only; see :meth:`BehaviorLearner.checkpoint`.
    """

    policy: TensorDictModule
    transitions: TensorDict
    env_steps: int
    reached_target: bool
    final_eval_return: float
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    checkpoint: dict = field(default_factory=dict)


def _to_cpu(obj: Any) -> Any:
    """Recursively move tensors in nested dicts/lists to the CPU (detached)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class BehaviorLearner:
    """Networks, TorchRL loss, optimisers and the (optionally compiled) update step.

    SAC (Haarnoja et al., 2018, v2 with automatic temperature), one update on a batch ``B``:

    .. math::

        y &= r + \\gamma (1 - d^{term}) \\big(\\min_i \\bar Q_i(s', a') - \\alpha \\log\\pi(a'|s')\\big),
            \\quad a' \\sim \\pi(\\cdot|s') \\\\
        L_Q &= \\sum_i \\mathbb{E}_B\\, (Q_i(s,a) - y)^2, \\quad
        L_\\pi = \\mathbb{E}_B\\,[\\alpha \\log\\pi(\\tilde a|s) - \\min_i Q_i(s,\\tilde a)], \\quad
        L_\\alpha = -\\log\\alpha\\,\\mathbb{E}_B[\\log\\pi(\\tilde a|s) + \\bar{\\mathcal H}]

    minimised jointly by one Adam step (the terms touch disjoint parameters), then
    :math:`\\bar\\theta \\leftarrow (1-\\tau)\\bar\\theta + \\tau\\theta`.

    TD3 (Fujimoto et al., 2018): critic step on
    :math:`y = r + \\gamma (1-d^{term}) \\min_i \\bar Q_i(s', \\mathrm{clip}(\\bar\\pi(s') + \\epsilon))`
    every update; actor step :math:`L_\\pi = -\\mathbb{E}_B Q_1(s, \\pi(s))` and the soft target
    update every ``policy_delay`` updates.

    Args:
        algo: ``"sac"`` or ``"td3"``.
        obs_dim: observation size.
        action_spec: bounded action spec (CPU or any device).
        config: hyperparameters.
        device: training device (default CPU).
    """

    def __init__(
        self,
        algo: str,
        obs_dim: int,
        action_spec: Bounded,
        config: BehaviorConfig | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        algo = _check_algo(algo)
        if isinstance(obs_dim, bool) or not isinstance(obs_dim, int) or obs_dim < 1:
            raise BehaviorConfigError(f"obs_dim must be a positive integer, got {obs_dim!r}")
        self.algo = algo
        self.obs_dim = obs_dim
        self.config = config if config is not None else BehaviorConfig()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        cfg = self.config
        cpu_spec = bounded_action_spec(action_spec).to("cpu")
        self.action_spec = cpu_spec
        self.action_dim = cpu_spec.shape[-1]

        is_cuda = self.device.type == "cuda"
        self.compiled = is_cuda if cfg.compile is None else bool(cfg.compile)
        self.cudagraphs = (is_cuda and self.compiled) if cfg.cudagraphs is None else cfg.cudagraphs
        if self.cudagraphs and not is_cuda:
            raise BehaviorConfigError(
                f"cudagraphs=True needs a CUDA training device, got {self.device}"
            )
        if cfg.compile_mode is not None:
            self.compile_mode = cfg.compile_mode
        elif is_cuda and not self.cudagraphs:
            self.compile_mode = "reduce-overhead"
        else:
            self.compile_mode = "default"

        # Networks are built on the training device from a spec on that device, so that the
        # TanhNormal bounds / TD3 action scale live there too (no host->device copy in a graph).
        dev_spec = cpu_spec.to(self.device)
        self.actor = self._make_actor(dev_spec).to(self.device)
        qvalues = [
            q.to(self.device)
            for q in make_qvalue_ensemble(obs_dim, self.action_dim, cfg.num_qvalue_nets, cfg.hidden)
        ]
        capturable = bool(self.cudagraphs)
        if algo == "sac":
            self.loss_module = SACLoss(
                self.actor,
                qvalues,
                num_qvalue_nets=cfg.num_qvalue_nets,
                loss_function=cfg.loss_function,
                alpha_init=cfg.alpha_init,
                action_spec=dev_spec,
                target_entropy=cfg.target_entropy,
            )
            # Resolve the lazily registered target-entropy buffer now: it must exist before
            # compilation and in every state_dict (checkpoint round trip).
            _ = self.loss_module.target_entropy
            self.optimizers: dict[str, torch.optim.Optimizer] = {
                "sac": torch.optim.Adam(
                    [
                        {"params": list(self.loss_module.actor_network_params.values(True, True))},
                        {"params": list(self.loss_module.qvalue_network_params.values(True, True))},
                        {"params": [self.loss_module.log_alpha]},
                    ],
                    lr=cfg.lr,
                    capturable=capturable,
                )
            }
        else:
            self.loss_module = TD3Loss(
                self.actor,
                qvalues,
                action_spec=dev_spec,
                num_qvalue_nets=cfg.num_qvalue_nets,
                policy_noise=cfg.policy_noise * _half_range(cpu_spec).max().item(),
                noise_clip=cfg.noise_clip * _half_range(cpu_spec).max().item(),
                loss_function=cfg.loss_function,
            )
            self.optimizers = {
                "actor": torch.optim.Adam(
                    list(self.loss_module.actor_network_params.values(True, True)),
                    lr=cfg.lr,
                    capturable=capturable,
                ),
                "critic": torch.optim.Adam(
                    list(self.loss_module.qvalue_network_params.values(True, True)),
                    lr=cfg.lr,
                    capturable=capturable,
                ),
            }
        self.loss_module.make_value_estimator(gamma=cfg.gamma)
        self.loss_module.to(self.device)
        self.target_updater = SoftUpdate(self.loss_module, tau=cfg.tau)
        self.num_updates = 0

        if algo == "sac":
            steps: dict[str, Callable[[TensorDictBase], TensorDictBase]] = {"sac": self._sac_step}
        else:
            steps = {"critic": self._td3_critic_step, "actor": self._td3_actor_step}
        self._steps = {name: self._wrap(fn) for name, fn in steps.items()}

    # ------------------------------------------------------------------ construction helpers
    def _make_actor(self, spec: Bounded) -> TensorDictModule:
        if self.algo == "sac":
            return make_gaussian_actor(self.obs_dim, spec, self.config.hidden)
        return make_td3_actor(self.obs_dim, spec, self.config.hidden)

    def _wrap(
        self, fn: Callable[[TensorDictBase], TensorDictBase]
    ) -> Callable[[TensorDictBase], TensorDictBase]:
        if self.compiled:
            if self.config.compile_backend == "inductor":
                fn = torch.compile(fn, mode=self.compile_mode)
            else:  # modes are inductor options; other backends take none
                fn = torch.compile(fn, backend=self.config.compile_backend)
        if self.cudagraphs:
            fn = CudaGraphModule(
                fn,
                in_keys=[],
                out_keys=[],
                warmup=self.config.cudagraph_warmup,
                device=self.device,
            )
        return fn

    # ------------------------------------------------------------------ update functions
    # No .item(), no tensor-valued branches: these are captured whole by CudaGraphModule.
    def _sac_step(self, batch: TensorDictBase) -> TensorDictBase:
        optimizer = self.optimizers["sac"]
        loss_td = self.loss_module(batch)
        total = loss_td["loss_actor"] + loss_td["loss_qvalue"] + loss_td["loss_alpha"]
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.target_updater.step()
        return loss_td.select(
            "loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy"
        ).detach()

    def _td3_critic_step(self, batch: TensorDictBase) -> TensorDictBase:
        optimizer = self.optimizers["critic"]
        loss_qvalue, _ = self.loss_module.value_loss(batch)
        loss_qvalue.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return TensorDict(loss_qvalue=loss_qvalue.detach())

    def _td3_actor_step(self, batch: TensorDictBase) -> TensorDictBase:
        optimizer = self.optimizers["actor"]
        loss_actor, _ = self.loss_module.actor_loss(batch)
        loss_actor.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.target_updater.step()
        return TensorDict(loss_actor=loss_actor.detach())

    def update(self, batch: TensorDictBase) -> TensorDictBase:
        """One gradient update on ``batch`` (moved to the training device).

        Returns the detached losses (``loss_qvalue`` always; ``loss_actor`` for SAC and on TD3's
        delayed actor steps; ``loss_alpha``, ``alpha``, ``entropy`` for SAC) without syncing.
        """
        batch = batch.select(*TRANSITION_KEYS).to(self.device)
        if self.algo == "sac":
            out = self._steps["sac"](batch)
        else:
            out = self._steps["critic"](batch)
            if self.num_updates % self.config.policy_delay == self.config.policy_delay - 1:
                out = out.update(self._steps["actor"](batch))
        self.num_updates += 1
        return out

    # ------------------------------------------------------------------ policies
    def make_cpu_actor(self) -> TensorDictModule:
        """A fresh CPU actor with the learner's current weights."""
        actor = self._make_actor(self.action_spec)
        self.sync_actor(actor)
        return actor

    @torch.no_grad()
    def sync_actor(self, cpu_actor: TensorDictModule) -> None:
        """Copy the training actor's parameters and buffers into ``cpu_actor`` (in place)."""
        if cpu_actor is self.actor:
            return
        src = TensorDict.from_module(self.actor)
        dst = TensorDict.from_module(cpu_actor)
        dst.update_(src.detach().to(dst.device if dst.device is not None else "cpu"))

    def exploration_policy(self, cpu_actor: TensorDictModule) -> TensorDictModule:
        """Stochastic collection policy around ``cpu_actor``.

        SAC: the actor itself (samples ``a ~ TanhNormal`` under ``ExplorationType.RANDOM``).
        TD3: ``a = clip(pi(s) + eps, low, high)``,
        ``eps ~ N(0, (exploration_noise * (high - low) / 2)^2)``, noise off when deterministic.
        """
        if self.algo == "sac":
            return cpu_actor
        noise = AdditiveGaussianModule(
            self.action_spec,
            sigma_init=self.config.exploration_noise,
            sigma_end=self.config.exploration_noise,
            annealing_num_steps=1,
        )
        noise.std = _half_range(self.action_spec).clone()  # per-dimension noise scale
        return TensorDictSequential(cpu_actor, noise)

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self, **metadata: Any) -> dict[str, Any]:
        """Tensors-and-primitives dict loadable with ``torch.load(weights_only=True)``.

        Keys: ``format_version``, ``algo``, ``obs_dim``, ``action_dim``, ``config``,
        ``num_updates``, ``actor`` (state dict of the actor module), ``loss_module`` (actor,
        critics, target critics/actor, ``log_alpha`` ...), ``optimizers`` and ``metadata``.
        """
        return {
            "format_version": _CHECKPOINT_FORMAT,
            "algo": self.algo,
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "config": self.config.to_dict(),
            "num_updates": self.num_updates,
            "actor": _to_cpu(dict(self.actor.state_dict())),
            "loss_module": _to_cpu(dict(self.loss_module.state_dict())),
            "optimizers": {k: _to_cpu(v.state_dict()) for k, v in self.optimizers.items()},
            "metadata": dict(metadata),
        }

    def load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Restore networks, targets and optimisers from :meth:`checkpoint`'s output."""
        if checkpoint.get("algo") != self.algo:
            raise BehaviorConfigError(
                f"checkpoint is for algo {checkpoint.get('algo')!r}, this learner is {self.algo!r}"
            )
        if (
            checkpoint.get("obs_dim") != self.obs_dim
            or checkpoint.get("action_dim") != self.action_dim
        ):
            raise BehaviorConfigError(
                f"checkpoint dims (obs {checkpoint.get('obs_dim')}, action "
                f"{checkpoint.get('action_dim')}) do not match ({self.obs_dim}, {self.action_dim})"
            )
        self.loss_module.load_state_dict(checkpoint["loss_module"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][name])
        self.num_updates = int(checkpoint.get("num_updates", 0))


def _half_range(spec: Bounded) -> torch.Tensor:
    return ((spec.space.high - spec.space.low) / 2).to(torch.float32)


def _check_algo(algo: str) -> str:
    if not isinstance(algo, str) or algo.lower() not in SUPPORTED_ALGOS:
        raise BehaviorConfigError(f"Unknown algo {algo!r}; expected one of {SUPPORTED_ALGOS}")
    return algo.lower()


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BehaviorConfigError(f"{name} must be a positive integer, got {value!r}")


def train_behavior_agent(
    env_id: str,
    *,
    target_return: float | None,
    max_env_steps: int,
    seed: int = 0,
    algo: str = "sac",
    device: torch.device | str | None = None,
    eval_every: int = 5000,
    eval_episodes: int = 5,
    progress: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
    **hyperparams: Any,
) -> BehaviorAgentResult:
    """Train an off-policy agent online on ``env_id`` and keep every transition it saw.

    Loop: collect ``frames_per_batch`` steps (uniform-random actions for the first
    ``init_random_frames``, then the stochastic policy), store them, and once the warm-up is
    over run ``updates_per_step * frames_per_batch`` updates on uniform batches of
    ``batch_size`` from the buffer. Every ``eval_every`` env steps the deterministic policy is
    evaluated on ``eval_episodes`` episodes of a separately seeded env.

    Stop rule: if ``target_return`` is not None and an evaluation's mean return is
    ``>= target_return``, training stops at once (``reached_target=True``, ``env_steps`` is that
    evaluation's step); otherwise it runs ``max_env_steps`` steps (the last evaluation is then at
    ``max_env_steps``).

    Args:
        env_id: Gymnasium id, e.g. ``"Hopper-v5"``.
        target_return: stop threshold on the mean deterministic evaluation return, or None.
        max_env_steps: step budget; also the replay capacity. Must exceed the warm-up.
        seed: seeds torch's global RNG, the training env (before the collector first resets it) and the evaluation
            env (``seed + EVAL_SEED_OFFSET``).
        algo: ``"sac"`` (default) or ``"td3"``.
        device: training device; None means CUDA when available, else CPU.
        eval_every: evaluation period in env steps (multiple of ``frames_per_batch``).
        eval_episodes: episodes per evaluation.
        progress: show a tqdm bar (env steps, last eval return, updates/s).
        env_kwargs: extra keyword arguments for ``gymnasium.make`` (through
            :func:`~torchrl_opt.envs.make_env`), e.g. ``{"max_episode_steps": 500}``; used for the
            training and the evaluation env alike.
        **hyperparams: fields of :class:`BehaviorConfig`.

    Raises:
        BehaviorConfigError: unknown algo or hyperparameter, non-positive sizes, a budget not
            larger than the warm-up, ``eval_every`` not a multiple of ``frames_per_batch``.
        ValueError: unknown ``env_id`` (from :func:`~torchrl_opt.envs.make_env`).
    """
    algo = _check_algo(algo)
    config = BehaviorConfig.from_kwargs(**hyperparams)
    _check_positive_int("max_env_steps", max_env_steps)
    _check_positive_int("eval_every", eval_every)
    _check_positive_int("eval_episodes", eval_episodes)
    if max_env_steps <= config.init_random_frames:
        raise BehaviorConfigError(
            f"max_env_steps ({max_env_steps}) must be larger than the random warm-up "
            f"init_random_frames ({config.init_random_frames})"
        )
    if eval_every % config.frames_per_batch:
        raise BehaviorConfigError(
            f"eval_every ({eval_every}) must be a multiple of frames_per_batch "
            f"({config.frames_per_batch})"
        )
    if target_return is not None and not math.isfinite(float(target_return)):
        raise BehaviorConfigError(f"target_return must be finite or None, got {target_return}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)

    torch.manual_seed(seed)
    env_kwargs = dict(env_kwargs or {})
    # Seeded before the collector's first reset, so observation[0] comes from the seeded reset.
    train_env = make_env(env_id, seed=seed, **env_kwargs)
    obs_spec = train_env.observation_spec
    obs_keys = set(obs_spec.keys())
    if "observation" not in obs_keys or len(obs_spec["observation"].shape) != 1:
        train_env.close()
        raise BehaviorConfigError(
            f"{env_id} must expose a flat 'observation' vector; got {obs_spec}"
        )
    obs_dim = obs_spec["observation"].shape[-1]
    action_spec = train_env.action_spec

    try:
        learner = BehaviorLearner(algo, obs_dim, action_spec, config, device=device)
    except Exception:
        train_env.close()
        raise
    cpu_actor = learner.actor if device.type == "cpu" else learner.make_cpu_actor()
    policy = learner.exploration_policy(cpu_actor)

    fpb = config.frames_per_batch
    collector = Collector(
        train_env,
        policy,
        frames_per_batch=fpb,
        total_frames=-(-max_env_steps // fpb) * fpb,
        init_random_frames=config.init_random_frames,
        device="cpu",
        auto_register_policy_transforms=False,
    )
    eval_env = make_env(env_id, seed=seed + EVAL_SEED_OFFSET, **env_kwargs)
    replay_buffer = ReplayBuffer(
        storage=LazyTensorStorage(max_env_steps, device=device),
        sampler=RandomSampler(),
        batch_size=config.batch_size,
    )

    from tqdm.auto import tqdm

    bar = tqdm(total=max_env_steps, disable=not progress, unit="step", desc=f"{algo} {env_id}")
    env_steps = 0
    eval_history: list[tuple[int, float]] = []
    reached = False
    last_eval = float("nan")
    postfix = {"eval": "n/a", "upd/s": "n/a"}
    try:
        for batch in collector:
            remaining = max_env_steps - env_steps
            batch = batch.reshape(-1)
            if batch.shape[0] > remaining:
                batch = batch[:remaining]
            replay_buffer.extend(batch.select(*TRANSITION_KEYS).to(device))
            env_steps += batch.shape[0]
            bar.update(batch.shape[0])

            if env_steps >= config.init_random_frames:
                n_updates = config.updates_per_step * batch.shape[0]
                start = time.perf_counter()
                for _ in range(n_updates):
                    learner.update(replay_buffer.sample())
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                rate = n_updates / max(time.perf_counter() - start, 1e-9)
                learner.sync_actor(cpu_actor)
                postfix["upd/s"] = f"{rate:.0f}"
                bar.set_postfix(postfix, refresh=False)

            if env_steps % eval_every == 0 or env_steps >= max_env_steps:
                returns = evaluate_policy(
                    cpu_actor, eval_env, eval_episodes, max_steps=config.eval_max_steps
                )
                last_eval = float(returns.mean())
                eval_history.append((env_steps, last_eval))
                postfix["eval"] = f"{last_eval:.1f}"
                bar.set_postfix(postfix, refresh=True)
                if target_return is not None and last_eval >= target_return:
                    reached = True
                    break
            if env_steps >= max_env_steps:
                break
    finally:
        bar.close()
        collector.shutdown()
        eval_env.close()

    storage = replay_buffer.storage
    transitions = storage[: len(storage)].to("cpu")
    if not isinstance(transitions, TensorDict):
        transitions = transitions.to_tensordict()
    checkpoint = learner.checkpoint(
        env_id=env_id, env_steps=env_steps, seed=seed, reached_target=reached
    )
    return BehaviorAgentResult(
        policy=policy,
        transitions=transitions,
        env_steps=env_steps,
        reached_target=reached,
        final_eval_return=last_eval,
        eval_history=eval_history,
        checkpoint=checkpoint,
    )
