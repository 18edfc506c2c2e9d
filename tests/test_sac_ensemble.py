"""EnsembleSACLoss / OPTEnsembleSACLoss: one-vmap ensemble, random-subset min targets (with and
without replacement, max-target backup), mean- or min-ensemble actor loss, entropy tuning, kappa
mixing, the online pre-training protocol, TorchRL out-key names, and seed batching: vmap-safe
sampling and a temperature trained by functional steps."""

from __future__ import annotations

import pytest
import torch
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.distributions.utils import rsample_and_log_prob

from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.sac_ensemble import (
    EnsembleSACLoss,
    OPTEnsembleSACLoss,
    vmap_safe_rsample_and_log_prob,
)
from torchrl_opt.pipeline.functional import FunctionalStep, SeedBatchedStep, SeedStack

N = 10
HIDDEN = (8, 8)
GAMMA = 0.99


def _ensemble(num: int = N):
    return make_qvalue_ensemble(OBS_DIM, ACT_DIM, num, HIDDEN, layer_norm=True)


def _loss(opt: bool = False, num: int = N, **kwargs) -> EnsembleSACLoss:
    actor = make_gaussian_actor(OBS_DIM, action_spec(), HIDDEN)
    if opt:
        loss = OPTEnsembleSACLoss(actor, _ensemble(num), _ensemble(num), num_qvalue_nets=num, **kwargs)
    else:
        loss = EnsembleSACLoss(actor, _ensemble(num), num_qvalue_nets=num, **kwargs)
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


def _dist(loss, observation):
    """The actor's distribution at ``observation``, built by TorchRL directly."""
    with set_exploration_type(ExplorationType.RANDOM), loss.actor_network_params.to_module(
        loss.actor_network
    ):
        return loss.actor_network.get_dist(TensorDict(observation=observation))


def _set_alpha(loss, alpha: float) -> None:
    with torch.no_grad():
        loss.log_alpha.fill_(torch.tensor(alpha).log())


# --------------------------------------------------------------------------- ensemble
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


@pytest.mark.parametrize("replacement", [False, True])
def test_subset_rule_with_fixed_generator(replacement):
    loss = _loss(generator=torch.Generator().manual_seed(7), subset_replacement=replacement)
    reference = torch.Generator().manual_seed(7)
    repeats = 0
    for _ in range(40):
        subset = loss.sample_subset()
        if replacement:  # WSRL: jax.random.randint
            expected = torch.randint(N, (2,), generator=reference)
        else:  # RLPD: jax.random.choice(replace=False)
            expected = torch.rand(N, generator=reference).argsort()[:2]
            assert subset.unique().numel() == 2
        assert torch.equal(subset, expected)
        repeats += int(subset[0] == subset[1])
    # with replacement a pair repeats with probability 1/N = 0.1
    assert (repeats > 0) == replacement


def test_subset_is_uniform_over_members():
    loss = _loss(generator=torch.Generator().manual_seed(0))
    counts = torch.zeros(N)
    draws = 3000
    for _ in range(draws):
        counts[loss.sample_subset()] += 1
    # each member is in a uniform 2-subset with probability 2/N = 0.2; 4 sigma ~ 0.03
    torch.testing.assert_close(counts / draws, torch.full((N,), 2 / N), atol=0.03, rtol=0)


# --------------------------------------------------------------------------- critic step
@pytest.mark.parametrize("backup_entropy", [True, False])
def test_critic_loss_matches_hand_computation(backup_entropy):
    loss = _loss(generator=torch.Generator().manual_seed(3), backup_entropy=backup_entropy)
    _set_alpha(loss, 0.3)
    td = transition_batch(7, terminal_fraction=0.4)
    torch.manual_seed(11)
    out = loss.qvalue_losses(td)

    subset = torch.rand(N, generator=torch.Generator().manual_seed(3)).argsort()[:2]
    # a' ~ pi(.|s') drawn by TorchRL's own sampler from the same global seed
    torch.manual_seed(11)
    next_action, next_log_prob = rsample_and_log_prob(_dist(loss, td["next", "observation"]))
    next_td = TensorDict(observation=td["next", "observation"], action=next_action, batch_size=[7])
    targets = torch.stack(
        [_q_member(loss, "off", loss.target_qvalue_off_network_params, int(i), next_td) for i in subset]
    )
    v_next = targets.min(0).values
    if backup_entropy:
        v_next = v_next - 0.3 * next_log_prob
    not_done = 1.0 - td["next", "terminated"].float().squeeze(-1)
    y = td["next", "reward"].squeeze(-1) + GAMMA * not_done * v_next
    current = torch.stack(
        [_q_member(loss, "off", loss.qvalue_off_network_params, i, td) for i in range(N)]
    )
    expected = ((current - y) ** 2).sum(0).mean()
    torch.testing.assert_close(out["loss_qvalue"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["target_value"], y.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_value"], current.mean(), rtol=1e-5, atol=1e-5)
    # min over the subset differs from the min over all members (the rule is not clipped-all-N)
    all_min = torch.stack(
        [_q_member(loss, "off", loss.target_qvalue_off_network_params, i, next_td) for i in range(N)]
    ).min(0).values
    assert (all_min <= targets.min(0).values + 1e-6).all()
    assert not torch.allclose(all_min, targets.min(0).values)
    # forward writes TorchRL's priority: the largest squared TD error over the members
    loss.generator.manual_seed(3)
    torch.manual_seed(11)
    written = td.clone()
    loss(written)
    torch.testing.assert_close(written["td_error"], ((current - y) ** 2).max(0).values,
                               rtol=1e-5, atol=1e-5)


def test_max_target_backup_matches_hand_computation():
    """y = r + gamma (1 - d) max_j [min_{i in M} Qbar_i(s', a'_j) - alpha log pi(a'_j|s')], k draws."""
    k = 3
    loss = _loss(generator=torch.Generator().manual_seed(1), max_target_backup=True,
                 num_backup_actions=k, subset_replacement=True)
    _set_alpha(loss, 0.2)
    td = transition_batch(5, terminal_fraction=0.4)
    torch.manual_seed(2)
    out = loss.qvalue_losses(td)

    subset = torch.randint(N, (2,), generator=torch.Generator().manual_seed(1))
    next_obs = td["next", "observation"]
    torch.manual_seed(2)
    # k draws per state, row-major over [B, k]: the states repeated k times each
    with torch.no_grad():
        actions, log_probs = rsample_and_log_prob(_dist(loss, next_obs.repeat_interleave(k, 0)))
    soft = []
    for j in range(5 * k):
        probe = TensorDict(observation=next_obs.repeat_interleave(k, 0)[j : j + 1],
                           action=actions[j : j + 1], batch_size=[1])
        with torch.no_grad():
            q = min(float(_q_member(loss, "off", loss.target_qvalue_off_network_params, int(i), probe))
                    for i in subset)
        soft.append(q - 0.2 * float(log_probs[j]))
    v_next = torch.tensor(soft).reshape(5, k).max(1).values
    not_done = 1.0 - td["next", "terminated"].float().squeeze(-1)
    y = td["next", "reward"].squeeze(-1) + GAMMA * not_done * v_next
    torch.testing.assert_close(out["target_value"], y.mean(), rtol=1e-5, atol=1e-5)


def test_critic_gradients_reach_only_the_critics():
    loss = _loss()
    out = loss.qvalue_losses(transition_batch(6))
    out["loss_qvalue"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in loss.qvalue_off_network_params.values(True, True))
    assert all(p.grad is None for p in loss.actor_network_params.values(True, True))
    assert loss.log_alpha.grad is None


# --------------------------------------------------------------------------- actor step
@pytest.mark.parametrize("kappa, reduction", [(0.0, "mean"), (0.25, "mean"), (0.25, "min")])
def test_actor_loss_is_alpha_logp_minus_kappa_mixed_ensemble_reduction(kappa, reduction):
    """RLPD: the ensemble mean; WSRL: the min over all N critics."""
    loss = _loss(opt=kappa > 0, kappa=kappa, actor_q_reduction=reduction)
    _set_alpha(loss, 0.5)
    td = transition_batch(6)
    torch.manual_seed(4)
    out = loss.actor_alpha_losses(td)
    torch.manual_seed(4)
    action, log_prob = rsample_and_log_prob(_dist(loss, td["observation"]))
    probe = TensorDict(observation=td["observation"], action=action, batch_size=[6])

    def reduced_q(critic):
        params = getattr(loss, f"qvalue_{critic}_network_params")
        q = torch.stack([_q_member(loss, critic, params, i, probe) for i in range(N)])
        return q.mean(0) if reduction == "mean" else q.min(0).values

    q_mix = reduced_q("off") if kappa == 0 else (1 - kappa) * reduced_q("off") + kappa * reduced_q("on")
    expected = (0.5 * log_prob - q_mix).mean()
    torch.testing.assert_close(out["loss_actor"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["state_action_value"], reduced_q("off").mean(), atol=1e-5, rtol=1e-5)
    # automatic entropy tuning: L_alpha = -log_alpha * (log pi + H), H = -|A| / 2
    target_entropy = -ACT_DIM / 2
    torch.testing.assert_close(
        out["loss_alpha"], -torch.tensor(0.5).log() * (log_prob.mean() + target_entropy),
        atol=1e-5, rtol=1e-5,
    )
    (out["loss_actor"] + out["loss_alpha"]).backward()
    assert all(p.grad is None for p in loss.qvalue_off_network_params.values(True, True))
    assert all(p.grad is not None for p in loss.actor_network_params.values(True, True))
    torch.testing.assert_close(
        loss.log_alpha.grad, -(log_prob.mean() + target_entropy).detach(), atol=1e-5, rtol=1e-5
    )


def test_fixed_alpha_and_target_entropy_options():
    loss = _loss(fixed_alpha=True, alpha_init=0.2, target_entropy=-3.0)
    assert not any("log_alpha" in name for name, _ in loss.named_parameters())
    assert "log_alpha_params.temperature.log_alpha" in dict(loss.named_buffers())
    assert loss.actor_param_names == ("actor_network_params",)
    torch.testing.assert_close(loss.alpha, torch.tensor(0.2))
    assert float(loss.target_entropy) == -3.0
    out = loss(transition_batch(4))
    assert float(out["loss_alpha"]) == 0.0
    assert set(loss.out_keys) <= set(out.keys())
    # WSRL / SAC / Cal-QL: -|A|; RLPD ("auto"): -|A| / 2
    assert float(_loss(target_entropy="-action_dim").target_entropy) == -ACT_DIM
    assert float(_loss().target_entropy) == -ACT_DIM / 2


def test_torchrl_key_names_and_step_groups():
    plain = _loss(num=3)
    assert plain.qvalue_loss_keys == ("loss_qvalue",)
    assert plain.critic_param_names == ("qvalue_off_network_params",)
    assert plain.actor_param_names == ("actor_network_params", "log_alpha_params")
    assert plain.actor_loss_keys == ("loss_actor", "loss_alpha")
    assert set(plain.out_keys) == {
        "loss_actor", "loss_alpha", "loss_qvalue", "alpha", "entropy", "kappa",
        "state_action_value", "pred_value", "target_value",
    }
    opt = _loss(opt=True, num=3, kappa=0.5)
    assert opt.qvalue_loss_keys == ("loss_qvalue", "loss_qvalue_on")
    assert opt.critic_param_names == ("qvalue_off_network_params", "qvalue_on_network_params")
    out = opt(transition_batch(4))
    assert set(opt.out_keys) == set(out.keys())
    on_keys = {"loss_qvalue_on", "pred_value_on", "target_value_on", "state_action_value_on"}
    assert on_keys <= set(out.keys())
    opt.select_out_keys("loss_qvalue", "loss_actor")
    assert set(opt(transition_batch(4)).keys()) == {"loss_qvalue", "loss_actor"}


def test_missing_input_keys_are_named():
    from torchrl_opt.objectives.common import LossInputError

    loss = _loss(num=2)
    td = transition_batch(4)
    with pytest.raises(LossInputError,
                       match=r"(?s)EnsembleSACLoss.qvalue_losses needs .*\('next', 'done'\)"):
        loss.qvalue_losses(td.exclude(("next", "done")))
    with pytest.raises(LossInputError,
                       match=r"EnsembleSACLoss.actor_loss needs the input key\(s\) \['observation'\]"):
        loss.actor_alpha_losses(td.exclude("observation"))


# --------------------------------------------------------------------------- OPT protocol
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
    assert loss.log_alpha.grad is None


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
    with pytest.raises(ValueError, match="actor_q_reduction"):
        EnsembleSACLoss(actor, _ensemble(), actor_q_reduction="max")
    with pytest.raises(ValueError, match="target_entropy"):
        EnsembleSACLoss(actor, _ensemble(), target_entropy="-|A|")
    with pytest.raises(TypeError, match="stochastic"):
        EnsembleSACLoss(make_td3_actor(OBS_DIM, action_spec(), HIDDEN), _ensemble())
    with pytest.raises(ValueError, match="online ensemble"):
        OPTEnsembleSACLoss(actor, _ensemble(), None)
    with pytest.raises(RuntimeError, match="without qvalue_on_network"):
        EnsembleSACLoss(actor, _ensemble()).online_params()


# --------------------------------------------------------------------------- seed batching
def test_sampler_equals_torchrl_for_the_same_noise_and_is_vmap_safe():
    loss = _loss(num=2)
    observation = torch.randn(3, 5, OBS_DIM)  # [seeds, batch, obs]
    dist = _dist(loss, observation[0])
    torch.manual_seed(9)
    expected = rsample_and_log_prob(dist)  # TorchRL's TanhNormal.rsample_and_log_prob
    torch.manual_seed(9)
    actual = vmap_safe_rsample_and_log_prob(dist)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(actual[1], dist.log_prob(actual[0]), rtol=1e-4, atol=1e-4)

    def draw(fn, obs):
        return fn(_dist(loss, obs))[0]

    with pytest.raises(RuntimeError, match="different inplace randomness"):
        torch.vmap(lambda o: draw(rsample_and_log_prob, o), randomness="different")(observation)
    same_states = observation[:1].expand(3, 5, OBS_DIM)
    per_seed = torch.vmap(lambda o: draw(vmap_safe_rsample_and_log_prob, o),
                          randomness="different")(same_states)
    assert not torch.allclose(per_seed[0], per_seed[1])  # independent draws per seed


def _steps(loss, lr=1e-2):
    critic = FunctionalStep(loss, loss.critic_param_names, loss.qvalue_losses, loss.qvalue_loss_keys, lr)
    actor = FunctionalStep(loss, loss.actor_param_names, loss.actor_alpha_losses,
                           loss.actor_loss_keys, lr)
    return critic, actor


def _seed_loss(seed: int, opt: bool = False):
    torch.manual_seed(seed)
    return _loss(opt=opt, num=4, kappa=0.3 if opt else 0.0, max_target_backup=True,
                 num_backup_actions=2, actor_q_reduction="min", alpha_init=0.7)


@pytest.mark.parametrize("opt", [False, True])
def test_seed_batched_steps_equal_independent_functional_steps(opt):
    """vmap over 2 seeds' critic and actor steps (the temperature included) equals 2 single
    functional steps; randomness="same" with one manual seed per step makes the draws identical."""
    singles = [_seed_loss(s, opt) for s in range(2)]
    single_steps = [_steps(loss) for loss in singles]
    losses = [_seed_loss(s, opt) for s in range(2)]
    stack = SeedStack.of(losses)
    critic, actor = _steps(losses[0])
    batched = [SeedBatchedStep(stack, critic, randomness="same"),
               SeedBatchedStep(stack, actor, randomness="same")]
    g = torch.Generator().manual_seed(0)
    for it in range(2):
        batch = torch.stack([transition_batch(6, generator=g) for _ in range(2)])
        for which, step in enumerate(batched):
            torch.manual_seed(10 * it + which)
            out = step(batch)
            for i in range(2):
                torch.manual_seed(10 * it + which)
                expected = single_steps[i][which](batch[i])
                for key in step.step.loss_keys:
                    torch.testing.assert_close(out[key][i], expected[key], rtol=1e-5, atol=1e-6)
    for i in range(2):
        assert singles[i].log_alpha != 0.7  # the temperature was trained
        for (name, a), (_, b) in zip(singles[i].state_dict().items(), losses[i].state_dict().items()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_seed_batched_steps_draw_independent_noise_per_seed():
    losses = [_seed_loss(0) for _ in range(2)]  # identical seeds on identical batches
    stack = SeedStack.of(losses)
    critic, actor = _steps(losses[0])
    batch = torch.stack([transition_batch(6)] * 2)
    out_c = SeedBatchedStep(stack, critic, randomness="different")(batch)
    out_a = SeedBatchedStep(stack, actor, randomness="different")(batch)
    assert not torch.allclose(out_c["loss_qvalue"][0], out_c["loss_qvalue"][1])
    assert not torch.allclose(out_a["loss_actor"][0], out_a["loss_actor"][1])


def test_functional_actor_step_trains_the_temperature():
    """Adam's first step moves log_alpha by -lr * sign(g), g = dL_alpha/dlog_alpha = -(E log pi + H)."""
    loss = _loss(num=2, alpha_init=0.5)
    _, actor = _steps(loss, lr=1e-3)
    td = transition_batch(6)
    torch.manual_seed(3)
    _, log_prob = rsample_and_log_prob(_dist(loss, td["observation"]))
    grad = -(log_prob.mean() + loss.target_entropy)
    before = loss.log_alpha.detach().clone()
    torch.manual_seed(3)
    actor(td)
    torch.testing.assert_close(loss.log_alpha.detach() - before, -1e-3 * grad.sign(),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.compile
def test_compiled_functional_steps_are_one_graph_and_match_eager():
    """torch.compile(fullgraph=True) captures the critic step and the actor step (temperature
    included) each as one graph, without recompiling on the next call, and the captured steps
    update the loss exactly as the eager ones. The graphs run as captured (a backend that returns
    the FX graph): Dynamo's capture is what the GPU pipeline relies on, and inductor's CPU codegen
    would only add minutes."""
    compiled_loss, eager_loss = _seed_loss(0), _seed_loss(0)
    compiled_steps, eager_steps = _steps(compiled_loss), _steps(eager_loss)
    graphs = {"critic": [], "actor": []}

    def capture(name):
        def backend(gm, example_inputs):
            graphs[name].append(gm)
            return gm.forward
        return backend

    fast = [torch.compile(step, fullgraph=True, backend=capture(name))
            for step, name in zip(compiled_steps, graphs)]
    g = torch.Generator().manual_seed(1)
    for seed in range(2):
        batch = transition_batch(8, generator=g)
        for step, slow, key in zip(fast, eager_steps, ("loss_qvalue", "loss_actor")):
            # eager first: tensordict registers TensorDict's pytree constructor lazily (a
            # defaultdict filled on the first torch.func unflatten) and Dynamo guards on that
            # registry's size, so a first call compiled in a fresh process would recompile once
            torch.manual_seed(seed)
            b = slow(batch)
            torch.manual_seed(seed)
            a = step(batch)
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [len(v) for v in graphs.values()] == [1, 1]
    for a, b in zip(compiled_loss.state_dict().values(), eager_loss.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
