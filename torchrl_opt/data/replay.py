"""Offline/online replay for the online phases: balanced replay, symmetric, online-only, uniform.

One storage holds the offline dataset in rows ``[0, N)`` followed by the online transitions in
rows ``[N, N + online_capacity)``; it is sized for the whole run, so online data never overwrite
offline data (Off2On's design) and extending past the capacity raises
:class:`ReplayCapacityError`. Each mixing strategy is a :class:`torchrl.data.replay_buffers.Sampler`
over that storage, picked by name through :func:`make_replay`:

============  ===============================================================================
strategy      batch composition
============  ===============================================================================
balanced      ``P(i) = p_i / sum_j p_j`` (Off2On balanced replay, OPT's default): offline rows
              enter with ``p = 1``, online rows with the running max priority, and
              :class:`DensityRatioEstimator` rewrites the sampled rows' priorities every update.
symmetric     exactly ``round(f * B)`` rows uniform over offline data and the rest uniform over
              online data (RLPD, ``f = 0.5``), offline rows first.
online        uniform over the online rows only ("Online Replay", the paper's Table 6 ablation).
uniform       uniform over all filled rows (offline and online together).
============  ===============================================================================

Every sampled batch is a flat TensorDict of the stored columns (TorchRL's transition layout, plus
the ``extra_keys`` / ``online_fill`` columns asked for) plus ``"index"`` (row in the storage, what
:meth:`MixedReplayBuffer.update_priority` takes) and ``"is_online"`` (``index >= N``).

**Device and CUDA graphs.** Storage, priorities and the sampler's own ``torch.Generator`` all live
on the training device; sampling and priority updates are tensor ops without host syncs. For a
``torch.compile``/CUDA-graphed step use the pure functions on fixed-shape buffers:
:func:`sumtree_sample` / :func:`sumtree_update_` on :attr:`BalancedSampler.tree` (a float64 tree
over the *full* capacity with static fanout :attr:`BalancedSampler.fanout`, whose leaves past the
filled size are 0, so shapes never change as data arrive and zero-priority rows are never
drawn), :func:`uniform_range_sample` for the uniform
strategies, and :attr:`MixedReplayBuffer.data` (the preallocated ``[capacity]`` TensorDict) to
gather rows. Draw the uniforms ``u`` inside the graph with the default CUDA generator (graph-safe)
or register a private generator with the graph.

**Why a K-ary sum-tree.** Measured with ``benchmarks/bench_replay.py`` on 1.3M entries, batch
256, one proportional draw plus one priority write per step, torch 2.13 CPU, one intra-op thread,
on a 2-core machine shared with other jobs (load ~5, so absolute times are inflated 2-3x and
vary run to run; the ranking was the same in all three runs; no GPU was available):

=============================================  =================  ==========================
structure                                      sample+update      notes
=============================================  =================  ==========================
flat ``torch.multinomial`` float32             1.5 - 3.4 ms       O(N) per draw, float32
flat ``torch.multinomial`` float64             2.5 - 4.6 ms       O(N) per draw
inverse CDF: float64 ``cumsum``+searchsorted   1.5 - 2.9 ms       O(N) per draw (8 ms at 2
                                                                  contended threads)
two-level blocks (1024) + searchsorted         2.0 - 3.6 ms       gathers B x 1024 per draw
binary sum-tree (K = 2, 21 levels)             2.9 - 6.1 ms       ~150 tiny ops per step
**K-ary sum-tree (K = 17, D = 5), chosen**     **0.85 - 2.0 ms**  ~50 ops on [B, K] blocks
=============================================  =================  ==========================

The K-ary tree does O(B K D) work per step, independent of N, in a fixed, small number of ops
(``D = ceil(log_32 capacity)`` levels), which is what ``torch.compile`` and CUDA graphs want; the
flat variants touch all N priorities per draw and, in float32, round away priorities of 1e-3 next
to a total of ~1e6. Updates recompute ``node = sum(children)`` level by level (instead of adding
deltas), so the tree is exactly consistent after millions of updates and with duplicate indices.
On a GPU an eager ``cumsum`` may be competitive (few kernels, ~10 MB of memory traffic); the
benchmark prints the CUDA numbers, including the sum-tree step captured in a CUDA graph.

**TorchRL's ``OfflineToOnlineReplayBuffer``** (present in torchrl 0.14.1) was checked and is not
reused: it keeps two separate buffers (so there is no shared ``"index"`` for priorities and
balanced replay cannot be expressed), concatenates the two sampled batches with ``torch.cat`` so
both must have exactly the same keys (e.g. a Minari/``TensorDictReplayBuffer`` offline batch
carries ``"index"`` while its plain online ``ReplayBuffer`` batch does not, and collector outputs
carry extra keys such as ``"collector"``), silently falls back to offline-only batches while the
online buffer is empty, keeps its online storage on CPU unless given one, and has no
``state_dict``/generator to restore. :class:`MixedReplayBuffer` instead stores one fixed set of
columns (:func:`resolve_storage_layout`: the transition layout plus the columns asked for with
``extra_keys`` / ``online_fill``), selects them from every online batch (a missing one raises
:class:`ReplayKeyError`, unless ``online_fill`` gives online rows a constant for it) and raises
:class:`EmptyOnlineBufferError` when a strategy needs online rows that do not exist yet.

**Priorities and the online share.** Only ``balanced`` has priorities: ``update_priority`` and
``update_tensordict_priority`` (TorchRL's interface: ``"index"`` and the ``priority_key``,
``"td_error"`` by default) raise :class:`PrioritiesNotSupportedError` on the other strategies
instead of doing nothing. ``online_share()`` is the probability that a sampled row is online
(balanced: the online rows' share of the total priority), the quantity to watch under balanced
replay, where it grows as online rows enter at the running max priority and the density ratio
rises on online-like rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import Sampler
from torchrl.data.replay_buffers.storages import Storage

from torchrl_opt.models import mlp

__all__ = [
    "REPLAY_STRATEGIES",
    "ReplayStrategy",
    "TRANSITION_KEYS",
    "OPTIONAL_TRANSITION_KEYS",
    "ReplayCapacityError",
    "EmptyOnlineBufferError",
    "PrioritiesNotSupportedError",
    "ReplayKeyError",
    "sumtree_layout",
    "sumtree_shape",
    "sumtree_build",
    "sumtree_sample",
    "sumtree_update_",
    "uniform_range_sample",
    "OfflineOnlineSampler",
    "BalancedSampler",
    "SymmetricSampler",
    "OnlineSampler",
    "UniformSampler",
    "MixedReplayBuffer",
    "check_replay_inputs",
    "resolve_storage_layout",
    "select_storage_keys",
    "make_replay",
    "density_ratio_loss",
    "density_ratio_priority",
    "DensityRatioEstimator",
]

ReplayStrategy = Literal["balanced", "symmetric", "online", "uniform"]
REPLAY_STRATEGIES: tuple[str, ...] = ("balanced", "symmetric", "online", "uniform")

#: Keys every offline/online transition must carry (TorchRL transition layout); a replay
#: always stores them.
TRANSITION_KEYS: tuple[Any, ...] = (
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
)

#: Layout keys a replay also stores when the offline data have them (online batches must then
#: carry them too, as TorchRL collectors' batches do).
OPTIONAL_TRANSITION_KEYS: tuple[Any, ...] = (("next", "truncated"),)


class ReplayCapacityError(RuntimeError):
    """Raised when online data would exceed the capacity reserved for them (no wrap-around)."""


class EmptyOnlineBufferError(RuntimeError):
    """Raised when a strategy needs online rows (symmetric, online) and none were added yet."""


class PrioritiesNotSupportedError(TypeError):
    """Raised by ``update_priority`` / ``update_tensordict_priority`` (and ``priorities``-like
    accessors) on strategies that do not sample by priority (all but ``"balanced"``)."""


class ReplayKeyError(KeyError):
    """Raised when a transition batch lacks keys of the storage layout."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------
# Pure tensor functions (no host sync, fixed shapes: usable inside compiled / graphed steps)
# --------------------------------------------------------------------------------------
def sumtree_layout(capacity: int, max_fanout: int = 32) -> tuple[int, int]:
    """Shape of a K-ary sum-tree for ``capacity`` rows: ``(fanout K, depth D)``.

    ``D = max(1, ceil(log(capacity) / log(max_fanout)))`` levels below the root and the smallest
    ``K >= 2`` with ``K**D >= capacity`` (1.3M rows -> ``K = 34, D = 4``), so the tree has few
    levels (few kernels per draw) and little padding.
    """
    capacity = int(capacity)
    if capacity < 1 or max_fanout < 2:
        raise ValueError(f"need capacity >= 1 and max_fanout >= 2; got {capacity}, {max_fanout}.")
    depth = max(1, math.ceil(math.log(capacity) / math.log(max_fanout)))
    fanout = max(2, math.ceil(capacity ** (1.0 / depth)))
    while fanout**depth < capacity:
        fanout += 1
    while fanout > 2 and (fanout - 1) ** depth >= capacity:
        fanout -= 1
    return fanout, depth


def sumtree_shape(capacity: int, fanout: int | None = None) -> tuple[int, int]:
    """``(fanout, depth)`` of a sum-tree over ``capacity`` leaves: :func:`sumtree_layout`'s choice,
    or the smallest depth ``D`` with ``fanout**D >= capacity`` for a given ``fanout >= 2``."""
    if fanout is None:
        return sumtree_layout(capacity)
    if fanout < 2:
        raise ValueError(f"fanout must be >= 2, got {fanout}.")
    depth = max(1, math.ceil(math.log(capacity) / math.log(fanout) - 1e-12))
    while fanout**depth < capacity:
        depth += 1
    return fanout, depth


def _tree_levels(numel: int, fanout: int) -> list[tuple[int, int]]:
    """``[(offset, size)]`` of each level (root first) of a flat tree with ``numel`` entries."""
    levels, offset, size = [], 0, 1
    while offset < numel:
        levels.append((offset, size))
        offset += size
        size *= fanout
    if offset != numel or len(levels) < 2:
        raise ValueError(f"a tensor of {numel} entries is not a sum-tree with fanout {fanout}.")
    return levels


def sumtree_build(
    priorities: torch.Tensor, capacity: int | None = None, fanout: int | None = None
) -> torch.Tensor:
    """Build a flat float64 K-ary sum-tree over ``capacity`` leaves (default ``len(priorities)``).

    Layout: the levels are concatenated root first; level ``d`` holds ``K**d`` nodes, node ``i``
    of level ``d`` has children ``K*i ... K*i + K - 1`` of level ``d + 1`` and equals their sum;
    the last level holds the ``K**D >= capacity`` leaf priorities (row ``i`` is leaf ``i``).
    Leaves past ``len(priorities)`` are 0 and never sampled. ``fanout`` defaults to
    :func:`sumtree_layout`'s choice.
    """
    priorities = priorities.reshape(-1)
    capacity = priorities.numel() if capacity is None else int(capacity)
    if capacity < 1 or priorities.numel() > capacity:
        raise ValueError(
            f"capacity must be >= max(1, len(priorities)); got capacity={capacity} for "
            f"{priorities.numel()} priorities."
        )
    fanout, depth = sumtree_shape(capacity, fanout)
    leaves = torch.zeros(fanout**depth, dtype=torch.float64, device=priorities.device)
    leaves[: priorities.numel()] = priorities.to(torch.float64)
    levels = [leaves]
    for _ in range(depth):
        levels.append(levels[-1].view(-1, fanout).sum(-1))
    return torch.cat(levels[::-1])


def sumtree_sample(tree: torch.Tensor, u: torch.Tensor, fanout: int) -> torch.Tensor:
    """Proportional draw: row ``i`` with probability ``p_i / sum_j p_j``, by descending the tree.

    ``u`` holds uniforms in ``[0, 1)`` (one per draw) and ``v = u * root``. At each level, with
    ``c`` the inclusive cumulative sums of the current node's ``K`` children, the walk enters
    child ``j = min(#{c <= v}, #{c < c[-1]})`` (the first child whose cumulative mass exceeds
    ``v``, capped at the last child with positive mass) and sets ``v -= c[j - 1]``. Zero-mass
    children are never entered, even under float rounding, so rows past the filled size are
    never drawn. Returns int64 row indices shaped like ``u``. Needs a positive root. ``D``
    levels of a few batched ops on ``[B, K]``; no host sync.
    """
    levels = _tree_levels(tree.shape[0], fanout)
    v = u.to(torch.float64) * tree[0]
    node = torch.zeros(u.shape, dtype=torch.long, device=tree.device)
    for offset, size in levels[1:]:
        children = tree.narrow(0, offset, size).view(-1, fanout)[node]
        cum = children.cumsum(-1)
        j = torch.minimum((cum <= v.unsqueeze(-1)).sum(-1), (cum < cum[..., -1:]).sum(-1))
        exclusive = torch.nn.functional.pad(cum[..., :-1], (1, 0))
        v = v - exclusive.gather(-1, j.unsqueeze(-1)).squeeze(-1)
        node = node * fanout + j
    return node


def sumtree_update_(
    tree: torch.Tensor, index: torch.Tensor, priority: torch.Tensor, fanout: int
) -> None:
    """Set leaf priorities ``p[index] = priority`` in place and recompute their ancestors.

    Each level recomputes ``node = sum(children)`` for the touched nodes, so the tree stays
    exactly consistent (no accumulated drift); with duplicate indices one of their priorities
    is kept (on CPU the last). No host sync.
    """
    levels = _tree_levels(tree.shape[0], fanout)
    node = index.reshape(-1)
    offset, size = levels[-1]
    tree.narrow(0, offset, size)[node] = priority.reshape(-1).to(torch.float64).expand(node.shape)
    for (offset, size), (child_offset, child_size) in zip(
        levels[-2::-1], levels[:0:-1], strict=True
    ):
        node = node // fanout
        children = tree.narrow(0, child_offset, child_size).view(-1, fanout)
        tree.narrow(0, offset, size)[node] = children[node].sum(-1)


def uniform_range_sample(
    start: int | torch.Tensor, count: int | torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Uniform rows in ``[start, start + count)``: ``start + min(floor(u * count), count - 1)``.

    ``count >= 1`` may be a device tensor (e.g. the number of online rows) so that no host sync
    is needed; ``u`` holds uniforms in ``[0, 1)``. Returns int64 indices shaped like ``u``.
    """
    scaled = (u.to(torch.float64) * count).long()
    if isinstance(count, torch.Tensor):
        scaled = torch.minimum(scaled, (count - 1).long())
    else:
        scaled = scaled.clamp_max(int(count) - 1)
    return scaled + start


# --------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------
def _new_generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    generator.manual_seed(int(seed))
    return generator


class OfflineOnlineSampler(Sampler):
    """Base of the mixing samplers: a storage with ``offline_size`` offline rows then online rows.

    Holds its own ``torch.Generator`` on ``device`` (seeded with ``seed``), saved by
    :meth:`state_dict` / :meth:`dumps`, so draws are reproducible and restorable. The sampler
    info carries ``"is_online" = index >= offline_size``.
    """

    strategy: str = ""

    def __init__(
        self,
        offline_size: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        seed: int | None = None,
    ) -> None:
        if offline_size < 0 or capacity < max(offline_size, 1):
            raise ValueError(
                f"need 0 <= offline_size <= capacity and capacity >= 1; got "
                f"offline_size={offline_size}, capacity={capacity}."
            )
        self.offline_size = int(offline_size)
        self.capacity = int(capacity)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._generator = _new_generator(self.device, seed)

    @property
    def generator(self) -> torch.Generator:
        """The sampler's private random generator (on :attr:`device`)."""
        return self._generator

    def _uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self._generator, device=self.device, dtype=torch.float64)

    def _num_online(self, storage: Storage) -> int:
        return max(len(storage) - self.offline_size, 0)

    def _info(self, index: torch.Tensor) -> dict:
        return {"is_online": index >= self.offline_size}

    def split_index(
        self, n_offline: int, n_online: int, storage: Storage
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_offline`` rows uniform over offline data and ``n_online`` uniform over online data.

        Used for the density-ratio estimator's 256 + 256 batches and by :class:`SymmetricSampler`.
        """
        num_online = self._num_online(storage)
        if n_online > 0 and num_online == 0:
            raise EmptyOnlineBufferError(
                f"strategy {self.strategy!r} needs online transitions; extend the buffer first."
            )
        if n_offline > 0 and self.offline_size == 0:
            raise ValueError("this sampler has no offline rows (offline_size=0) to sample from.")
        off = uniform_range_sample(0, self.offline_size, self._uniform(n_offline))
        on = uniform_range_sample(self.offline_size, num_online, self._uniform(n_online))
        return off, on

    def update_priority(
        self,
        index: int | torch.Tensor,
        priority: float | torch.Tensor,
        *,
        storage: Storage | None = None,
    ) -> None:
        raise PrioritiesNotSupportedError(
            f"the {self.strategy!r} strategy samples uniformly and has no priorities; only "
            "'balanced' accepts update_priority."
        )

    # -- checkpointing ------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "offline_size": self.offline_size,
            "capacity": self.capacity,
            "generator_state": self._generator.get_state().clone(),
            **self._extra_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("strategy", "offline_size", "capacity"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"cannot load a sampler state with {key}={state_dict[key]!r} into one with "
                    f"{key}={getattr(self, key)!r}."
                )
        self._generator.set_state(state_dict["generator_state"].cpu())
        self._load_extra_state(state_dict)

    def dumps(self, path: str | Path) -> None:
        path = Path(path).absolute()
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "sampler_state.pt")

    def loads(self, path: str | Path) -> None:
        state = torch.load(Path(path).absolute() / "sampler_state.pt", map_location="cpu")
        self.load_state_dict(state)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_generator"] = self._generator.get_state().clone()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator_state = state.pop("_generator")
        self.__dict__.update(state)
        self._generator = torch.Generator(device=self.device)
        self._generator.set_state(generator_state)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(offline_size={self.offline_size}, capacity={self.capacity}, "
            f"device={self.device})"
        )


class BalancedSampler(OfflineOnlineSampler):
    """Off2On balanced replay: proportional sampling ``P(i) = p_i / sum_j p_j`` over one storage.

    Priorities live in a float64 sum-tree on ``device`` (:attr:`tree`, full capacity, zeros past
    the filled size). Offline rows (``index < offline_size``) enter with ``offline_priority``
    (1.0), online rows with the running max priority ``max(1, every priority ever set)`` (Off2On's
    ``SegmentTree.max``); :meth:`update_priority` sets new priorities (the density-ratio rule of
    :func:`density_ratio_priority`) and raises the running max. With ``check_priorities=True``
    (default) updates are validated (finite, > 0, rows filled), which costs one host sync; turn
    it off inside a device-bound loop.
    """

    strategy = "balanced"

    def __init__(
        self,
        offline_size: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        seed: int | None = None,
        offline_priority: float = 1.0,
        check_priorities: bool = True,
        max_fanout: int = 32,
    ) -> None:
        super().__init__(offline_size, capacity, device=device, seed=seed)
        self.fanout, self.depth = sumtree_layout(self.capacity, max_fanout)
        if not (offline_priority > 0 and math.isfinite(offline_priority)):
            raise ValueError(f"offline_priority must be finite and > 0, got {offline_priority}.")
        self.offline_priority = float(offline_priority)
        self.check_priorities = check_priorities
        self._empty()

    def _empty(self) -> None:
        self.tree = sumtree_build(
            torch.zeros(0, dtype=torch.float64, device=self.device), self.capacity, self.fanout
        )
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)

    @property
    def priorities(self) -> torch.Tensor:
        """The leaf priorities ``[capacity]`` (a view into :attr:`tree`; 0 for unfilled rows)."""
        leaves = self.fanout**self.depth
        return self.tree[self.tree.shape[0] - leaves :][: self.capacity]

    def online_share(self) -> torch.Tensor:
        """Sampling mass on online rows: ``sum_{i >= N} p_i / sum_j p_j`` (0-dim float64 tensor on
        :attr:`device`, no host sync; 0 while the tree is empty).

        It is the probability that a sampled row is online. Under balanced replay it grows during
        fine-tuning: online rows enter at the running max priority and the density ratio
        ``w(s, a)`` (hence the priority) rises on online-like rows.
        """
        leaves = self.priorities
        online = leaves[self.offline_size :].sum()
        total = self.tree[0]
        return online / torch.where(total > 0, total, torch.ones_like(total))

    def add(self, index: int) -> None:
        self.extend(torch.as_tensor([index]))

    def extend(self, index: torch.Tensor) -> None:
        """Give newly written rows their entry priority: 1 if offline, else the running max."""
        index = torch.as_tensor(index, device=self.device).reshape(-1).long()
        priority = torch.where(
            index < self.offline_size,
            torch.full((), self.offline_priority, dtype=torch.float64, device=self.device),
            self.max_priority,
        )
        sumtree_update_(self.tree, index, priority, self.fanout)

    def _sampleable_count(self, storage: Storage, batch_size: int) -> int:
        return len(storage)

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        if len(storage) == 0:
            raise RuntimeError("cannot sample from an empty storage.")
        index = self.sample_index(batch_size)
        return index, self._info(index)

    def sample_index(self, batch_size: int) -> torch.Tensor:
        """Draw ``batch_size`` rows proportionally to priority (no host sync)."""
        return sumtree_sample(self.tree, self._uniform(batch_size), self.fanout)

    @torch.no_grad()
    def update_priority(
        self,
        index: int | torch.Tensor,
        priority: float | torch.Tensor,
        *,
        storage: Storage | None = None,
    ) -> None:
        """Set ``p[index] = priority`` and ``max_priority = max(max_priority, max(priority))``."""
        index = torch.as_tensor(index, device=self.device).reshape(-1).long()
        priority = torch.as_tensor(priority, device=self.device, dtype=torch.float64).reshape(-1)
        if priority.numel() == 1:
            priority = priority.expand(index.shape)
        if priority.shape != index.shape:
            raise ValueError(f"got {index.numel()} indices but {priority.numel()} priorities.")
        if index.numel() == 0:
            return
        if self.check_priorities:
            filled = len(storage) if storage is not None else self.capacity
            bad_index = (index < 0) | (index >= filled)
            bad_priority = ~torch.isfinite(priority) | (priority <= 0)
            flags = torch.stack([bad_index.any(), bad_priority.any()]).tolist()
            if flags[0]:
                raise IndexError(f"priority indices must lie in [0, {filled}).")
            if flags[1]:
                raise ValueError("priorities must be finite and > 0.")
        sumtree_update_(self.tree, index, priority, self.fanout)
        self.max_priority = torch.maximum(self.max_priority, priority.max())

    def _extra_state(self) -> dict[str, Any]:
        return {"tree": self.tree.clone(), "max_priority": self.max_priority.clone()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if state["tree"].shape != self.tree.shape:
            raise ValueError(
                f"sum-tree shape {tuple(state['tree'].shape)} does not match "
                f"{tuple(self.tree.shape)}."
            )
        self.tree.copy_(state["tree"])
        self.max_priority = state["max_priority"].to(self.device, torch.float64).clone()


class SymmetricSampler(OfflineOnlineSampler):
    """RLPD symmetric sampling: exactly ``round(f * B)`` offline rows then ``B - round(f * B)``
    online rows per batch, each part uniform (``f = offline_fraction``, default 0.5)."""

    strategy = "symmetric"

    def __init__(
        self,
        offline_size: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        seed: int | None = None,
        offline_fraction: float = 0.5,
    ) -> None:
        super().__init__(offline_size, capacity, device=device, seed=seed)
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}.")
        self.offline_fraction = float(offline_fraction)

    def _sampleable_count(self, storage: Storage, batch_size: int) -> int:
        return self._num_online(storage)

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        n_offline = round(self.offline_fraction * batch_size)
        off, on = self.split_index(n_offline, batch_size - n_offline, storage)
        index = torch.cat([off, on])
        return index, self._info(index)

    def _empty(self) -> None:
        return


class OnlineSampler(OfflineOnlineSampler):
    """Online Replay (the paper's Table 6 ablation): uniform over the online rows only."""

    strategy = "online"

    def _sampleable_count(self, storage: Storage, batch_size: int) -> int:
        return self._num_online(storage)

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        _, index = self.split_index(0, batch_size, storage)
        return index, self._info(index)

    def _empty(self) -> None:
        return


class UniformSampler(OfflineOnlineSampler):
    """Uniform over every filled row, offline and online alike."""

    strategy = "uniform"

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        if len(storage) == 0:
            raise RuntimeError("cannot sample from an empty storage.")
        index = uniform_range_sample(0, len(storage), self._uniform(batch_size))
        return index, self._info(index)

    def _empty(self) -> None:
        return


_SAMPLERS: dict[str, type[OfflineOnlineSampler]] = {
    "balanced": BalancedSampler,
    "symmetric": SymmetricSampler,
    "online": OnlineSampler,
    "uniform": UniformSampler,
}


# --------------------------------------------------------------------------------------
# Buffer and factory
# --------------------------------------------------------------------------------------
def check_replay_inputs(
    strategy: str, offline: TensorDictBase, online_capacity: int, batch_size: int
) -> None:
    """Validate what a mixed replay is built from (shared by the single and seed-batched ones).

    Raises:
        ValueError: unknown strategy, empty or non-flat offline data, negative capacity or batch
            size below 1.
        TypeError: offline data that are not a TensorDict.
        ReplayKeyError: offline data without the transition keys.
    """
    if strategy not in REPLAY_STRATEGIES:
        raise ValueError(
            f"unknown replay strategy {strategy!r}; choose one of {REPLAY_STRATEGIES}."
        )
    if not isinstance(offline, TensorDictBase):
        raise TypeError(f"offline data must be a TensorDict, got {type(offline).__name__}.")
    if offline.batch_dims != 1 or offline.shape[0] == 0:
        raise ValueError(
            "offline data must be a non-empty flat TensorDict [N]; got batch size "
            f"{tuple(offline.shape)}."
        )
    if online_capacity < 0 or batch_size < 1:
        raise ValueError(
            "need online_capacity >= 0 and batch_size >= 1; got "
            f"{online_capacity}, {batch_size}."
        )
    missing = [k for k in TRANSITION_KEYS if k not in offline.keys(True, True)]
    if missing:
        raise ReplayKeyError(f"offline data lack transition keys {missing}.")


def resolve_storage_layout(
    offline: TensorDictBase,
    extra_keys: Sequence[NestedKey] = (),
    online_fill: Mapping[NestedKey, Any] | None = None,
    device: torch.device | str | None = None,
) -> tuple[list[NestedKey], dict[NestedKey, torch.Tensor]]:
    """The columns a replay over ``offline`` stores, and the values online rows get for some.

    Stored keys, in order and without duplicates: :data:`TRANSITION_KEYS`, the
    :data:`OPTIONAL_TRANSITION_KEYS` the offline data have (``("next", "truncated")``),
    ``extra_keys``, then the keys of ``online_fill``. Every other offline column (e.g. the
    ``"episode"`` ids of :func:`~torchrl_opt.data.datasets.load_offline_data`) is not stored, so
    online batches (e.g. a ``torchrl.collectors.Collector``'s) need not carry it.

    ``online_fill[key]`` is the constant stored for online rows whose batch lacks ``key`` (a
    batch that has the column keeps its own values), e.g. ``{"episode": -1}`` or, for Cal-QL's
    Monte Carlo returns, ``{"mc_return": float("-inf")}`` (``max(Q, -inf) = Q``: no bound on
    online rows). It is cast to the column's dtype and broadcast to its feature shape
    ``offline[key].shape[1:]``.

    Returns:
        ``(keys, fill)``: the stored keys and the fill tensors (feature-shaped, on ``device``).

    Raises:
        ReplayKeyError: an ``extra_keys`` / ``online_fill`` key that the offline data lack.
        ValueError: a fill value that does not broadcast to the column's feature shape or is not
            representable in its dtype (e.g. ``-inf`` or ``0.5`` for an int64 column).
    """
    offline_keys = [unravel_key(k) for k in offline.keys(True, True)]
    fill_in = {unravel_key(k): v for k, v in (online_fill or {}).items()}
    wanted = [unravel_key(k) for k in extra_keys] + list(fill_in)
    unknown = [k for k in wanted if k not in offline_keys]
    if unknown:
        raise ReplayKeyError(
            f"extra_keys/online_fill name {unknown}, which the offline data lack; the offline "
            f"data have {offline_keys}."
        )
    keys: list[NestedKey] = list(TRANSITION_KEYS)
    keys += [k for k in OPTIONAL_TRANSITION_KEYS if k in offline_keys]
    for key in wanted:
        if key not in keys:
            keys.append(key)
    if device is None:
        device = offline.device if offline.device is not None else torch.device("cpu")
    fill: dict[NestedKey, torch.Tensor] = {}
    for key, value in fill_in.items():
        column = offline.get(key)
        raw = torch.as_tensor(value, device=column.device)
        cast = raw.to(column.dtype)
        same = cast.to(raw.dtype) == raw
        if raw.is_floating_point():
            same = same | (torch.isnan(raw) & torch.isnan(cast.to(raw.dtype)))
        if not bool(same.all()):
            raise ValueError(
                f"online_fill[{key!r}] = {value!r} is not representable in the column's dtype "
                f"{column.dtype}; pick a value of that dtype (e.g. -1 for integer ids)."
            )
        try:
            fill[key] = torch.broadcast_to(cast, column.shape[1:]).to(device)
        except RuntimeError as err:
            raise ValueError(
                f"online_fill[{key!r}] has shape {tuple(cast.shape)}, which does not broadcast to "
                f"the column's feature shape {tuple(column.shape[1:])}."
            ) from err
    return keys, fill


def select_storage_keys(
    data: TensorDictBase,
    keys: Sequence[NestedKey],
    fill: Mapping[NestedKey, torch.Tensor],
    device: torch.device | str | None = None,
) -> TensorDictBase:
    """``data`` restricted to the stored ``keys`` (moved to ``device`` when given), with
    ``fill[key]`` expanded to the batch size for the fill keys it lacks; extra keys
    (``"collector"``, the root ``"done"``, ...) are dropped.

    Raises:
        ReplayKeyError: ``data`` lacks stored keys that have no fill value (the message lists
            them and the fix).
    """
    present = {unravel_key(k) for k in data.keys(True, True)}
    missing = [k for k in keys if k not in present and k not in fill]
    if missing:
        raise ReplayKeyError(
            f"online transitions lack storage keys {missing}. The replay stores {list(keys)}: add "
            "the missing columns to the batch or, for a column only the offline data have, build "
            "the replay with online_fill={key: value} (a constant for online rows) or without "
            "that column in extra_keys."
        )
    out = data.select(*[k for k in keys if k in present])
    if device is not None:
        out = out.to(device)
    for key, value in fill.items():
        if key not in present:
            if out.device is not None:
                value = value.to(out.device)
            out.set(key, value.expand(*data.batch_size, *value.shape))
    return out


class MixedReplayBuffer(TensorDictReplayBuffer):
    """A ``TensorDictReplayBuffer`` over offline data followed by online data, one strategy.

    Build it with :func:`make_replay`. Offline rows are written once at construction; online
    transitions are added with :meth:`extend` (any batch shape, flattened; exceeding
    ``offline_size + online_capacity`` raises :class:`ReplayCapacityError`). :meth:`sample`
    returns a flat ``[batch_size]`` batch with ``"index"`` and ``"is_online"``.

    **Stored columns** (:attr:`storage_keys`, see :func:`resolve_storage_layout`): the transition
    layout (:data:`TRANSITION_KEYS`, plus ``("next", "truncated")`` when the offline data have it),
    then ``extra_keys`` and the keys of ``online_fill``. Other offline columns (the ``"episode"``
    ids of :func:`~torchrl_opt.data.datasets.load_offline_data`) are not stored, so what
    ``load_offline_data`` returns accepts ``torchrl.collectors.Collector`` batches as they come:
    their extra keys (``"collector"``, the root ``"done"``/``"terminated"``/``"truncated"``) are
    dropped, stored keys they lack take their ``online_fill`` value, any other missing stored key
    raises :class:`ReplayKeyError`.

    **Priorities** (``"balanced"`` only; the other strategies raise
    :class:`PrioritiesNotSupportedError`): :meth:`update_priority` takes ``(index, priority)``;
    :meth:`update_tensordict_priority` reads them from a sample, ``index`` from ``"index"`` and the
    priority from :attr:`priority_key` (TorchRL's ``"td_error"`` by default). The value is the new
    priority itself (for balanced replay, :meth:`DensityRatioEstimator.loss_and_priorities`'s).
    :meth:`online_share` is the sampling mass on online rows.

    ``state_dict``/``load_state_dict`` and ``dumps``/``loads`` (inherited from TorchRL) cover
    storage, writer cursor and sampler (priorities, running max, generator state), so a restored
    buffer continues identically. Storage dtypes follow the offline data (cast e.g. Minari's
    float64 observations to float32 before building the buffer); online batches are cast on write.
    """

    def __init__(
        self,
        offline: TensorDictBase,
        *,
        strategy: ReplayStrategy,
        online_capacity: int,
        batch_size: int,
        device: torch.device | str | None = None,
        seed: int | None = None,
        offline_fraction: float = 0.5,
        check_priorities: bool = True,
        extra_keys: Sequence[NestedKey] = (),
        online_fill: Mapping[NestedKey, Any] | None = None,
        priority_key: NestedKey = "td_error",
    ) -> None:
        check_replay_inputs(strategy, offline, online_capacity, batch_size)
        if device is None:
            device = offline.device if offline.device is not None else torch.device("cpu")
        device = torch.device(device)
        keys, fill = resolve_storage_layout(offline, extra_keys, online_fill, device)
        offline_size = offline.shape[0]
        capacity = offline_size + int(online_capacity)
        kwargs: dict[str, Any] = {"device": device, "seed": seed}
        if strategy == "symmetric":
            kwargs["offline_fraction"] = offline_fraction
        elif strategy == "balanced":
            kwargs["check_priorities"] = check_priorities
        sampler = _SAMPLERS[strategy](offline_size, capacity, **kwargs)
        super().__init__(
            storage=LazyTensorStorage(capacity, device=device),
            sampler=sampler,
            batch_size=batch_size,
            priority_key=priority_key,
        )
        self.strategy = strategy
        self.offline_size = offline_size
        self.online_capacity = int(online_capacity)
        self.capacity = capacity
        self.device = device
        self.offline_fraction = float(offline_fraction)
        self._keys = keys
        self._online_fill = fill
        super().extend(offline.select(*keys).to(device), update_priority=False)

    @property
    def num_online(self) -> int:
        """Number of online rows added so far."""
        return len(self) - self.offline_size

    @property
    def storage_keys(self) -> list[NestedKey]:
        """The columns every row holds (see :func:`resolve_storage_layout`)."""
        return list(self._keys)

    @property
    def online_fill(self) -> dict[NestedKey, torch.Tensor]:
        """The constants stored for online rows whose batches lack these columns."""
        return dict(self._online_fill)

    @property
    def data(self) -> TensorDictBase:
        """The preallocated ``[capacity]`` storage TensorDict (rows past ``len(self)`` unfilled)."""
        return self._storage._storage

    def extend(
        self, tensordicts: TensorDictBase, *, update_priority: bool | None = None
    ) -> torch.Tensor:
        """Append online transitions after the offline rows; returns their storage indices.

        ``tensordicts`` may have any batch shape (flattened). Only :attr:`storage_keys` are
        written (fill values for the :attr:`online_fill` columns a batch lacks); new rows get their
        entry priority from the sampler (balanced: the running max), never from the batch, so
        ``update_priority`` is ignored.
        """
        if not isinstance(tensordicts, TensorDictBase):
            raise TypeError(f"expected a TensorDict, got {type(tensordicts).__name__}.")
        data = tensordicts.reshape(-1) if tensordicts.batch_dims != 1 else tensordicts
        rows = select_storage_keys(data, self._keys, self._online_fill, self.device)
        if len(self) + data.shape[0] > self.capacity:
            raise ReplayCapacityError(
                f"adding {data.shape[0]} online transitions to {self.num_online} exceeds "
                f"online_capacity={self.online_capacity}; size the buffer for the whole run "
                "(offline rows are never overwritten)."
            )
        if data.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=self.device)
        return super().extend(rows, update_priority=False)

    def add(self, data: TensorDictBase) -> torch.Tensor:
        """Append one online transition (batch size ``[]``) like :meth:`extend`; returns its index
        as a 0-dim tensor."""
        if not isinstance(data, TensorDictBase) or data.batch_dims != 0:
            raise TypeError(
                "add takes one transition: a TensorDict with batch size []; use extend for "
                f"batches (got {type(data).__name__} of batch size {getattr(data, 'batch_size', '?')})."
            )
        return self.extend(data.unsqueeze(0))[0]

    def _require_priorities(self, what: str) -> None:
        if self.strategy != "balanced":
            raise PrioritiesNotSupportedError(
                f"{what}: the {self.strategy!r} strategy samples uniformly and has no priorities; "
                "only 'balanced' replay has priorities (make_replay('balanced', ...))."
            )

    def update_tensordict_priority(self, data: TensorDictBase) -> None:
        """Set the priorities of a sample's rows: ``p[data["index"]] = data[priority_key]``.

        Equivalent to ``update_priority(data["index"], data[self.priority_key])``; a priority with
        trailing dims (e.g. ``[B, 1]`` or one value per critic ``[B, E]``) is reduced with ``max``
        over them, TorchRL's default reduction. Balanced only.

        Raises:
            PrioritiesNotSupportedError: the strategy is not ``"balanced"``.
            ReplayKeyError: ``data`` lacks ``"index"`` or the priority key.
            ValueError: the priority's leading dims do not match the index's shape.
        """
        self._require_priorities("update_tensordict_priority")
        index, priority = _index_and_priority(data, self.priority_key)
        self.update_priority(index, priority)

    def update_priority(
        self, index: int | torch.Tensor, priority: float | torch.Tensor
    ) -> None:
        """Set ``p[index] = priority`` and raise the running max (balanced only; see
        :meth:`BalancedSampler.update_priority`)."""
        self._require_priorities("update_priority")
        super().update_priority(index, priority)

    def online_share(self) -> torch.Tensor:
        """Probability that a sampled row is online, a 0-dim float64 tensor on :attr:`device`.

        ``balanced``: ``sum_{i >= N} p_i / sum_j p_j`` (:meth:`BalancedSampler.online_share`, no
        host sync); by construction for the others: ``symmetric`` ``(B - round(f B)) / B``,
        ``online`` 1, ``uniform`` ``num_online / len(self)``; 0 for every strategy while no online
        row exists (``symmetric``/``online`` sampling then raises
        :class:`EmptyOnlineBufferError`).
        """
        if self.strategy == "balanced":
            return self._sampler.online_share()
        return torch.full(
            (), _constant_online_share(self, self.batch_size), dtype=torch.float64,
            device=self.device,
        )

    def sample_offline_online(self, batch_size: int) -> tuple[TensorDictBase, TensorDictBase]:
        """``batch_size`` rows uniform over offline data and ``batch_size`` over online data.

        The density-ratio estimator's training batches (Off2On: 256 + 256), drawn with the
        sampler's generator; each carries ``"index"``.
        """
        off, on = self._sampler.split_index(batch_size, batch_size, self._storage)
        out = []
        for index in (off, on):
            td = self._storage.get(index)
            td.set("index", index)
            out.append(td)
        return out[0], out[1]


def _index_and_priority(
    data: TensorDictBase, priority_key: NestedKey
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(data["index"], data[priority_key])``, the priority max-reduced to the index's shape."""
    if not isinstance(data, TensorDictBase):
        raise TypeError(f"expected a TensorDict, got {type(data).__name__}.")
    index = data.get("index", None)
    if index is None:
        raise ReplayKeyError(
            "update_tensordict_priority needs the sampled rows' 'index'; pass a batch returned by "
            "sample() (or set 'index' yourself)."
        )
    priority = data.get(priority_key, None)
    if priority is None:
        raise ReplayKeyError(
            f"the batch has no priority key {priority_key!r}; write the new priorities there "
            f"(td.set({priority_key!r}, priority)) or build the replay with priority_key=<your key>."
        )
    priority = torch.as_tensor(priority)
    if tuple(priority.shape[: index.ndim]) != tuple(index.shape):
        raise ValueError(
            f"priority {priority_key!r} of shape {tuple(priority.shape)} does not match the index "
            f"shape {tuple(index.shape)} (expected {tuple(index.shape)} plus optional trailing dims)."
        )
    if priority.ndim > index.ndim:
        priority = priority.reshape(*index.shape, -1).amax(-1)
    return index, priority


def _constant_online_share(replay: Any, batch_size: int) -> float:
    """Online share of the non-prioritised strategies, by construction (0 without online rows)."""
    num_online, total = replay.num_online, replay.offline_size + replay.num_online
    if num_online == 0:
        return 0.0
    if replay.strategy == "symmetric":
        return (batch_size - round(replay.offline_fraction * batch_size)) / batch_size
    if replay.strategy == "online":
        return 1.0
    return num_online / total


def make_replay(
    strategy: ReplayStrategy,
    offline: TensorDictBase,
    online_capacity: int,
    batch_size: int,
    device: torch.device | str | None = None,
    seed: int | None = None,
    *,
    offline_fraction: float = 0.5,
    check_priorities: bool = True,
    extra_keys: Sequence[NestedKey] = (),
    online_fill: Mapping[NestedKey, Any] | None = None,
    priority_key: NestedKey = "td_error",
) -> MixedReplayBuffer:
    """Build the replay buffer of an online phase by strategy name.

    ``strategy`` is one of ``"balanced"`` (OPT default, Off2On), ``"symmetric"`` (RLPD,
    ``offline_fraction`` of each batch offline), ``"online"`` (online rows only) or
    ``"uniform"`` (all rows); capacity is ``len(offline) + online_capacity``. The buffer stores
    the transition layout plus ``extra_keys`` and the ``online_fill`` columns (constants for online
    rows that lack them), see :func:`resolve_storage_layout`; ``priority_key`` is where
    :meth:`MixedReplayBuffer.update_tensordict_priority` reads priorities.
    """
    return MixedReplayBuffer(
        offline,
        strategy=strategy,
        online_capacity=online_capacity,
        batch_size=batch_size,
        device=device,
        seed=seed,
        offline_fraction=offline_fraction,
        check_priorities=check_priorities,
        extra_keys=extra_keys,
        online_fill=online_fill,
        priority_key=priority_key,
    )


# --------------------------------------------------------------------------------------
# Density-ratio estimator (Off2On)
# --------------------------------------------------------------------------------------
def density_ratio_loss(w_offline: torch.Tensor, w_online: torch.Tensor) -> torch.Tensor:
    """JS-style f-divergence loss of the density-ratio network (Off2On).

    ``L_w = mean_off[-log(2 / (w + 1) + 1e-10)] - mean_on[log(2 w / (w + 1) + 1e-10)]``;
    its minimiser is ``w(s, a) = d_on(s, a) / d_off(s, a)``.
    """
    offline_term = -torch.log(2.0 / (w_offline + 1.0) + 1e-10)
    online_term = torch.log(2.0 * w_online / (w_online + 1.0) + 1e-10)
    return offline_term.mean() - online_term.mean()


def density_ratio_priority(
    w: torch.Tensor,
    w_offline: torch.Tensor,
    temperature: float = 5.0,
    min_priority: float = 1e-3,
    max_priority: float = 1e3,
    eps: float = 1e-10,
) -> torch.Tensor:
    """Balanced-replay priority ``clamp(w^(1/T) / (mean_off(w^(1/T)) + eps), min, max)``.

    ``w`` are the ratios of the sampled rows, ``w_offline`` those of the estimator's offline
    batch (the normaliser); ``T = 5`` and ``[1e-3, 1e3]`` as in Off2On, whose code adds
    ``eps = 1e-10`` to the denominator.
    """
    inv_t = 1.0 / temperature
    normaliser = w_offline.pow(inv_t).mean() + eps
    return (w.pow(inv_t) / normaliser).clamp(min_priority, max_priority)


class DensityRatioEstimator(nn.Module):
    """Off2On's density-ratio network ``w(s, a) = ReLU(MLP([s, a])) >= 0``.

    A 256-256 ReLU MLP on ``concat(observation, action)``; its last layer starts with weights
    uniform in ``[-3e-3, 3e-3]`` and bias 1.0 (Off2On: rlkit ``Mlp`` with ``init_w = 3e-3`` and
    ``last_fc.bias.fill_(1.0)``), so ``w`` starts near 1 for every row. Hidden layers use
    PyTorch's default init (Off2On: rlkit's ``fanin_init`` and zero biases). The ReLU on the
    output is Off2On's ``w_activation``.

    Per update the pipeline calls :meth:`loss_and_priorities` with the estimator's offline and
    online batches (``MixedReplayBuffer.sample_offline_online(256)``) and the RL batch, steps its
    own optimiser on the loss, and writes the priorities back with
    ``replay.update_priority(sample["index"], priority)``.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        *,
        temperature: float = 5.0,
        min_priority: float = 1e-3,
        max_priority: float = 1e3,
        observation_key: Any = "observation",
        action_key: Any = "action",
    ) -> None:
        super().__init__()
        if temperature <= 0 or not 0 < min_priority <= max_priority:
            raise ValueError(
                "need temperature > 0 and 0 < min_priority <= max_priority; got "
                f"{temperature}, {min_priority}, {max_priority}."
            )
        self.net = mlp(obs_dim + action_dim, 1, hidden)
        last = self.net[-1]
        nn.init.uniform_(last.weight, -3e-3, 3e-3)
        nn.init.constant_(last.bias, 1.0)
        self.temperature = float(temperature)
        self.min_priority = float(min_priority)
        self.max_priority = float(max_priority)
        self.observation_key = observation_key
        self.action_key = action_key

    def forward(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``w(s, a) = ReLU(MLP([s, a]))``, shape ``(*batch, 1)``."""
        return torch.relu(self.net(torch.cat([observation, action], dim=-1)))

    def ratio(self, td: TensorDictBase) -> torch.Tensor:
        """``w`` for every row of a transition batch, shape ``[B]``."""
        return self(td.get(self.observation_key), td.get(self.action_key)).squeeze(-1)

    def loss_and_priorities(
        self,
        offline: TensorDictBase,
        online: TensorDictBase,
        sample: TensorDictBase,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(L_w, priority)``: the differentiable loss and new priorities of ``sample``.

        ``L_w = density_ratio_loss(w(offline), w(online))`` and
        ``priority = density_ratio_priority(w(sample), w(offline))`` (detached), both computed
        with the current network before the optimiser step, as Off2On does.
        """
        w_offline = self.ratio(offline)
        w_online = self.ratio(online)
        loss = density_ratio_loss(w_offline, w_online)
        with torch.no_grad():
            priority = density_ratio_priority(
                self.ratio(sample),
                w_offline.detach(),
                self.temperature,
                self.min_priority,
                self.max_priority,
            )
        return loss, priority
