"""Tests of OPTIQLLoss (OPT on IQL, Appendix A.2) against hand computations and TorchRL's IQLLoss."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded
from torchrl.objectives import IQLLoss, SoftUpdate

from torchrl_opt.models import (
    make_gaussian_actor,
    make_qvalue_ensemble,
    make_td3_actor,
    make_value,
)
from torchrl_opt.objectives.iql_opt import OPTIQLLoss, expectile_loss

OBS, ACT, BATCH, HIDDEN = 3, 2, 7, (5,)
GAMMA = 0.9
EXPECTILE = 0.7
TEMPERATURE = 3.0
key = OPTIQLLoss.critic_key  # Q_off/V_off entries: TorchRL's names; the online pair's: "_on"
GROUPS = (
    "actor_network_params",
    "qvalue_off_network_params",
    "value_off_network_params",
    "qvalue_on_network_params",
    "value_on_network_params",
)


# ---------------------------------------------------------------------------- helpers
def _spec() -> Bounded:
    return Bounded(-torch.ones(ACT), torch.ones(ACT), (ACT,))


def _networks(dtype: torch.dtype = torch.float32) -> dict:
    nets = {
        "actor": make_gaussian_actor(OBS, _spec(), HIDDEN),
        "q_off": make_qvalue_ensemble(OBS, ACT, 2, HIDDEN),
        "v_off": make_value(OBS, HIDDEN),
        "q_on": make_qvalue_ensemble(OBS, ACT, 2, HIDDEN),
        "v_on": make_value(OBS, HIDDEN),
    }
    if dtype != torch.float32:
        nets["q_off"] = [q.to(dtype) for q in nets["q_off"]]
        nets["q_on"] = [q.to(dtype) for q in nets["q_on"]]
        nets["v_off"] = nets["v_off"].to(dtype)
        nets["v_on"] = nets["v_on"].to(dtype)
    return nets


def _make_loss(nets: dict, online: bool = True, **kwargs) -> OPTIQLLoss:
    # the IQL paper's MuJoCo choices (TorchRL's defaults are tested in test_torchrl_parity.py)
    kwargs.setdefault("expectile", EXPECTILE)
    kwargs.setdefault("temperature", TEMPERATURE)
    kwargs.setdefault("loss_function", "l2")
    if online:
        loss = OPTIQLLoss(
            nets["actor"], nets["q_off"], nets["v_off"], nets["q_on"], nets["v_on"], **kwargs
        )
    else:
        loss = OPTIQLLoss(nets["actor"], nets["q_off"], nets["v_off"], **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    return loss


def _batch(batch: int = BATCH, dtype: torch.dtype = torch.float32) -> TensorDict:
    """Transitions with one terminal (no bootstrap) and one truncation (done, not terminated)."""
    terminated = torch.zeros(batch, 1, dtype=torch.bool)
    done = torch.zeros(batch, 1, dtype=torch.bool)
    terminated[2] = True
    done[2] = True
    done[4] = True
    return TensorDict(
        {
            "observation": torch.randn(batch, OBS, dtype=dtype),
            "action": (torch.rand(batch, ACT, dtype=dtype) * 1.8 - 0.9),
            "next": {
                "observation": torch.randn(batch, OBS, dtype=dtype),
                "reward": torch.randn(batch, 1, dtype=dtype),
                "done": done,
                "terminated": terminated,
            },
        },
        batch_size=[batch],
    )


def _perturb_(params: TensorDictBase, scale: float = 0.3) -> None:
    """Move (target) parameters away from the live ones so that tests see which set is used."""
    for value in params.values(True, True):
        value.data.add_(scale * torch.randn_like(value))


def _mlp(params: TensorDictBase, x: torch.Tensor) -> torch.Tensor:
    """Plain ``Linear -> ReLU -> ... -> Linear`` forward from a TensorDict of ``{i: {weight, bias}}``."""
    layers = sorted(params.keys(), key=int)
    for j, name in enumerate(layers):
        x = x @ params[name, "weight"].transpose(-1, -2) + params[name, "bias"]
        if j < len(layers) - 1:
            x = torch.relu(x)
    return x


def _hand_q(params: TensorDictBase, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``Q_i(s, a)`` for each stacked critic ``i``: shape ``[N, batch]``."""
    net = params["module", "net"]
    qs = [_mlp(net[i], torch.cat([obs, act], -1)).squeeze(-1) for i in range(net.shape[0])]
    return torch.stack(qs)


def _hand_v(params: TensorDictBase, obs: torch.Tensor) -> torch.Tensor:
    return _mlp(params["module"], obs).squeeze(-1)


def _hand_log_prob(actor, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` of a TanhNormal on [-1, 1]: ``sum_d N(atanh a_d; mu, sigma) - log(1 - a_d^2)``."""
    td = actor[0](TensorDict({"observation": obs}, batch_size=obs.shape[:1]))
    loc, scale = td["loc"], td["scale"]
    z = torch.atanh(act)
    normal = -((z - loc) ** 2) / (2 * scale**2) - scale.log() - 0.5 * math.log(2 * math.pi)
    return (normal - torch.log1p(-act.pow(2))).sum(-1)


def _hand_advantage(loss: OPTIQLLoss, critic: str, td: TensorDict) -> torch.Tensor:
    q = _hand_q(
        getattr(loss, f"target_qvalue_{critic}_network_params"), td["observation"], td["action"]
    )
    v = _hand_v(getattr(loss, f"value_{critic}_network_params"), td["observation"])
    return (q.min(0).values - v).detach()


def _grads(loss_value: torch.Tensor, loss: OPTIQLLoss, groups=GROUPS) -> dict:
    """``{group: [grad or None per leaf]}`` of ``loss_value`` w.r.t. each parameter group."""
    leaves, owners = [], []
    for group in groups:
        params = getattr(loss, group, None)
        if params is None:
            continue
        for value in params.values(True, True):
            leaves.append(value)
            owners.append(group)
    grads = torch.autograd.grad(loss_value, leaves, allow_unused=True, retain_graph=True)
    out: dict = {}
    for group, grad in zip(owners, grads):
        out.setdefault(group, []).append(grad)
    return out


def _dot(a: TensorDictBase, b: TensorDictBase) -> torch.Tensor:
    """``<a, b>`` summed over every leaf."""
    return sum((x * b[key]).sum() for key, x in a.items(True, True))


def _reached(grads: dict) -> set:
    return {
        group
        for group, gs in grads.items()
        if any(g is not None and g.abs().sum() > 0 for g in gs)
    }


# ---------------------------------------------------------------------------- maths
def test_expectile_loss_hand():
    u = torch.tensor([-2.0, -0.5, 0.0, 0.25, 3.0])
    tau = 0.8
    expected = torch.tensor(
        [(1 - tau) * 4.0, (1 - tau) * 0.25, 0.0, tau * 0.0625, tau * 9.0]
    )
    torch.testing.assert_close(expectile_loss(u, tau), expected)
    # |tau - 1(u < 0)| u^2 written literally
    torch.testing.assert_close(expectile_loss(u, tau), (tau - (u < 0).float()).abs() * u**2)


def test_value_losses_match_hand_with_target_critics():
    nets = _networks()
    loss = _make_loss(nets)
    _perturb_(loss.target_qvalue_off_network_params)
    _perturb_(loss.target_qvalue_on_network_params)
    td = _batch()
    out = loss.value_losses(td)
    total, metadata = loss.value_loss(td)
    torch.testing.assert_close(total, out["loss_value"] + out["loss_value_on"])
    assert set(metadata) == {"state_value", "state_value_on"}
    for critic in ("off", "on"):
        qbar = _hand_q(
            getattr(loss, f"target_qvalue_{critic}_network_params"), td["observation"], td["action"]
        ).min(0).values
        v = _hand_v(getattr(loss, f"value_{critic}_network_params"), td["observation"])
        u = qbar - v
        expected = ((EXPECTILE - (u < 0).float()).abs() * u**2).mean()
        torch.testing.assert_close(out[key("loss_value", critic)], expected)
        torch.testing.assert_close(out[key("state_value", critic)], v.mean())
        # the live critic would give a different loss: the target is really Qbar
        q_live = _hand_q(
            getattr(loss, f"qvalue_{critic}_network_params"), td["observation"], td["action"]
        ).min(0).values
        live = expectile_loss(q_live - v, EXPECTILE).mean()
        assert not torch.allclose(live, expected)


def test_qvalue_losses_match_hand_td_target_with_terminals():
    nets = _networks()
    loss = _make_loss(nets)
    _perturb_(loss.target_qvalue_off_network_params)
    td = _batch()
    out = loss.qvalue_losses(td)
    total, metadata = loss.qvalue_loss(td)
    torch.testing.assert_close(total, out["loss_qvalue"] + out["loss_qvalue_on"])
    reward = td["next", "reward"].squeeze(-1)
    not_terminal = (~td["next", "terminated"]).float().squeeze(-1)
    assert not_terminal[2] == 0 and not_terminal[4] == 1  # truncation still bootstraps
    for critic in ("off", "on"):
        v_next = _hand_v(getattr(loss, f"value_{critic}_network_params"), td["next", "observation"])
        y = (reward + GAMMA * not_terminal * v_next).detach()
        q = _hand_q(
            getattr(loss, f"qvalue_{critic}_network_params"), td["observation"], td["action"]
        )
        expected = ((q - y) ** 2).sum(0).mean()
        torch.testing.assert_close(out[key("loss_qvalue", critic)], expected)
        torch.testing.assert_close(out[key("target_value", critic)], y.mean())
        torch.testing.assert_close(out[key("pred_value", critic)], q.mean())
        torch.testing.assert_close(metadata[key("td_error", critic)], (q - y).pow(2))
    # the terminal sample's target is the reward alone
    v_next = _hand_v(loss.value_off_network_params, td["next", "observation"])
    assert v_next[2].abs() > 1e-6


@pytest.mark.parametrize("kappa", [0.0, 0.3, 0.75, 1.0])
def test_actor_loss_matches_eq9(kappa):
    nets = _networks()
    loss = _make_loss(nets, kappa=kappa)
    _perturb_(loss.target_qvalue_off_network_params)
    _perturb_(loss.target_qvalue_on_network_params)
    td = _batch()
    loss_actor, metadata = loss.actor_loss(td)
    a_off = _hand_advantage(loss, "off", td)
    a_on = _hand_advantage(loss, "on", td)
    a_mix = (1 - kappa) * a_off + kappa * a_on
    weight = torch.exp(TEMPERATURE * a_mix).clamp(max=100.0)
    log_prob = _hand_log_prob(nets["actor"], td["observation"], td["action"])
    torch.testing.assert_close(loss_actor, -(weight * log_prob).mean())
    torch.testing.assert_close(metadata["advantage_mix"], a_mix.mean())
    torch.testing.assert_close(metadata["weight"], weight.mean())
    torch.testing.assert_close(metadata["advantage"], a_off.mean())
    torch.testing.assert_close(metadata["advantage_on"], a_on.mean())
    torch.testing.assert_close(metadata["entropy"], -log_prob.mean())


def test_actor_weights_are_clipped_at_100_after_exp():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.5, temperature=60.0)
    td = _batch(64)
    a_mix = 0.5 * _hand_advantage(loss, "off", td) + 0.5 * _hand_advantage(loss, "on", td)
    # centre the advantages on 0 through V_off's output bias (A_mix moves by -0.5 * shift)
    with torch.no_grad():
        loss.value_off_network_params["module", "2", "bias"].add_(2 * a_mix.median())
    a_mix = 0.5 * _hand_advantage(loss, "off", td) + 0.5 * _hand_advantage(loss, "on", td)
    raw = torch.exp(60.0 * a_mix)
    assert (raw > 100).any() and (raw < 100).any(), "the batch must exercise both sides of the clip"
    weight = raw.clamp(max=100.0)
    log_prob = _hand_log_prob(nets["actor"], td["observation"], td["action"])
    loss_actor, metadata = loss.actor_loss(td)
    torch.testing.assert_close(loss_actor, -(weight * log_prob).mean())
    assert metadata["weight"] <= 100.0
    # a custom clip
    loss_small = _make_loss(nets, kappa=0.5, temperature=60.0, max_weight=5.0)
    loss_small.load_state_dict(loss.state_dict())
    torch.testing.assert_close(
        loss_small.actor_loss(td)[0], -(raw.clamp(max=5.0) * log_prob).mean()
    )


def test_kappa_buffer_is_read_at_call_time():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.1)
    td = _batch()
    assert loss.kappa.dtype == torch.float32 and "kappa" in dict(loss.named_buffers())
    loss.kappa.fill_(0.9)  # what KappaSchedule does
    a_mix = 0.1 * _hand_advantage(loss, "off", td) + 0.9 * _hand_advantage(loss, "on", td)
    log_prob = _hand_log_prob(nets["actor"], td["observation"], td["action"])
    expected = -(torch.exp(TEMPERATURE * a_mix).clamp(max=100.0) * log_prob).mean()
    out = loss(td)
    torch.testing.assert_close(out["loss_actor"], expected)
    torch.testing.assert_close(out["kappa"], torch.tensor(0.9))


def test_priority_weights_and_reduction():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.4)
    td = _batch()
    per_sample = _make_loss(nets, kappa=0.4, reduction="none")
    per_sample.load_state_dict(loss.state_dict())
    out_none = per_sample(td)
    out_mean = loss(td)
    for k in ("loss_actor", "loss_value", "loss_value_on", "loss_qvalue", "loss_qvalue_on"):
        assert out_none[k].shape == (BATCH,)
        torch.testing.assert_close(out_none[k].mean(), out_mean[k])
    # per-sample diagnostics under reduction="none" (TorchRL's shapes), means otherwise
    assert out_none["pred_value_on"].shape == (2, BATCH) and out_none["weight"].shape == (BATCH,)
    for k in ("pred_value_on", "state_value", "weight", "entropy", "advantage_mix"):
        torch.testing.assert_close(out_none[k].mean(), out_mean[k])
    weights = torch.rand(BATCH)
    td_w = td.clone()
    td_w["priority_weight"] = weights
    out_w = loss(td_w)
    for k in ("loss_actor", "loss_value", "loss_qvalue_on"):
        # TorchRL's weighted mean: sum(w * l) / sum(w)
        torch.testing.assert_close(out_w[k], (out_none[k] * weights).sum() / weights.sum())


# ---------------------------------------------------------------------------- TorchRL parity
@pytest.mark.parametrize("online", [False, True])
def test_plain_iql_equals_torchrl_iqlloss(online):
    """Without the online pair (or with it at kappa=0) the off losses are TorchRL's IQLLoss."""
    nets = _networks()
    ours = _make_loss(nets, online=online, kappa=0.0)
    ref = IQLLoss(
        nets["actor"],
        nets["q_off"],
        nets["v_off"],
        loss_function="l2",
        expectile=EXPECTILE,
        temperature=TEMPERATURE,
    )
    ref.make_value_estimator(gamma=GAMMA)
    noise = ours.target_qvalue_off_network_params.apply(lambda x: 0.3 * torch.randn_like(x))
    for params in (ours.target_qvalue_off_network_params, ref.target_qvalue_network_params):
        for key, value in params.items(True, True):
            value.data.add_(noise[key])
    td = _batch()
    out = ours(td.clone())
    out_ref = ref(td.clone())
    pairs = {
        "loss_actor": "loss_actor",
        "loss_value": "loss_value",
        "loss_qvalue": "loss_qvalue",
        "entropy": "entropy",
    }
    for k, key_ref in pairs.items():
        torch.testing.assert_close(out[k], out_ref[key_ref])
    # gradients: actor and V parameters are the same leaves in both losses, Q are stacked copies
    groups = ("actor_network_params", "value_off_network_params", "qvalue_off_network_params")
    groups_ref = ("actor_network_params", "value_network_params", "qvalue_network_params")
    for k, key_ref in list(pairs.items())[:3]:
        g = _grads(out[k], ours, groups)
        g_ref = _grads(out_ref[key_ref], ref, groups_ref)
        for group, group_ref in zip(groups, groups_ref):
            for mine, theirs in zip(g[group], g_ref[group_ref]):
                assert (mine is None) == (theirs is None), (k, group)
                if mine is not None:
                    torch.testing.assert_close(mine, theirs)


# ---------------------------------------------------------------------------- gradient reach
def test_each_loss_reaches_only_its_parameters():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.5)
    td = _batch()
    out = loss(td)
    expected = {
        "loss_actor": {"actor_network_params"},
        "loss_value": {"value_off_network_params"},
        "loss_value_on": {"value_on_network_params"},
        "loss_qvalue": {"qvalue_off_network_params"},
        "loss_qvalue_on": {"qvalue_on_network_params"},
    }
    for k, groups in expected.items():
        assert _reached(_grads(out[k], loss)) == groups, k
    # the diagnostics are detached
    for k in loss.out_keys:
        if not k.startswith("loss_"):
            assert not out[k].requires_grad, k
    # target parameters are buffers: no gradient, ever
    targets = [
        loss.target_qvalue_off_network_params,
        loss.target_qvalue_on_network_params,
    ]
    sum(out[k] for k in expected).backward()
    for params in targets:
        for value in params.values(True, True):
            assert not value.requires_grad and value.grad is None
    assert "target_value_off_network_params" not in dict(loss.named_children())


def test_online_pretrain_loss_reaches_only_online_pair():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.5)
    td = _batch()
    total, metadata = loss.online_pretrain_loss(td)
    assert _reached(_grads(total, loss)) == {"qvalue_on_network_params", "value_on_network_params"}
    torch.testing.assert_close(
        total, loss.value_losses(td)["loss_value_on"] + loss.qvalue_losses(td)["loss_qvalue_on"]
    )
    torch.testing.assert_close(metadata["loss_value_on"] + metadata["loss_qvalue_on"], total.detach())
    # Q_on's TD target does not train V_on; V_on's expectile target does not train Q_on
    v_grads = _grads(loss.value_on_loss(td)[0], loss)
    q_grads = _grads(loss.qvalue_on_loss(td)[0], loss)
    assert _reached(v_grads) == {"value_on_network_params"}
    assert _reached(q_grads) == {"qvalue_on_network_params"}


# ---------------------------------------------------------------------------- functional use
def test_online_pretrain_loss_functional_grad_matches_autograd():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.5)
    td = _batch()
    params = loss.online_params().detach().clone()

    def f(p):
        return loss.online_pretrain_loss(td, p)

    grads, (value, metadata) = torch.func.grad_and_value(f, has_aux=True)(params)
    live_loss, _ = loss.online_pretrain_loss(td)
    torch.testing.assert_close(value, live_loss)
    live = loss.online_params()
    live_grads = torch.autograd.grad(live_loss, list(live.values(True, True)))
    for key, g in zip(live.keys(True, True), live_grads):
        torch.testing.assert_close(grads[key], g)
    assert set(metadata) >= {"loss_value_on", "loss_qvalue_on", "state_value_on"}

    # evaluated at ``params``, not at the live parameters
    moved = params.apply(lambda x: x + 0.2 * torch.randn_like(x))
    at_moved, _ = loss.online_pretrain_loss(td, moved)
    assert not torch.allclose(at_moved, live_loss)
    with torch.no_grad():
        for key, value in live.items(True, True):
            value.copy_(moved[key])
    torch.testing.assert_close(loss.online_pretrain_loss(td)[0], at_moved)


def test_meta_objective_second_order_matches_finite_differences():
    """``L_off(p) + L_on(p - alpha grad L_off(p))`` (Eq. 3 / Eq. 8) via torch.func, in float64.

    The Q loss's TD target ``V_on(s')`` is detached (a semi-gradient), so the full objective's
    finite differences are not its gradient in V directions. The check is therefore split: in
    Q-only directions the target is constant and finite differences of the whole meta objective
    apply; in V-only directions the V part of the gradient must be that of Eq. 8 alone (the Q loss
    sends no gradient to V).
    """
    nets = _networks(torch.float64)
    loss = _make_loss(nets, kappa=0.5)
    td_off, td_on = _batch(dtype=torch.float64), _batch(dtype=torch.float64)
    params = loss.online_params().detach().clone()
    alpha = 0.05
    q_key, v_key = loss.online_param_names

    def meta_of(inner_loss):
        def meta(p):
            g = torch.func.grad(lambda x: inner_loss(td_off, x))(p)
            return inner_loss(td_off, p) + inner_loss(td_on, p - alpha * g)

        return meta

    def full(batch, p):
        return loss.online_pretrain_loss(batch, p)[0]

    def value_only(batch, p):  # Eq. 8 on V_on alone
        return loss.value_on_loss(batch, p[v_key])[0]

    meta = meta_of(full)
    meta_v = meta_of(value_only)
    grad = torch.func.grad(meta)(params)
    eps = 1e-6
    for key, objective in ((q_key, meta), (v_key, meta_v)):
        direction = params.apply(torch.zeros_like)
        direction[key] = params[key].apply(torch.randn_like)
        fd = (objective(params + eps * direction) - objective(params - eps * direction)) / (2 * eps)
        torch.testing.assert_close(_dot(grad, direction), fd, rtol=1e-5, atol=1e-8)

    # first-order MAML (no gradient through the inner step) differs: the second-order term is there
    g_off = torch.func.grad(lambda x: full(td_off, x))(params)
    first_order = g_off + torch.func.grad(lambda x: full(td_on, x))(params - alpha * g_off)
    direction = params.apply(torch.randn_like)
    assert not torch.allclose(_dot(first_order, direction), _dot(grad, direction))


def test_soft_update_moves_only_q_targets():
    nets = _networks()
    loss = _make_loss(nets, kappa=0.5)
    updater = SoftUpdate(loss, tau=0.5)
    before = loss.target_qvalue_on_network_params.clone()
    with torch.no_grad():
        for value in loss.qvalue_on_network_params.values(True, True):
            value.add_(1.0)
    updater.step()
    for key, value in loss.target_qvalue_on_network_params.items(True, True):
        torch.testing.assert_close(value, before[key] + 0.5)


# ---------------------------------------------------------------------------- API
def test_out_keys_and_plain_configuration():
    nets = _networks()
    full = _make_loss(nets, kappa=0.2)
    out = full(_batch())
    assert set(out.keys()) == set(full.out_keys)
    plain = _make_loss(_networks(), online=False)
    out_plain = plain(_batch())
    assert set(out_plain.keys()) == set(plain.out_keys)
    assert "loss_value_on" not in out_plain.keys() and "loss_qvalue_on" not in out_plain.keys()
    assert plain.critics == ("off",) and full.critics == ("off", "on")
    with pytest.raises(RuntimeError, match="without qvalue_on_network"):
        plain.online_pretrain_loss(_batch())
    with pytest.raises(RuntimeError, match="without qvalue_on_network"):
        plain.online_params()
    assert full.online_param_names == ("qvalue_on_network_params", "value_on_network_params")
    assert set(full.in_keys) >= {
        "observation",
        "action",
        ("next", "observation"),
        ("next", "reward"),
        ("next", "terminated"),
    }


def test_bad_arguments_raise():
    nets = _networks()
    a, qo, vo, qn, vn = nets["actor"], nets["q_off"], nets["v_off"], nets["q_on"], nets["v_on"]
    with pytest.raises(ValueError, match="come together"):
        OPTIQLLoss(a, qo, vo, qn, None)
    with pytest.raises(ValueError, match="come together"):
        OPTIQLLoss(a, qo, vo, None, vn)
    with pytest.raises(ValueError, match="kappa must lie"):
        OPTIQLLoss(a, qo, vo, qn, vn, kappa=1.5)
    with pytest.raises(ValueError, match="kappa=0.3"):
        OPTIQLLoss(a, qo, vo, kappa=0.3)
    with pytest.raises(ValueError, match="expectile"):
        OPTIQLLoss(a, qo, vo, expectile=1.0)
    with pytest.raises(ValueError, match="temperature"):
        OPTIQLLoss(a, qo, vo, temperature=-1.0)
    with pytest.raises(ValueError, match="max_weight"):
        OPTIQLLoss(a, qo, vo, max_weight=0.0)
    with pytest.raises(ValueError, match="loss_function"):
        OPTIQLLoss(a, qo, vo, loss_function="huber")
    with pytest.raises(ValueError, match="reduction"):
        OPTIQLLoss(a, qo, vo, reduction="max")
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        OPTIQLLoss(a, qo, vo, num_qvalue_nets=3)
    with pytest.raises(TypeError, match="ProbabilisticActor"):
        OPTIQLLoss(make_td3_actor(OBS, _spec(), HIDDEN), qo, vo)


# ---------------------------------------------------------------------------- compile
@pytest.mark.compile
def test_compiled_forward_backward_matches_eager():
    """``torch.compile(fullgraph=True)`` of the full loss; its backward graph comes from AOTAutograd."""
    torch._dynamo.reset()
    nets = _networks()
    loss = _make_loss(nets, kappa=0.4)
    _perturb_(loss.target_qvalue_off_network_params)
    td = _batch()
    keys = ["loss_actor", "loss_value", "loss_value_on", "loss_qvalue", "loss_qvalue_on"]

    def step(batch):
        out = loss(batch)
        return out, sum(out[k] for k in keys)

    def grads_of(total):
        leaves = [v for g in GROUPS for v in getattr(loss, g).values(True, True)]
        return torch.autograd.grad(total, leaves)

    out_eager, total_eager = step(td)
    g_eager = grads_of(total_eager)
    compiled = torch.compile(step, fullgraph=True)
    out_comp, total_comp = compiled(td)
    g_comp = grads_of(total_comp)
    for key in loss.out_keys:
        torch.testing.assert_close(out_comp[key], out_eager[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # kappa is a buffer: a new value is seen without recompiling into a different answer
    loss.kappa.fill_(0.9)
    with torch._dynamo.config.patch(error_on_recompile=True):
        out_comp2, _ = compiled(td)
    torch.testing.assert_close(out_comp2["loss_actor"], step(td)[0]["loss_actor"], rtol=1e-5, atol=1e-6)


@pytest.mark.compile
def test_compiled_functional_online_pretrain_grad_matches_eager():
    """``torch.compile(fullgraph=True)`` of ``grad_and_value(online_pretrain_loss)``."""
    torch._dynamo.reset()
    nets = _networks()
    loss = _make_loss(nets, kappa=0.4)
    td = _batch()
    params = loss.online_params().detach().clone()

    def f(p, batch):
        return torch.func.grad_and_value(
            lambda q: loss.online_pretrain_loss(batch, q)[0]
        )(p)

    g_eager, v_eager = f(params, td)
    g_comp, v_comp = torch.compile(f, fullgraph=True)(params, td)
    torch.testing.assert_close(v_comp, v_eager, rtol=1e-5, atol=1e-6)
    for key, value in g_eager.items(True, True):
        torch.testing.assert_close(g_comp[key], value, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the pipeline's protocol
def test_step_methods_keys_groups_and_functional_steps():
    """The TensorDict step methods (``value_losses``/``qvalue_losses``) and their key and group
    names drive a FunctionalStep to the eager Adam step on ``value_parameters()``."""
    from torchrl_opt.pipeline.functional import make_functional_step

    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        losses.append(_make_loss(_networks(), kappa=0.5))
    eager, functional = losses
    assert eager.value_loss_keys == ("loss_value", "loss_value_on")
    assert eager.qvalue_loss_keys == ("loss_qvalue", "loss_qvalue_on")
    assert eager.value_param_names == ("value_off_network_params", "value_on_network_params")
    assert {id(p) for p in eager.value_parameters()} == {
        id(p) for g in eager.value_param_names for p in getattr(eager, g).values(True, True)
    }
    td = _batch()
    opt = torch.optim.Adam(eager.value_parameters(), lr=1e-2)
    out = eager.value_losses(td)
    sum(out[k] for k in eager.value_loss_keys).backward()
    opt.step()
    step = make_functional_step(functional, functional.value_param_names, functional.value_losses,
                                functional.value_loss_keys, 1e-2)
    metrics = step(td)
    torch.testing.assert_close(metrics["loss_value_on"], out["loss_value_on"].detach())
    for p, q in zip(functional.value_parameters(), eager.value_parameters()):
        torch.testing.assert_close(p, q)
    assert "td_error" not in td.keys()  # the step methods never write into their input


def test_missing_keys_are_named():
    from torchrl_opt.objectives.common import LossInputError

    loss = _make_loss(_networks(), kappa=0.5)
    td = _batch()
    with pytest.raises(LossInputError, match=r"OPTIQLLoss.qvalue_losses needs .*\('next', 'observation'\)"):
        loss.qvalue_losses(td.exclude(("next", "observation")))
    with pytest.raises(LossInputError, match=r"OPTIQLLoss.actor_loss needs the input key\(s\) \['action'\]"):
        loss.actor_loss(td.exclude("action"))


def test_actor_dropout_acts_in_the_loss_not_when_acting():
    """CORL's IQL on Adroit trains its actor with dropout 0.1: :class:`TrainingDropout` zeroes a
    fraction ``p`` of activations and scales the rest by ``1 / (1 - p)`` where gradients flow, is
    the identity under ``no_grad`` (acting, evaluation), and draws independent masks per seed under
    ``vmap(randomness="different")``."""
    from torchrl_opt.models import TrainingDropout

    torch.manual_seed(0)
    drop, x = TrainingDropout(0.25), torch.ones(2, 20_000, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(drop(x), x)
    y = drop(x)
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / 0.75))
    assert abs(float((y == 0).double().mean()) - 0.25) < 0.01
    per_seed = torch.vmap(drop, randomness="different")(x)
    assert not torch.equal(per_seed[0] == 0, per_seed[1] == 0)
    # an actor built with dropout: deterministic when acting, stochastic in its loss's forward pass
    spec = Bounded(-torch.ones(2), torch.ones(2), shape=(2,))
    actor = make_gaussian_actor(3, spec, (64,), dropout=0.5)
    td = TensorDict(observation=torch.randn(16, 3), batch_size=[16])
    with torch.no_grad():
        a, b = actor[0](td.clone())["loc"], actor[0](td.clone())["loc"]
    assert torch.equal(a, b)
    assert not torch.equal(actor[0](td.clone())["loc"], actor[0](td.clone())["loc"])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        TrainingDropout(1.0)
