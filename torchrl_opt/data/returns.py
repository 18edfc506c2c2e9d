"""Monte Carlo returns of the episodes of a flat transition dataset (Cal-QL's calibration bound).

Cal-QL (Nakamoto et al. 2023) lower-bounds the Q-values of policy actions in the CQL regulariser by
the Monte Carlo return-to-go of the state's episode in the dataset. This module computes that
return for every row of a flat transition TensorDict (TorchRL layout: ``("next", "reward")``,
``("next", "done")``), episode by episode::

    G_t = r_t + gamma * (1 - end_t) * G_{t+1},        end_t = done_t, and the last row ends

i.e. the discounted sum of the rewards from row ``t`` to the last row of its episode. With Cal-QL's
sparse-reward rule (``failure_reward`` set), an episode whose every reward equals
``failure_reward`` (a failed AntMaze/Adroit-binary episode) gets ``failure_reward / (1 - gamma)`` on
every row instead: the return of an infinite sequence of failure rewards, which the truncated sum
would over-estimate when ``failure_reward < 0``.

**Truncated episodes.** An episode cut by a time limit (``done`` without ``terminated``) is summed
up to the cut and nothing after it (bootstrap 0), exactly as Cal-QL's and WSRL's code compute it.
The result is then the return of the observed prefix, not of the policy's continuation: with
non-negative rewards it under-estimates the true return (the bound stays a valid lower bound, only
looser near the cut); with negative per-step rewards it over-estimates it, which Cal-QL's
failure rule corrects for failed episodes only. Rows are used as given: unlike D4RL's
``qlearning_dataset`` (which Cal-QL calls), no timeout transition is dropped here.

The computation is vectorised: a reverse *parallel* scan of the affine recurrence
``G_t = b_t + a_t G_{t+1}`` (``a_t = gamma (1 - end_t)``, ``b_t = r_t``) composes neighbouring pairs
``(a, b) o (a', b') = (a a', b + a b')`` at doubling offsets, ``ceil(log2 N)`` vectorised steps in
float64 with no division (no underflow for long episodes) and no Python loop over rows.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey

__all__ = ["discounted_return_to_go", "monte_carlo_returns"]


def discounted_return_to_go(
    reward: torch.Tensor, end: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``G_t = r_t + gamma * (1 - end_t) * G_{t+1}`` over a 1-D sequence (``G_N = 0``).

    Args:
        reward: rewards ``r_t``, shape ``[N]``.
        end: booleans, shape ``[N]``: ``True`` where an episode ends (no bootstrap past ``t``).
        gamma: the discount factor.

    Returns:
        ``G`` in float64, shape ``[N]``.
    """
    if reward.ndim != 1 or end.shape != reward.shape:
        raise ValueError(
            f"reward and end must be 1-D of the same length, got shapes {tuple(reward.shape)} "
            f"and {tuple(end.shape)}"
        )
    b = reward.to(torch.float64)
    a = gamma * (~end.to(torch.bool)).to(torch.float64)
    n = b.numel()
    offset = 1
    while offset < n:
        # (a_t, b_t) <- (a_t, b_t) o (a_{t+offset}, b_{t+offset}); the last `offset` rows are final
        b = torch.cat([torch.addcmul(b[:-offset], a[:-offset], b[offset:]), b[-offset:]])
        a = torch.cat([a[:-offset] * a[offset:], a[-offset:]])
        offset *= 2
    return b


def monte_carlo_returns(
    data: TensorDictBase,
    gamma: float,
    *,
    reward_key: NestedKey = ("next", "reward"),
    done_key: NestedKey = ("next", "done"),
    terminated_key: NestedKey | None = ("next", "terminated"),
    failure_reward: float | None = None,
) -> torch.Tensor:
    """The discounted return-to-go of every row of a flat transition TensorDict, episode by episode.

    ``G_t = sum_{k=t}^{T_e} gamma^(k-t) r_k`` where ``T_e`` is the last row of ``t``'s episode: the first
    row at or after ``t`` whose ``done`` is set, or the last row of ``data`` (which closes the last
    episode). With ``failure_reward`` set (Cal-QL's sparse-reward rule), every row of an episode
    whose rewards all equal ``failure_reward`` (exact comparison in the reward's dtype) gets
    ``failure_reward / (1 - gamma)``. See the module docstring for what truncation means.

    Args:
        data: transitions in time order along the single batch dimension (episodes contiguous).
        gamma: discount factor in ``[0, 1)`` (``[0, 1]`` without ``failure_reward``).
        reward_key: where the rewards are (shape ``[N]`` or ``[N, 1]``).
        done_key: the episode-end flags (terminated or truncated).
        terminated_key: when present in ``data``, checked to imply ``done`` (a terminated row that is
            not done would silently merge two episodes). ``None`` skips the check.
        failure_reward: the per-step reward of a failed sparse-reward episode *after* any reward
            scale and bias (AntMaze with WSRL's scale 10 and bias -5: ``-5.0``; Adroit-binary with
            scale 10 and bias 5: ``-5.0``); ``None`` (default) disables the rule (dense rewards).

    Returns:
        The returns, in the reward's dtype and shape (store them next to the data, e.g. as
        ``data["mc_return"]``, the key :class:`~torchrl_opt.objectives.cql.EnsembleCQLLoss` reads).
    """
    if data.batch_dims != 1:
        raise ValueError(
            f"monte_carlo_returns needs a flat transition TensorDict (one batch dimension), got "
            f"batch size {tuple(data.batch_size)}; flatten it first (data.reshape(-1))"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    if failure_reward is not None and gamma >= 1.0:
        raise ValueError("failure_reward / (1 - gamma) needs gamma < 1")
    for name, key in (("reward_key", reward_key), ("done_key", done_key)):
        if key not in data.keys(True, True):
            raise KeyError(f"monte_carlo_returns: {name}={key!r} is not a key of the data")
    reward = data.get(reward_key)
    n = data.batch_size[0]
    if reward.shape not in (torch.Size([n]), torch.Size([n, 1])):
        raise ValueError(
            f"reward {reward_key!r} must have shape [N] or [N, 1], got {tuple(reward.shape)}"
        )
    done = data.get(done_key).reshape(n).to(torch.bool)
    if terminated_key is not None and terminated_key in data.keys(True, True):
        terminated = data.get(terminated_key).reshape(n).to(torch.bool)
        if (terminated & ~done).any():
            raise ValueError(
                f"{terminated_key!r} is set where {done_key!r} is not: episode ends are read from "
                f"{done_key!r}; fix the dataset's done flags (done = terminated | truncated)"
            )
    if n == 0:
        return reward.clone()
    end = done.clone()
    end[-1] = True
    flat_reward = reward.reshape(n)
    returns = discounted_return_to_go(flat_reward, end, gamma)
    if failure_reward is not None:
        # episode id of every row: the number of episode ends strictly before it
        episode = torch.cumsum(end.long(), 0) - end.long()
        successes = torch.bincount(episode, weights=(flat_reward != failure_reward).double())
        failed = (successes == 0)[episode]
        returns = torch.where(
            failed, torch.full_like(returns, failure_reward / (1.0 - gamma)), returns
        )
    return returns.to(reward.dtype).reshape(reward.shape)
