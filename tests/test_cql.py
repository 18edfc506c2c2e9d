"""EnsembleCQLLoss (CQL(H), Cal-QL, Lagrange form, critic subsampling) and Monte Carlo returns.

References are independent of the code under test: Monte Carlo returns by a Python loop and closed
forms, the CQL regulariser by explicit per-critic, per-state log-sum-exp sums over member-by-member
Q evaluations, the samplers by TorchRL's own ``TanhNormal`` sampler, and the whole 2-critic loss by
TorchRL's ``CQLLoss`` (values and gradients).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch
from tensordict import TensorDict
from torchrl.data import Unbounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions.utils import rsample_and_log_prob
from torchrl.objectives import CQLLoss

from torchrl_opt.data.returns import monte_carlo_returns
from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble
from torchrl_opt.objectives.cql import EnsembleCQLLoss
from torchrl_opt.pipeline.functional import FunctionalStep, SeedBatchedStep, SeedStack

N = 3
HIDDEN = (8,)
GAMMA = 0.9


def _cql(num: int = N, spec=None, perturb_targets: bool = True, **kwargs) -> EnsembleCQLLoss:
    spec = spec if spec is not None else action_spec()
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    loss = EnsembleCQLLoss(
        make_gaussian_actor(OBS_DIM, spec, HIDDEN),
        make_qvalue_ensemble(OBS_DIM, ACT_DIM, num, HIDDEN),
        num_qvalue_nets=num,
        action_spec=spec,
        **kwargs,
    )
    loss.make_value_estimator(gamma=GAMMA)
    if perturb_targets:
        with torch.no_grad():
            for p in loss.target_qvalue_off_network_params.values(True, True):
                p.add_(0.3 * torch.randn_like(p))
    return loss


def _dist(loss, observation):
    with set_exploration_type(ExplorationType.RANDOM), loss.actor_network_params.to_module(
        loss.actor_network
    ):
        return loss.actor_network.get_dist(TensorDict(observation=observation))


@torch.no_grad()
def _q(loss, member: int, observation, action) -> torch.Tensor:
    """``Q_member(observation, action)`` evaluated alone (no vmap), for rows of actions."""
    module = loss.qvalue_off_network
    td = TensorDict(observation=observation.expand(action.shape[0], -1), action=action)
    with loss.qvalue_off_network_params[member].to_module(module):
        return module(td)["state_action_value"].squeeze(-1)


def _samples(loss, td, seed: int):
    """The CQL actions of ``qvalue_losses(td)`` run under ``torch.manual_seed(seed)``: it draws
    ``a' ~ pi(.|s')`` first, then the CQL actions (subsets come from the loss's own generator)."""
    torch.manual_seed(seed)
    loss.next_action(td)
    return loss.cql_actions(td)


def _hand_gaps(loss, td, samples, *, mc_return=None, bound_random=False) -> torch.Tensor:
    """``gap[i, b] = T log sum_j exp(v_ij / T) - Q_i(s_b, a_b)`` by explicit sums, float64."""
    n, T = loss.num_cql_actions, loss.cql_temperature
    gaps = torch.zeros(loss.num_qvalue_nets, td.shape[0], dtype=torch.float64)
    for i in range(loss.num_qvalue_nets):
        for b in range(td.shape[0]):
            obs = td["observation"][b : b + 1]
            q_data = float(_q(loss, i, obs, td["action"][b : b + 1]))
            q = _q(loss, i, obs, samples["action"][b]).double()
            if mc_return is not None:
                bounded = torch.arange(3 * n) >= (0 if bound_random else n)
                q = torch.where(bounded, q.clamp(min=float(mc_return[b])), q)
            if loss.importance_sample:
                values = q - samples["log_density"][b].double()
            else:
                values = torch.cat([q, torch.tensor([q_data], dtype=torch.float64)])
                values = values - T * math.log(3 * n + 1)
            gaps[i, b] = T * math.log(float(torch.exp(values / T).sum())) - q_data
    return gaps


# --------------------------------------------------------------------------- Monte Carlo returns
def _hand_returns(rewards, ends, gamma, failure=None):
    """Cal-QL's calc_return_to_go, episode by episode, as a plain Python loop."""
    out, episode = [0.0] * len(rewards), []
    for t in range(len(rewards)):
        episode.append(t)
        if ends[t] or t == len(rewards) - 1:
            if failure is not None and all(rewards[k] == failure for k in episode):
                for k in episode:
                    out[k] = failure / (1 - gamma)
            else:
                g = 0.0
                for k in reversed(episode):
                    g = rewards[k] + gamma * g
                    out[k] = g
            episode = []
    return out


def _episodes(rewards, terminated, truncated, reward_shape=(-1, 1)):
    terminated = torch.tensor(terminated).reshape(-1, 1)
    done = terminated | torch.tensor(truncated).reshape(-1, 1)
    return TensorDict(
        {
            ("next", "reward"): torch.tensor(rewards, dtype=torch.float32).reshape(reward_shape),
            ("next", "terminated"): terminated,
            ("next", "done"): done,
        },
        batch_size=[len(rewards)],
    )


# terminated after 3 rows, truncated after 2, terminated after 1, the last 3 rows left open
_REWARDS = [0.5, -1.0, 2.0, 1.5, 0.25, -3.0, 1.0, 0.0, -0.5]
_TERMINATED = [False, False, True, False, False, True, False, False, False]
_TRUNCATED = [False, False, False, False, True, False, False, False, False]


@pytest.mark.parametrize("reward_shape", [(-1, 1), (-1,)])
def test_monte_carlo_returns_match_a_hand_loop(reward_shape):
    data = _episodes(_REWARDS, _TERMINATED, _TRUNCATED, reward_shape)
    returns = monte_carlo_returns(data, GAMMA)
    ends = [a or b for a, b in zip(_TERMINATED, _TRUNCATED)]
    expected = torch.tensor(_hand_returns(_REWARDS, ends, GAMMA)).reshape(reward_shape)
    assert returns.shape == data["next", "reward"].shape and returns.dtype == torch.float32
    torch.testing.assert_close(returns, expected.float(), rtol=1e-6, atol=1e-6)
    # the truncated episode is cut where it was cut: its last row is its own reward
    assert float(returns.reshape(-1)[4]) == 0.25
    torch.testing.assert_close(float(returns.reshape(-1)[0]), 0.5 - 0.9 + 0.81 * 2.0)


def test_monte_carlo_returns_sparse_failure_rule():
    """Cal-QL: an episode of failure rewards only gets r_fail / (1 - gamma) on every row."""
    rewards = [-5.0, -5.0, -5.0, -5.0, 5.0, -5.0, -5.0]  # failed (truncated) | success | failed
    terminated = [False, False, False, False, True, False, False]
    truncated = [False, False, True, False, False, False, False]
    data = _episodes(rewards, terminated, truncated)
    returns = monte_carlo_returns(data, GAMMA, failure_reward=-5.0).squeeze(-1)
    ends = [a or b for a, b in zip(terminated, truncated)]
    expected = torch.tensor(_hand_returns(rewards, ends, GAMMA, failure=-5.0), dtype=torch.float32)
    torch.testing.assert_close(returns, expected)
    torch.testing.assert_close(returns[0], torch.tensor(-50.0))
    torch.testing.assert_close(returns[3], torch.tensor(-5.0 + 0.9 * 5.0))
    # without the rule the failed episodes sum their observed prefix only
    plain = monte_carlo_returns(data, GAMMA).squeeze(-1)
    torch.testing.assert_close(plain[2], torch.tensor(-5.0))


def test_monte_carlo_returns_of_a_long_episode_match_the_closed_form():
    """One 2^17-row episode of rewards 1: G_t = (1 - gamma^(L - t)) / (1 - gamma), no underflow."""
    length = 2**17
    data = TensorDict(
        {
            ("next", "reward"): torch.ones(length, 1),
            ("next", "done"): torch.zeros(length, 1, dtype=torch.bool),
        },
        batch_size=[length],
    )
    returns = monte_carlo_returns(data, 0.999).squeeze(-1).double()
    steps_left = torch.arange(length, 0, -1, dtype=torch.float64)
    torch.testing.assert_close(returns, (1 - 0.999**steps_left) / (1 - 0.999), rtol=1e-6, atol=0)


def test_monte_carlo_returns_validate_their_input():
    data = _episodes(_REWARDS, _TERMINATED, _TRUNCATED)
    bad = data.clone()
    bad["next", "done"][2] = False
    with pytest.raises(ValueError, match="terminated.*done"):
        monte_carlo_returns(bad, GAMMA)
    with pytest.raises(KeyError, match="reward_key"):
        monte_carlo_returns(data, GAMMA, reward_key="missing")
    with pytest.raises(ValueError, match="flat transition"):
        monte_carlo_returns(data.reshape(3, 3), GAMMA)
    with pytest.raises(ValueError, match="gamma < 1"):
        monte_carlo_returns(data, 1.0, failure_reward=-1.0)


# --------------------------------------------------------------------------- samplers
def test_cql_actions_are_uniform_on_the_box_and_policy_draws_at_s_and_next_s():
    spec = action_spec(-2.0, 1.0)
    loss = _cql(spec=spec, num_cql_actions=3)
    td = transition_batch(4)
    torch.manual_seed(7)
    samples = loss.cql_actions(td)
    assert samples.batch_size == torch.Size([4, 9])

    torch.manual_seed(7)
    uniform = -2.0 + 3.0 * torch.rand(4, 3, ACT_DIM)
    current, current_lp = rsample_and_log_prob(_dist(loss, td["observation"].repeat_interleave(3, 0)))
    following, following_lp = rsample_and_log_prob(
        _dist(loss, td["next", "observation"].repeat_interleave(3, 0))
    )
    actions = samples["action"]
    torch.testing.assert_close(actions[:, :3], uniform)
    torch.testing.assert_close(actions[:, 3:6], current.reshape(4, 3, ACT_DIM))
    torch.testing.assert_close(actions[:, 6:], following.reshape(4, 3, ACT_DIM))
    assert ((actions >= -2.0) & (actions <= 1.0)).all()
    log_density = samples["log_density"]
    torch.testing.assert_close(log_density[:, :3], torch.full((4, 3), -ACT_DIM * math.log(3.0)))
    torch.testing.assert_close(log_density[:, 3:6], current_lp.reshape(4, 3))
    torch.testing.assert_close(log_density[:, 6:], following_lp.reshape(4, 3))
    assert not actions.requires_grad and not log_density.requires_grad


# --------------------------------------------------------------------------- the regulariser
@pytest.mark.parametrize(
    "importance_sample, clip", [(True, None), (False, None), (True, (-0.3, 0.3))]
)
def test_cql_regulariser_matches_hand_computation(importance_sample, clip):
    kwargs = {} if clip is None else {"cql_clip_diff_min": clip[0], "cql_clip_diff_max": clip[1]}
    loss = _cql(num_cql_actions=2, cql_critic_subsample=None, cql_alpha=2.0, cql_temperature=0.5,
                importance_sample=importance_sample, **kwargs)
    td = transition_batch(4)
    torch.manual_seed(5)
    out = loss.qvalue_losses(td)
    gaps = _hand_gaps(loss, td, _samples(loss, td, 5))
    if clip is not None:
        assert (gaps < clip[0]).any() or (gaps > clip[1]).any()  # the clip is active
        gaps = gaps.clamp(*clip)
    expected = 2.0 * gaps.mean(1).sum()  # alpha * sum_i E_s[gap_i(s)]
    torch.testing.assert_close(out["loss_cql"].double(), expected, rtol=1e-5, atol=1e-5)
    q_data = torch.stack([_q(loss, i, td["observation"][b : b + 1], td["action"][b : b + 1])
                          for i in range(N) for b in range(4)])
    torch.testing.assert_close(out["pred_value"], q_data.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bound_random", [False, True])
def test_calql_lower_bound_against_hand_monte_carlo_returns(bound_random):
    """The Q-values entering the logsumexp are max(Q, G(s)) for the policy samples (and the uniform
    ones with calql_bound_random_actions), G the dataset's return-to-go computed by hand."""
    rewards = [0.2, -0.4, 0.1, 0.3, -0.2, 0.5]
    terminated = [False, False, True, False, False, False]
    truncated = [False, False, False, False, True, False]
    ends = [a or b for a, b in zip(terminated, truncated)]
    hand_mc = torch.tensor(_hand_returns(rewards, ends, GAMMA), dtype=torch.float32)
    td = transition_batch(6)
    td.update(_episodes(rewards, terminated, truncated))
    td["mc_return"] = monte_carlo_returns(td, GAMMA)
    torch.testing.assert_close(td["mc_return"].squeeze(-1), hand_mc)

    loss = _cql(num_cql_actions=2, cql_critic_subsample=None, cql_alpha=1.5, calibrated=True,
                calql_bound_random_actions=bound_random)
    torch.manual_seed(3)
    out = loss.qvalue_losses(td)
    samples = _samples(loss, td, 3)
    gaps = _hand_gaps(loss, td, samples, mc_return=hand_mc, bound_random=bound_random)
    torch.testing.assert_close(out["loss_cql"].double(), 1.5 * gaps.mean(1).sum(), rtol=1e-5, atol=1e-5)
    # the bound is active for some samples and not for others, and it changed the loss
    assert 0.0 < float(out["calql_bound_rate"]) < 1.0
    unbounded = _hand_gaps(loss, td, samples)
    assert (gaps > unbounded + 1e-6).any()


def test_cql_gap_gradients_skip_bounded_samples():
    """d gap / d Q(s, a_data) = -1; d gap / d Q(s, a_j) = softmax_j(v / T), 0 where Cal-QL's bound
    replaced Q(s, a_j) by G(s)."""
    loss = _cql(num_cql_actions=2, calibrated=True, cql_temperature=0.7)
    q_data = torch.randn(N, 5, requires_grad=True)
    q_samples = torch.randn(N, 5, 6, requires_grad=True)
    log_density = torch.randn(5, 6)
    mc_return = torch.randn(5)
    gap, _ = loss.cql_gap(q_data, q_samples, log_density, mc_return)
    gap.sum().backward()
    torch.testing.assert_close(q_data.grad, -torch.ones(N, 5))
    with torch.no_grad():
        bound = torch.cat([torch.full((5, 2), -math.inf), mc_return[:, None].expand(5, 4)], -1)
        values = torch.maximum(q_samples, bound) - log_density
        expected = torch.softmax(values / 0.7, -1) * (q_samples > bound)
    torch.testing.assert_close(q_samples.grad, expected)
    assert (q_samples.grad[..., 2:] == 0).any() and (q_samples.grad[..., :2] > 0).all()


def test_cql_loss_gradients_reach_only_the_critics():
    loss = _cql(calibrated=True)
    td = transition_batch(6)
    td["mc_return"] = torch.randn(6)
    out = loss.qvalue_losses(td)
    (out["loss_qvalue"] + out["loss_cql"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in loss.qvalue_off_network_params.values(True, True))
    assert all(p.grad is None for p in loss.target_qvalue_off_network_params.values(True, True))
    assert all(p.grad is None for p in loss.actor_network_params.values(True, True))
    assert loss.log_alpha.grad is None


def test_critic_subsample_regularises_a_random_subset():
    """WSRL's REDQ ensemble: w_i = (N / m) #{draws of i}, m members drawn after the TD pair."""
    loss = _cql(num=4, num_cql_actions=1, cql_critic_subsample=2, subset_replacement=True,
                cql_alpha=3.0, generator=torch.Generator().manual_seed(11))
    td = transition_batch(3)
    reference = torch.Generator().manual_seed(11)
    for seed in range(3):
        torch.manual_seed(seed)
        out = loss.qvalue_losses(td)
        torch.randint(4, (2,), generator=reference)  # the TD target pair
        members = torch.randint(4, (2,), generator=reference)
        weights = torch.zeros(4, dtype=torch.float64).index_add_(
            0, members, torch.ones(2, dtype=torch.float64)) * 2.0
        gaps = _hand_gaps(loss, td, _samples(loss, td, seed))
        expected = 3.0 * (weights * gaps.mean(1)).sum()
        torch.testing.assert_close(out["loss_cql"].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["softplus", "exp"])
def test_lagrange_multiplier_form(form):
    """loss_cql = sg(l) (sum_i E gap_i - N tau); loss_cql_alpha = -l (sg(mean gap) - tau), with
    l = softplus(theta) (WSRL) or cql_alpha * exp(theta) (Cal-QL); dl/dtheta = sigmoid(theta) or l."""
    loss = _cql(num_cql_actions=2, cql_critic_subsample=None, cql_lagrange=True, cql_alpha=2.0,
                cql_lagrange_form=form, cql_alpha_init=0.7, cql_target_action_gap=0.8)
    assert loss.critic_param_names == ("qvalue_off_network_params", "cql_alpha_params")
    assert loss.qvalue_loss_keys == ("loss_qvalue", "loss_cql", "loss_cql_alpha")
    weight = 0.7 if form == "softplus" else 2.0 * 0.7
    dweight = 1 - math.exp(-0.7) if form == "softplus" else weight  # d lambda / d theta
    torch.testing.assert_close(loss.cql_weight, torch.tensor(weight))
    td = transition_batch(4)
    torch.manual_seed(2)
    out = loss.qvalue_losses(td)
    gaps = _hand_gaps(loss, td, _samples(loss, td, 2))
    mean_gap = gaps.mean()
    torch.testing.assert_close(out["loss_cql"].double(), weight * (gaps.mean(1).sum() - N * 0.8),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_cql_alpha"].double(), -weight * (mean_gap - 0.8),
                               rtol=1e-5, atol=1e-5)
    raw = loss.cql_alpha_params.get(("lagrange", "raw_cql_alpha"))
    out["loss_cql"].backward(retain_graph=True)
    assert raw.grad is None  # the critic's loss does not train the multiplier
    out["loss_cql_alpha"].backward()
    torch.testing.assert_close(raw.grad.double(), -dweight * (mean_gap - 0.8), rtol=1e-5, atol=1e-6)
    # one functional critic step moves the multiplier up while the gap exceeds its target
    step = FunctionalStep(loss, loss.critic_param_names, loss.qvalue_losses, loss.qvalue_loss_keys, 1e-2)
    before = float(loss.cql_weight)
    torch.manual_seed(2)
    step(td)
    assert (float(loss.cql_weight) > before) == (float(mean_gap) > 0.8)


# --------------------------------------------------------------------------- TorchRL's CQLLoss
def test_matches_torchrl_cqlloss_with_two_critics():
    """Same networks, same batch, same draws (one global seed, identical draw order: a' at s', the
    uniform actions, the policy actions at s, at s'), CQL(H) with importance sampling, a
    deterministic backup, min-critic actor, target entropy -|A|. TorchRL's CQLLoss differs in two
    places (see torchrl_opt.objectives.cql): its logsumexp is per sample index and it evaluates the
    s'-draws at s'. Both vanish with one action per proposal on a batch with s' = s."""
    torch.manual_seed(0)
    actor = make_gaussian_actor(OBS_DIM, action_spec(), HIDDEN)
    critics = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN)
    ours = EnsembleCQLLoss(
        actor, critics, num_qvalue_nets=2, num_min_qs=2, subset_replacement=False,
        cql_critic_subsample=None, max_target_backup=False, num_cql_actions=1, cql_alpha=3.0,
        cql_temperature=0.7, alpha_init=0.4, generator=torch.Generator().manual_seed(0),
    )
    theirs = CQLLoss(copy.deepcopy(actor), copy.deepcopy(critics), loss_function="l2", num_random=1,
                     min_q_weight=3.0, temperature=0.7, alpha_init=0.4)
    for loss in (ours, theirs):
        loss.make_value_estimator(gamma=GAMMA)
    with torch.no_grad():
        for p in ours.target_qvalue_off_network_params.values(True, True):
            p.add_(0.3 * torch.randn_like(p))
        theirs.qvalue_network_params.data.copy_(ours.qvalue_off_network_params.data)
        theirs.target_qvalue_network_params.data.copy_(ours.target_qvalue_off_network_params.data)
        theirs.actor_network_params.data.copy_(ours.actor_network_params.data)
    assert float(ours.target_entropy) == float(theirs.target_entropy) == -ACT_DIM
    td = transition_batch(7, terminal_fraction=0.4)
    td["next", "observation"] = td["observation"].clone()

    # critic step: TD loss + CQL regulariser, values and gradients
    torch.manual_seed(5)
    out = ours.qvalue_losses(td)
    torch.manual_seed(5)
    their_td = td.clone()
    their_q, _ = theirs.q_loss(their_td)
    their_cql, _ = theirs.cql_loss(their_td)
    torch.testing.assert_close(out["loss_qvalue"], their_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_cql"], their_cql, rtol=1e-5, atol=1e-5)
    (out["loss_qvalue"] + out["loss_cql"]).backward()
    (their_q + their_cql).backward()
    for a, b in zip(ours.qvalue_off_network_params.values(True, True),
                    theirs.qvalue_network_params.values(True, True)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)

    # actor step: actor and temperature losses, values and gradients
    torch.manual_seed(6)
    out = ours.actor_alpha_losses(td)
    torch.manual_seed(6)
    their_actor, metadata = theirs.actor_loss(td.clone())
    their_alpha, _ = theirs.alpha_loss(metadata)
    torch.testing.assert_close(out["loss_actor"], their_actor, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_alpha"], their_alpha, rtol=1e-5, atol=1e-5)
    (out["loss_actor"] + out["loss_alpha"]).backward()
    (their_actor + their_alpha).backward()
    for a, b in zip(ours.actor_network_params.values(True, True),
                    theirs.actor_network_params.values(True, True)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.log_alpha.grad, theirs.log_alpha.grad, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- seeds, keys, errors
def test_seed_batched_calql_critic_step_equals_independent_steps():
    """Cal-QL with the Lagrange multiplier: 2 seeds in one vmap equal 2 single functional steps
    (randomness="same" with one manual seed per step), the multiplier trained per seed."""
    def build(seed):
        torch.manual_seed(seed)
        return _cql(num_cql_actions=2, calibrated=True, cql_lagrange=True)

    def step(loss):
        return FunctionalStep(loss, loss.critic_param_names, loss.qvalue_losses,
                              loss.qvalue_loss_keys, 1e-2)

    singles = [build(s) for s in range(2)]
    single_steps = [step(loss) for loss in singles]
    losses = [build(s) for s in range(2)]
    batched = SeedBatchedStep(SeedStack.of(losses), step(losses[0]), randomness="same")
    g = torch.Generator().manual_seed(0)
    for it in range(2):
        batch = torch.stack([transition_batch(5, generator=g) for _ in range(2)])
        batch["mc_return"] = torch.randn(2, 5, 1, generator=g)
        torch.manual_seed(it)
        out = batched(batch)
        for i in range(2):
            torch.manual_seed(it)
            expected = single_steps[i](batch[i])
            for key in ("loss_qvalue", "loss_cql", "loss_cql_alpha"):
                torch.testing.assert_close(out[key][i], expected[key], rtol=1e-5, atol=1e-6)
    for i in range(2):
        for (name, a), (_, b) in zip(singles[i].state_dict().items(), losses[i].state_dict().items()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    assert losses[0].cql_weight != losses[1].cql_weight


def test_out_keys_defaults_and_errors():
    loss = _cql(calibrated=True)
    td = transition_batch(4)
    td["mc_return"] = torch.randn(4, 1)
    out = loss(td)
    assert set(loss.out_keys) == set(out.keys())
    assert loss.qvalue_loss_keys == ("loss_qvalue", "loss_cql")
    assert "mc_return" in loss.in_keys
    # WSRL's CQL pre-training defaults
    assert (loss.subset_replacement, loss.actor_q_reduction, loss.backup_entropy,
            loss.max_target_backup, loss.num_backup_actions, loss.cql_critic_subsample) == (
        True, "min", False, True, 10, 2)
    assert float(loss.target_entropy) == -ACT_DIM and float(loss.cql_alpha) == 5.0
    with pytest.raises(KeyError, match="monte_carlo_returns"):
        loss.qvalue_losses(transition_batch(4))
    td["mc_return"] = torch.randn(4, 2)
    with pytest.raises(ValueError, match="one return per transition"):
        loss.qvalue_losses(td)
    with pytest.raises(TypeError, match="no online ensemble"):
        _cql(qvalue_on_network=make_qvalue_ensemble(OBS_DIM, ACT_DIM, N, HIDDEN))
    with pytest.raises(TypeError, match="no online ensemble"):
        _cql(kappa=0.5)
    with pytest.raises(ValueError, match="num_cql_actions"):
        _cql(num_cql_actions=0)
    with pytest.raises(ValueError, match="cql_lagrange_form"):
        _cql(cql_lagrange=True, cql_lagrange_form="log")
    with pytest.raises(ValueError, match="cql_critic_subsample"):
        _cql(cql_critic_subsample=N + 1)
    with pytest.raises(TypeError, match="Bounded action_spec"):
        EnsembleCQLLoss(make_gaussian_actor(OBS_DIM, action_spec(), HIDDEN),
                        make_qvalue_ensemble(OBS_DIM, ACT_DIM, N, HIDDEN), num_qvalue_nets=N,
                        action_spec=Unbounded(shape=(ACT_DIM,)))
