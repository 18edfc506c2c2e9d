"""OPTLoss against hand computations, TorchRL's TD3Loss, and compilation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch, zero_grads
from torch import nn
from torchrl.objectives import SoftUpdate
from torchrl.objectives.utils import ValueEstimators

from torchrl_opt.models import make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.td3_opt import OPTLoss

GAMMA = 0.99
key = OPTLoss.critic_key  # Q_off's entries: TorchRL's names; Q_on's: suffix "_on"


def _nets(hidden=(16,)):
    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, hidden)
    q_off = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, hidden)
    q_on = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, hidden)
    return spec, actor, q_off, q_on


def _perturb_targets(loss: OPTLoss) -> None:
    """Make target parameters differ from the live ones so tests can tell them apart."""
    with torch.no_grad():
        for name in loss.__dict__["_modules"]:
            if name.startswith("target_"):
                for p in getattr(loss, name).values(True, True):
                    p.add_(0.05 * torch.randn_like(p))


def _q(module: nn.Module, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return module.module(obs, act).squeeze(-1)


def _reference_target(loss, q_off_modules, q_on_modules, batch, noise):
    """Eq. 2 by hand, with plain modules loaded from the loss's target parameters."""
    target_actor = copy.deepcopy(loss.actor_network)
    loss.target_actor_network_params.to_module(target_actor)
    next_obs = batch["next", "observation"]
    next_action = (target_actor.module(next_obs) + noise).clamp(-1.0, 1.0)
    out = {}
    for name, modules in (("off", q_off_modules), ("on", q_on_modules)):
        targets = getattr(loss, f"target_qvalue_{name}_network_params")
        qs = []
        for i, module in enumerate(modules):
            m = copy.deepcopy(module)
            targets[i].to_module(m)
            qs.append(_q(m, next_obs, next_action))
        next_q = torch.minimum(qs[0], qs[1])
        not_term = (~batch["next", "terminated"]).float().squeeze(-1)
        out[name] = batch["next", "reward"].squeeze(-1) + GAMMA * not_term * next_q
    return out


def test_critic_losses_match_hand_computation_with_smoothing_clip():
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec, policy_noise=0.6, noise_clip=0.3,
                   loss_function="l2")
    _perturb_targets(loss)
    batch = transition_batch(32)
    torch.manual_seed(11)
    out = loss.qvalue_losses(batch.clone())
    torch.manual_seed(11)
    noise = (torch.randn(32, ACT_DIM) * 0.6).clamp(-0.3, 0.3)
    assert (noise.abs() == 0.3).any(), "the test must exercise the noise clip"
    targets = _reference_target(loss, q_off, q_on, batch, noise)
    for name, modules in (("off", q_off), ("on", q_on)):
        params = getattr(loss, f"qvalue_{name}_network_params")
        expected = 0.0
        for i, module in enumerate(modules):
            m = copy.deepcopy(module)
            params[i].to_module(m)
            q = _q(m, batch["observation"], batch["action"])
            expected = expected + ((q - targets[name]) ** 2).mean()
        torch.testing.assert_close(out[key("loss_qvalue", name)], expected)
        torch.testing.assert_close(out[key("target_value", name)], targets[name].mean())


def test_smoothed_action_is_clamped_to_bounds():
    spec = action_spec(-0.5, 0.5)
    actor = make_td3_actor(OBS_DIM, spec, (8,))
    q = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (8,))
    loss = OPTLoss(actor, q, action_spec=spec, policy_noise=10.0, noise_clip=10.0)
    next_td = loss.smoothed_next_action(transition_batch(64))
    assert next_td["action"].min() >= -0.5 and next_td["action"].max() <= 0.5
    assert (next_td["action"].abs() == 0.5).any()


@pytest.mark.parametrize("kappa", [0.0, 0.3, 0.75, 1.0])
def test_actor_loss_is_eq4_mix(kappa):
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec, kappa=kappa)
    batch = transition_batch(16)
    value, metadata = loss.actor_loss(batch)
    act = actor.module(batch["observation"])
    q_off_1 = _q(q_off[0], batch["observation"], act)
    q_on_1 = _q(q_on[0], batch["observation"], act)
    expected = -((1 - kappa) * q_off_1 + kappa * q_on_1).mean()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(metadata["state_action_value_actor_on"], q_on_1.mean())
    torch.testing.assert_close(metadata["state_action_value_actor"], q_off_1.mean())


def test_kappa_buffer_written_in_place_changes_the_loss():
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec, kappa=0.0)
    batch = transition_batch(8)
    kappa = loss.kappa
    at_zero = loss.actor_loss(batch)[0]
    kappa.fill_(1.0)
    at_one = loss.actor_loss(batch)[0]
    act = actor.module(batch["observation"])
    torch.testing.assert_close(at_zero, -_q(q_off[0], batch["observation"], act).mean())
    torch.testing.assert_close(at_one, -_q(q_on[0], batch["observation"], act).mean())


def test_td3_bc_actor_loss():
    spec, actor, q_off, _ = _nets()
    loss = OPTLoss(actor, q_off, action_spec=spec, bc_alpha=2.5)
    batch = transition_batch(16)
    value, metadata = loss.actor_loss(batch)
    pi = actor.module(batch["observation"])
    q = _q(q_off[0], batch["observation"], pi)
    lmbda = 2.5 / q.abs().mean().detach()
    expected = -lmbda * q.mean() + F.mse_loss(pi, batch["action"])
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(metadata["bc_loss"], F.mse_loss(pi, batch["action"]))


class _SquaredActionPenalty(nn.Module):
    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight

    def forward(self, td):
        return self.weight * td["action"].pow(2).sum(-1)


def test_actor_penalty_and_q_normalisation():
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(
        actor,
        q_off,
        q_on,
        action_spec=spec,
        kappa=0.4,
        normalize_q=True,
        actor_penalty=_SquaredActionPenalty(0.7),
    )
    batch = transition_batch(16)
    value, metadata = loss.actor_loss(batch)
    pi = actor.module(batch["observation"])
    q_mix = 0.6 * _q(q_off[0], batch["observation"], pi) + 0.4 * _q(
        q_on[0], batch["observation"], pi
    )
    penalty = 0.7 * pi.pow(2).sum(-1)
    expected = (-q_mix / q_mix.abs().mean().detach() + penalty).mean()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(metadata["actor_penalty"], penalty.mean())


@pytest.mark.parametrize("fuse_critics", [False, True])
def test_gradients_reach_only_the_intended_parameters(fuse_critics):
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec, kappa=0.5, fuse_critics=fuse_critics)
    batch = transition_batch(8)

    def has_grad(name):
        return [
            p.grad is not None
            for p in getattr(loss, name).values(True, True)
            if isinstance(p, nn.Parameter) or name.startswith("target_")
        ]

    for name in loss.__dict__["_modules"]:
        if name.startswith("target_"):
            assert not any(p.requires_grad for p in getattr(loss, name).values(True, True))

    loss.actor_loss(batch)[0].backward()
    assert all(has_grad("actor_network_params"))
    for name in (
        "qvalue_off_network_params",
        "qvalue_on_network_params",
        "target_actor_network_params",
        "target_qvalue_off_network_params",
        "target_qvalue_on_network_params",
    ):
        assert not any(has_grad(name)), name

    zero_grads(loss)
    out = loss.qvalue_losses(batch)
    out["loss_qvalue_on"].backward()
    assert all(has_grad("qvalue_on_network_params"))
    if fuse_critics:
        # one autograd node holds both twins: Q_off's share of Q_on's gradient is exactly zero
        assert all(
            p.grad is not None and not p.grad.any()
            for p in loss.qvalue_off_network_params.values(True, True)
        )
    else:
        assert not any(has_grad("qvalue_off_network_params"))
    assert not any(has_grad("actor_network_params"))
    assert not any(has_grad("target_qvalue_on_network_params"))


def test_soft_update_finds_every_target():
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec)
    updater = SoftUpdate(loss, tau=0.5)
    with torch.no_grad():
        for p in loss.qvalue_on_network_params.values(True, True):
            p.add_(1.0)
    before = loss.target_qvalue_on_network_params.clone()
    updater.step()
    after = loss.target_qvalue_on_network_params
    live = loss.qvalue_on_network_params
    for b, a, l in zip(
        before.values(True, True), after.values(True, True), live.values(True, True)
    ):
        torch.testing.assert_close(a, 0.5 * b + 0.5 * l)


def test_bad_arguments_raise():
    spec, actor, q_off, q_on = _nets()
    with pytest.raises(ValueError, match="qvalue_on_network is None"):
        OPTLoss(actor, q_off, action_spec=spec, kappa=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        OPTLoss(actor, q_off, q_on, action_spec=spec, kappa=1.5)
    with pytest.raises(ValueError, match="Exactly one"):
        OPTLoss(actor, q_off, q_on)
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        OPTLoss(actor, q_off[:1], q_on, action_spec=spec)
    loss = OPTLoss(actor, q_off, action_spec=spec)
    with pytest.raises(RuntimeError, match="without qvalue_on_network"):
        loss.qvalue_on_loss(transition_batch(4))


@pytest.mark.compile
def test_compiled_forward_backward_matches_eager_and_sees_new_kappa():
    spec, actor, q_off, q_on = _nets()
    eager = OPTLoss(copy.deepcopy(actor), copy.deepcopy(q_off), copy.deepcopy(q_on), action_spec=spec)
    compiled_loss = OPTLoss(actor, q_off, q_on, action_spec=spec)
    batch = transition_batch(16)

    def total(loss, td):
        out = loss(td)
        return out["loss_actor"] + out["loss_qvalue"] + out["loss_qvalue_on"]

    compiled = torch.compile(total, fullgraph=True)
    # Inductor draws its own random numbers unless told to fall back to eager's RNG.
    fallback_random = torch._inductor.config.patch(fallback_random=True)
    fallback_random.__enter__()
    for kappa in (0.1, 0.9):
        eager.kappa.fill_(kappa)
        compiled_loss.kappa.fill_(kappa)
        zero_grads(eager)
        zero_grads(compiled_loss)
        torch.manual_seed(5)
        v_eager = total(eager, batch.clone())
        torch.manual_seed(5)
        with torch._dynamo.config.patch(error_on_recompile=kappa != 0.1):
            v_comp = compiled(compiled_loss, batch.clone())
        torch.testing.assert_close(v_comp, v_eager)
        v_eager.backward()
        v_comp.backward()
        for a, b in zip(eager.parameters(), compiled_loss.parameters()):
            if a.grad is None:
                assert b.grad is None
            else:
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)
    fallback_random.__exit__(None, None, None)


def test_set_keys_renames_the_reward_the_td_target_reads():
    spec, actor, q_off, q_on = _nets()
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec)
    batch = transition_batch(16)
    torch.manual_seed(2)
    expected = loss.qvalue_losses(batch.clone())
    loss.set_keys(reward="rew")
    renamed = batch.clone()
    renamed.rename_key_(("next", "reward"), ("next", "rew"))
    torch.manual_seed(2)
    out = loss.qvalue_losses(renamed)
    torch.testing.assert_close(out["loss_qvalue_on"], expected["loss_qvalue_on"])
    with pytest.raises(ValueError, match="not an accepted tensordict key"):
        loss.set_keys(value="v")


# --------------------------------------------------------------------------- fused twins
def _twin_losses(**kwargs):
    """The same loss twice: fused (default auto mode) and unfused, identically initialised."""
    spec, actor, q_off, q_on = _nets()
    fused = OPTLoss(
        copy.deepcopy(actor), copy.deepcopy(q_off), copy.deepcopy(q_on), action_spec=spec, **kwargs
    )
    unfused = OPTLoss(actor, q_off, q_on, action_spec=spec, fuse_critics=False, **kwargs)
    unfused.load_state_dict(fused.state_dict())
    _perturb_targets(fused)
    unfused.load_state_dict(fused.state_dict())
    return fused, unfused


def _prioritised_batch(n):
    batch = transition_batch(n)
    batch["priority_weight"] = torch.rand(n) + 0.5
    return batch


@pytest.mark.parametrize(
    "kwargs, estimator",
    [
        ({}, None),
        ({"loss_function": "smooth_l1", "reduction": "sum"}, None),
        ({"deactivate_vmap": True}, None),
        ({"num_qvalue_nets": 3, "loss_function": "l1"}, None),
        ({}, ValueEstimators.TDLambda),
    ],
)
def test_fused_critic_step_equals_unfused(kwargs, estimator):
    n = kwargs.get("num_qvalue_nets", 2)
    spec, actor, _, _ = _nets()
    q_off = make_qvalue_ensemble(OBS_DIM, ACT_DIM, n, (16,))
    q_on = make_qvalue_ensemble(OBS_DIM, ACT_DIM, n, (16,))
    fused = OPTLoss(
        copy.deepcopy(actor), copy.deepcopy(q_off), copy.deepcopy(q_on), action_spec=spec,
        policy_noise=0.4, **kwargs,
    )
    unfused = OPTLoss(actor, q_off, q_on, action_spec=spec, policy_noise=0.4,
                      fuse_critics=False, **kwargs)
    _perturb_targets(fused)
    unfused.load_state_dict(fused.state_dict())
    if estimator is not None:
        fused.make_value_estimator(estimator, lmbda=0.9)
        unfused.make_value_estimator(estimator, lmbda=0.9)
    assert fused.fused_critics and not unfused.fused_critics
    batch = _prioritised_batch(32)
    torch.manual_seed(3)
    out_f = fused.qvalue_losses(batch.clone())
    torch.manual_seed(3)
    out_u = unfused.qvalue_losses(batch.clone())
    assert set(out_f.keys()) == set(out_u.keys()) == {
        key(kind, c) for kind in ("loss_qvalue", "pred_value", "target_value", "next_state_value")
        for c in ("off", "on")
    }
    for k in list(out_u.keys()):
        torch.testing.assert_close(out_f[k], out_u[k], rtol=1e-6, atol=1e-7, msg=k)
    # independent check of one piece: the unfused path is itself the per-twin _critic_loss
    torch.manual_seed(3)
    next_td = unfused.smoothed_next_action(batch.clone())
    loss_on, _ = unfused._critic_loss("on", batch.clone(), next_td)
    torch.testing.assert_close(out_f["loss_qvalue_on"], loss_on, rtol=1e-6, atol=1e-7)

    # different weights on the two twins so that a mixed-up gradient cannot pass
    (out_f["loss_qvalue"] + 3 * out_f["loss_qvalue_on"]).backward()
    (out_u["loss_qvalue"] + 3 * out_u["loss_qvalue_on"]).backward()
    for group in ("qvalue_off_network_params", "qvalue_on_network_params"):
        for k, p_f in getattr(fused, group).items(True, True):
            p_u = getattr(unfused, group).get(k)
            assert p_f.grad is not None and p_u.grad is not None, (group, k)
            torch.testing.assert_close(
                p_f.grad, p_u.grad, rtol=1e-5, atol=1e-7, msg=f"{group} {k}"
            )
    for group in ("actor_network_params", "target_qvalue_off_network_params",
                  "target_qvalue_on_network_params", "target_actor_network_params"):
        assert all(p.grad is None for p in getattr(fused, group).values(True, True)), group


def test_fused_loss_of_one_twin_gives_the_other_zero_gradient():
    fused, unfused = _twin_losses()
    batch = transition_batch(8)
    for name in ("loss_qvalue_on", "loss_qvalue"):
        zero_grads(fused)
        zero_grads(unfused)
        torch.manual_seed(4)
        fused.qvalue_losses(batch.clone())[name].backward()
        torch.manual_seed(4)
        unfused.qvalue_losses(batch.clone())[name].backward()
        trained, other = ("on", "off") if name.endswith("on") else ("off", "on")
        for (k, p_f), p_u in zip(
            getattr(fused, f"qvalue_{trained}_network_params").items(True, True),
            getattr(unfused, f"qvalue_{trained}_network_params").values(True, True),
        ):
            torch.testing.assert_close(p_f.grad, p_u.grad, rtol=1e-5, atol=1e-7, msg=str(k))
        for p in getattr(fused, f"qvalue_{other}_network_params").values(True, True):
            assert p.grad is not None and not p.grad.any()
        unfused_other = getattr(unfused, f"qvalue_{other}_network_params")
        assert all(p.grad is None for p in unfused_other.values(True, True))


@pytest.mark.parametrize("kwargs", [{"kappa": 0.3}, {"kappa": 0.7, "bc_alpha": 2.5},
                                    {"kappa": 1.0, "deactivate_vmap": True}])
def test_fused_actor_loss_equals_unfused(kwargs):
    fused, unfused = _twin_losses(**kwargs)
    batch = transition_batch(32)
    value_f, meta_f = fused.actor_loss(batch)
    value_u, meta_u = unfused.actor_loss(batch)
    torch.testing.assert_close(value_f, value_u, rtol=1e-6, atol=1e-7)
    assert meta_f.keys() == meta_u.keys()
    for k in meta_u:
        torch.testing.assert_close(meta_f[k], meta_u[k], rtol=1e-6, atol=1e-7, msg=k)
    # hand value of the first members
    act = fused.actor_network.module(batch["observation"])
    for name in ("off", "on"):
        m = copy.deepcopy(getattr(fused, f"qvalue_{name}_network"))
        getattr(fused, f"qvalue_{name}_network_params")[0].to_module(m)
        expected = _q(m, batch["observation"], act.detach()).mean()
        torch.testing.assert_close(meta_f[key("state_action_value_actor", name)], expected)
    value_f.backward()
    value_u.backward()
    for k, p_f in fused.actor_network_params.items(True, True):
        p_u = unfused.actor_network_params.get(k)
        if isinstance(p_f, nn.Parameter):
            torch.testing.assert_close(p_f.grad, p_u.grad, rtol=1e-5, atol=1e-7, msg=str(k))
    for group in ("qvalue_off_network_params", "qvalue_on_network_params"):
        assert all(p.grad is None for p in getattr(fused, group).values(True, True)), group


def test_fuse_critics_resolution():
    spec, actor, q_off, q_on = _nets()
    assert OPTLoss(actor, q_off, q_on, action_spec=spec).fused_critics
    assert OPTLoss(actor, q_off, q_on, action_spec=spec, fuse_critics=True).fused_critics
    assert not OPTLoss(actor, q_off, q_on, action_spec=spec, fuse_critics=False).fused_critics
    assert not OPTLoss(actor, q_off, action_spec=spec).fused_critics
    wider = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (32,))
    mixed = OPTLoss(actor, q_off, wider, action_spec=spec, kappa=0.5)
    assert not mixed.fused_critics
    # the unfused fallback still computes both twins
    out = mixed.qvalue_losses(transition_batch(8))
    assert {"loss_qvalue", "loss_qvalue_on"} <= set(out.keys())
    deeper = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (16, 16))
    assert not OPTLoss(actor, q_off, deeper, action_spec=spec).fused_critics
    other_activation = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (16,))
    for module in other_activation:
        module.module.net[1] = nn.Tanh()
    assert not OPTLoss(actor, q_off, other_activation, action_spec=spec).fused_critics


def test_fuse_critics_true_on_mismatched_twins_raises():
    spec, actor, q_off, _ = _nets()
    wider = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (32,))
    with pytest.raises(ValueError, match=r"(?s)weight.*shape.*fuse_critics=False"):
        OPTLoss(actor, q_off, wider, action_spec=spec, fuse_critics=True)
    deeper = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (16, 16))
    with pytest.raises(ValueError, match=r"(?s)parameter keys differ.*fuse_critics=False"):
        OPTLoss(actor, q_off, deeper, action_spec=spec, fuse_critics=True)
    with pytest.raises(ValueError, match="qvalue_on_network is None"):
        OPTLoss(actor, q_off, action_spec=spec, fuse_critics=True)


@pytest.mark.compile
def test_compiled_fused_critic_step_matches_eager():
    fused, _ = _twin_losses(kappa=0.4)
    compiled_loss = copy.deepcopy(fused)
    assert compiled_loss.fused_critics
    batch = transition_batch(16)

    def step(loss, td):
        out = loss.qvalue_losses(td)
        return out, out["loss_qvalue"] + out["loss_qvalue_on"]

    compiled = torch.compile(step, fullgraph=True)
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(9)
        out_e, total_e = step(fused, batch.clone())
        torch.manual_seed(9)
        out_c, total_c = compiled(compiled_loss, batch.clone())
    for k in list(out_e.keys()):
        torch.testing.assert_close(out_c[k], out_e[k], rtol=1e-5, atol=1e-6, msg=k)
    total_e.backward()
    total_c.backward()
    for a, b in zip(fused.parameters(), compiled_loss.parameters()):
        if a.grad is None:
            assert b.grad is None
        else:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the pipeline's protocol
def test_functional_and_seed_batched_critic_steps_use_the_step_keys():
    """``qvalue_losses`` under ``torch.func`` (FunctionalStep) and ``vmap`` over seeds
    (SeedBatchedStep) gives the eager Adam step on ``critic_parameters()``."""
    from torchrl_opt.pipeline.functional import SeedBatchedStep, make_functional_step

    def build():
        torch.manual_seed(0)
        spec, actor, q_off, q_on = _nets((8,))
        return OPTLoss(actor, q_off, q_on, action_spec=spec, kappa=0.3, loss_function="l2")

    eager, functional = build(), build()
    seeds = [build(), build()]
    batch = transition_batch(8)
    assert eager.qvalue_loss_keys == ("loss_qvalue", "loss_qvalue_on")
    assert eager.critic_param_names == ("qvalue_off_network_params", "qvalue_on_network_params")
    opt = torch.optim.Adam(eager.critic_parameters(), lr=1e-2)
    torch.manual_seed(1)
    out = eager.qvalue_losses(batch)
    opt.zero_grad()
    sum(out[k] for k in eager.qvalue_loss_keys).backward()
    opt.step()
    step = make_functional_step(functional, functional.critic_param_names, functional.qvalue_losses,
                                functional.qvalue_loss_keys, 1e-2)
    torch.manual_seed(1)
    metrics = step(batch)
    torch.testing.assert_close(metrics["loss_qvalue_on"], out["loss_qvalue_on"].detach())
    batched = SeedBatchedStep(
        seeds, make_functional_step(seeds[0], seeds[0].critic_param_names, seeds[0].qvalue_losses,
                                    seeds[0].qvalue_loss_keys, 1e-2),
        randomness="same",
    )
    torch.manual_seed(1)
    per_seed = batched(torch.stack([batch, batch], 0))
    assert per_seed["loss_qvalue"].shape == (2,)
    torch.testing.assert_close(per_seed["loss_qvalue"][1], out["loss_qvalue"].detach())
    for loss in (functional, *seeds):
        for p, q in zip(loss.critic_parameters(), eager.critic_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_missing_keys_are_named_with_the_layout():
    from torchrl_opt.objectives.common import LossInputError

    spec, actor, q_off, q_on = _nets((8,))
    loss = OPTLoss(actor, q_off, q_on, action_spec=spec, bc_alpha=2.5)
    batch = transition_batch(4)
    with pytest.raises(LossInputError, match=r"(?s)OPTLoss.qvalue_losses needs .*\('next', 'done'\).*"
                       r"transition layout.*set_keys"):
        loss.qvalue_losses(batch.exclude(("next", "done")))
    with pytest.raises(LossInputError, match=r"OPTLoss.actor_loss needs the input key\(s\) \['action'\]"):
        loss.actor_loss(batch.exclude("action"))  # TD3+BC reads the dataset action
    # the actor step of plain TD3 needs the observation only
    plain = OPTLoss(actor, q_off, action_spec=spec)
    plain.actor_loss(batch.select("observation"))
    loss.set_keys(reward="rew")
    with pytest.raises(LossInputError, match=r"\('next', 'rew'\)"):
        loss(batch)
