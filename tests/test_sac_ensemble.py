"""EnsembleSACLoss / OPTEnsembleSACLoss: one-vmap ensemble, random-subset min targets, ensemble-mean
actor loss, entropy tuning, kappa mixing and the online pre-training protocol."""

from __future__ import annotations

import pytest
import torch
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.sac_ensemble import EnsembleSACLoss, OPTEnsembleSACLoss

N = 10
HIDDEN = (8, 8)
GAMMA = 0.99


def _ensemble():
    return make_qvalue_ensemble(OBS_DIM, ACT_DIM, N, HIDDEN, layer_norm=True)


def _loss(opt: bool = False, **kwargs) -> EnsembleSACLoss:
    actor = make_gaussian_actor(OBS_DIM, action_spec(), HIDDEN)
    if opt:
        loss = OPTEnsembleSACLoss(actor, _ensemble(), _ensemble(), **kwargs)
    else:
        loss = EnsembleSACLoss(actor, _ensemble(), **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    # make the targets differ from the live critics so the two cannot be confused
    with torch.no_grad():
        for critic in loss.critics:
            for p in getattr(loss, f"target_qvalue_{critic}_network_params").values(True, True):
                p.add_(0.3 * torch.randn_like(p))
    return loss


def _q_member(loss, critic: str, params, index: int, td) -> torch.Tensor:
    """Q of one ensemble member, evaluated alone (independent of the vmap path)."""
    module = getattr(loss, f"qvalue_{critic}_network")
    with params[index].to_module(module):
        return module(td.select("observation", "action").clone())["state_action_value"].squeeze(-1)


def _next_td(loss, td, seed: int):
    torch.manual_seed(seed)
    return loss.next_action(td)


def test_ensemble_params_are_stacked_and_evaluated_in_one_vmap_call():
    loss = _loss()
    for p in loss.qvalue_off_network_params.values(True, True):
        assert p.shape[0] == N
    # independent initialisation: members differ
    first = next(iter(loss.qvalue_off_network_params.values(True, True)))
    assert not torch.allclose(first[0], first[1])
    calls = []
    inner = loss.qvalue_off_network.module
    handle = inner.register_forward_hook(lambda *args: calls.append(1))
    td = transition_batch(6)
    loss.qvalue_losses(td)
    # one call for the 2-member target subset, one for the 10 live critics
    assert len(calls) == 2
    calls.clear()
    loss.actor_loss(td)
    assert len(calls) == 1
    handle.remove()


def test_vmap_values_match_member_by_member_evaluation():
    loss = _loss()
    td = transition_batch(5)
    values = loss.critic_values("off", td, loss.qvalue_off_network_params)
    assert values.shape == (N, 5)
    for i in range(N):
        torch.testing.assert_close(
            values[i], _q_member(loss, "off", loss.qvalue_off_network_params, i, td)
        )


def test_subset_rule_with_fixed_generator():
    loss = _loss(generator=torch.Generator().manual_seed(7))
    reference = torch.Generator().manual_seed(7)
    for _ in range(5):
        subset = loss.sample_subset()
        expected = torch.rand(N, generator=reference).argsort()[:2]
        assert torch.equal(subset, expected)
        assert subset.unique().numel() == 2


def test_subset_is_uniform_over_members():
    loss = _loss(generator=torch.Generator().manual_seed(0))
    counts = torch.zeros(N)
    draws = 3000
    for _ in range(draws):
        counts[loss.sample_subset()] += 1
    # each member is in a uniform 2-subset with probability 2/N = 0.2; 4 sigma ~ 0.03
    torch.testing.assert_close(counts / draws, torch.full((N,), 2 / N), atol=0.03, rtol=0)


@pytest.mark.parametrize("backup_entropy", [True, False])
def test_critic_loss_matches_hand_computation(backup_entropy):
    loss = _loss(generator=torch.Generator().manual_seed(3), backup_entropy=backup_entropy)
    with torch.no_grad():
        loss.log_alpha.fill_(torch.tensor(0.3).log())
    td = transition_batch(7, terminal_fraction=0.4)
    torch.manual_seed(11)
    out = loss.qvalue_losses(td)

    subset = torch.rand(N, generator=torch.Generator().manual_seed(3)).argsort()[:2]
    next_td = _next_td(loss, td, 11)
    # the log-probability reported is that of the sampled action under pi(.|s')
    with set_exploration_type(ExplorationType.RANDOM), loss.actor_network_params.to_module(
        loss.actor_network
    ):
        dist = loss.actor_network.get_dist(next_td.select("observation"))
        torch.testing.assert_close(
            dist.log_prob(next_td["action"]), next_td["action_log_prob"], atol=2e-3, rtol=1e-3
        )
    targets = torch.stack(
        [_q_member(loss, "off", loss.target_qvalue_off_network_params, int(i), next_td) for i in subset]
    )
    v_next = targets.min(0).values
    if backup_entropy:
        v_next = v_next - 0.3 * next_td["action_log_prob"]
    not_done = 1.0 - td["next", "terminated"].float().squeeze(-1)
    y = td["next", "reward"].squeeze(-1) + GAMMA * not_done * v_next
    current = torch.stack(
        [_q_member(loss, "off", loss.qvalue_off_network_params, i, td) for i in range(N)]
    )
    expected = ((current - y) ** 2).sum(0).mean()
    torch.testing.assert_close(out["loss_qvalue_off"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["target_value_off"], y.mean(), rtol=1e-5, atol=1e-5)
    # min over the subset differs from the min over all members (the rule is not clipped-all-N)
    all_min = torch.stack(
        [_q_member(loss, "off", loss.target_qvalue_off_network_params, i, next_td) for i in range(N)]
    ).min(0).values
    assert (all_min <= targets.min(0).values + 1e-6).all()
    assert not torch.allclose(all_min, targets.min(0).values)


def test_critic_gradients_reach_only_the_critics():
    loss = _loss()
    out = loss.qvalue_losses(transition_batch(6))
    out["loss_qvalue_off"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.qvalue_off_network_params.values(True, True))
    assert all(p.grad is None for p in loss.actor_network_params.values(True, True))
    assert loss.log_alpha.grad is None


@pytest.mark.parametrize("kappa", [0.0, 0.25])
def test_actor_loss_is_alpha_logp_minus_kappa_mixed_ensemble_mean(kappa):
    loss = _loss(opt=kappa > 0, kappa=kappa)
    with torch.no_grad():
        loss.log_alpha.fill_(torch.tensor(0.5).log())
    td = transition_batch(6)
    torch.manual_seed(4)
    out = loss.actor_alpha_losses(td)
    torch.manual_seed(4)
    with set_exploration_type(ExplorationType.RANDOM), loss.actor_network_params.to_module(
        loss.actor_network
    ):
        dist = loss.actor_network.get_dist(td.select("observation"))
        action = dist.rsample()
        log_prob = dist.log_prob(action)
    probe = TensorDict(observation=td["observation"], action=action, batch_size=[6])

    def mean_q(critic):
        params = getattr(loss, f"qvalue_{critic}_network_params")
        return torch.stack([_q_member(loss, critic, params, i, probe) for i in range(N)]).mean(0)

    q_mix = mean_q("off") if kappa == 0 else (1 - kappa) * mean_q("off") + kappa * mean_q("on")
    expected = (0.5 * log_prob - q_mix).mean()
    torch.testing.assert_close(out["loss_actor"], expected, atol=2e-3, rtol=1e-3)
    # automatic entropy tuning: L_alpha = -log_alpha * (log pi + H), H = -|A| / 2
    target_entropy = -ACT_DIM / 2
    torch.testing.assert_close(
        out["loss_alpha"], -torch.tensor(0.5).log() * (log_prob.mean() + target_entropy),
        atol=2e-3, rtol=1e-3,
    )
    (out["loss_actor"] + out["loss_alpha"]).backward()
    assert all(p.grad is None for p in loss.qvalue_off_network_params.values(True, True))
    assert all(p.grad is not None for p in loss.actor_network_params.values(True, True))
    torch.testing.assert_close(
        loss.log_alpha.grad, -(log_prob.mean() + target_entropy).detach(), atol=2e-3, rtol=1e-3
    )


def test_fixed_alpha_and_target_entropy_options():
    loss = _loss(fixed_alpha=True, alpha_init=0.2, target_entropy=-3.0)
    assert "log_alpha" not in dict(loss.named_parameters())
    torch.testing.assert_close(loss.alpha, torch.tensor(0.2))
    assert float(loss.target_entropy) == -3.0
    out = loss(transition_batch(4))
    assert float(out["loss_alpha"]) == 0.0
    assert set(loss.out_keys) <= set(out.keys())


def test_opt_loss_supports_meta_adaptation_and_trains_only_q_on():
    loss = _loss(opt=True, kappa=0.5)
    online = loss.online_params()
    live = list(loss.qvalue_on_network_params.values(True, True))
    assert all(a is b for a, b in zip(online.values(True, True), live))
    meta = MetaAdaptationLoss(loss, mode="meta", order=2, alpha=1e-2)
    out = meta(TensorDict(offline=transition_batch(6), online=transition_batch(6)))
    out["loss_pretrain"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in live)
    assert all(p.grad is None for p in loss.qvalue_off_network_params.values(True, True))
    assert all(p.grad is None for p in loss.actor_network_params.values(True, True))
    # both ensembles in the critic step, each with its own loss
    out = loss(transition_batch(6))
    assert {"loss_qvalue_off", "loss_qvalue_on", "state_action_value_on"} <= set(out.keys())


def test_online_pretrain_loss_at_given_params_differs_from_live_params():
    loss = _loss(opt=True, kappa=0.5, generator=torch.Generator().manual_seed(0))
    td = transition_batch(6)
    shifted = loss.online_params().apply(lambda p: p.detach() + 0.5)
    loss.generator.manual_seed(1)
    torch.manual_seed(2)
    at_live = loss.online_pretrain_loss(td)[0]
    loss.generator.manual_seed(1)
    torch.manual_seed(2)
    at_shifted = loss.online_pretrain_loss(td, shifted)[0]
    loss.generator.manual_seed(1)
    torch.manual_seed(2)
    again = loss.online_pretrain_loss(td)[0]
    torch.testing.assert_close(at_live, again)
    assert not torch.allclose(at_live, at_shifted)


def test_bad_arguments_raise():
    actor = make_gaussian_actor(OBS_DIM, action_spec(), HIDDEN)
    with pytest.raises(ValueError, match="kappa"):
        EnsembleSACLoss(actor, _ensemble(), kappa=0.5)
    with pytest.raises(ValueError, match="num_min_qs"):
        EnsembleSACLoss(actor, _ensemble(), num_min_qs=11)
    with pytest.raises(ValueError, match="modules but num_qvalue_nets"):
        EnsembleSACLoss(actor, _ensemble()[:3])
    with pytest.raises(TypeError, match="stochastic"):
        EnsembleSACLoss(make_td3_actor(OBS_DIM, action_spec(), HIDDEN), _ensemble())
    with pytest.raises(ValueError, match="online ensemble"):
        OPTEnsembleSACLoss(actor, _ensemble(), None)
    with pytest.raises(RuntimeError, match="without qvalue_on_network"):
        EnsembleSACLoss(actor, _ensemble()).online_params()


@pytest.mark.compile
def test_compiled_critic_step_matches_eager():
    from torchrl.objectives import SoftUpdate

    from torchrl_opt.pipeline.updates import make_step

    def build():
        torch.manual_seed(0)
        loss = _loss()
        params = list(loss.qvalue_off_network_params.values(True, True))
        opt = torch.optim.Adam(params, lr=1e-3)
        return loss, make_step(loss.qvalue_losses, ("loss_qvalue_off",), opt,
                               target_updater=SoftUpdate(loss, tau=0.1))

    eager_loss, eager_step = build()
    compiled_loss, step = build()
    batch = transition_batch(8)
    # inductor draws random numbers with its own generator unless told to fall back to eager's
    with torch._inductor.config.patch(fallback_random=True):
        compiled_step = torch.compile(step)
        for seed in range(3):
            torch.manual_seed(seed)
            a = eager_step(batch)
            torch.manual_seed(seed)
            b = compiled_step(batch)
            torch.testing.assert_close(
                a["loss_qvalue_off"], b["loss_qvalue_off"], rtol=1e-4, atol=1e-4
            )
    for p, q in zip(eager_loss.parameters(), compiled_loss.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)
