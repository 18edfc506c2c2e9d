"""The hand-over from offline agents: TorchRL's TD3BCLoss/IQLLoss, offline.pt, plain modules."""

from __future__ import annotations

import copy

import pytest
import torch
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch
from torchrl.objectives import IQLLoss, TD3BCLoss

from torchrl_opt import KappaSchedule, load_offline, opt_loss_from_offline
from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble, make_td3_actor, make_value
from torchrl_opt.objectives import OfflineStateError, OPTIQLLoss, OPTLoss

HIDDEN = (8,)


def _scramble(*groups) -> None:
    """Move parameters away from their initial values (a 'trained' offline agent)."""
    with torch.no_grad():
        for group in groups:
            for p in group.values(True, True):
                if p.requires_grad:
                    p.add_(0.3 * torch.randn_like(p))


def _td3bc():
    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, HIDDEN)
    offline = TD3BCLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), action_spec=spec)
    _scramble(offline.actor_network_params, offline.qvalue_network_params,
              offline.target_qvalue_network_params, offline.target_actor_network_params)
    return spec, actor, offline


def _finetune_loss(actor, spec, **kwargs) -> tuple[OPTLoss, KappaSchedule]:
    loss = OPTLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN),
                   make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), action_spec=spec, **kwargs)
    schedule = KappaSchedule(0.1, 0.9, 10).attach(loss.kappa)
    schedule.step(n=4)
    return loss, schedule


def _assert_group_equal(mine, theirs) -> None:
    assert set(mine.keys(True, True)) == set(theirs.keys(True, True))
    for key, value in theirs.items(True, True):
        assert torch.equal(mine.get(key), value), key


def _assert_kappa_kept(loss, schedule, kappa_before) -> None:
    assert loss.kappa is kappa_before and loss.kappa.item() == pytest.approx(schedule.current)
    schedule.step()
    assert loss.kappa.item() == pytest.approx(schedule.current)  # still attached


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_from_torchrl_td3bc_copies_actor_and_critics_and_keeps_kappa(as_state_dict):
    spec, actor, offline = _td3bc()
    loss, schedule = _finetune_loss(copy.deepcopy(actor), spec)
    q_on_before = loss.qvalue_on_network_params.clone()
    kappa, pointers = loss.kappa, [p.data_ptr() for p in loss.parameters()]

    report = load_offline(loss, offline.state_dict() if as_state_dict else offline)

    _assert_group_equal(loss.actor_network_params, offline.actor_network_params)
    _assert_group_equal(loss.target_actor_network_params, offline.target_actor_network_params)
    _assert_group_equal(loss.qvalue_off_network_params, offline.qvalue_network_params)
    _assert_group_equal(loss.target_qvalue_off_network_params, offline.target_qvalue_network_params)
    _assert_group_equal(loss.qvalue_on_network_params, q_on_before)  # the online critic is fresh
    assert [p.data_ptr() for p in loss.parameters()] == pointers  # copied in place
    _assert_kappa_kept(loss, schedule, kappa)
    assert "kappa" in report.kept and report.meta == {} and report.extras == {}
    kept = ("qvalue_on_network_params.", "target_qvalue_on_network_params.", "kappa",
            "_value_estimator.", "min_action", "max_action")
    assert report.kept and all(k.startswith(kept) for k in report.kept)
    # behaviour: Q_off's TD loss is TD3BCLoss's (same critic, targets, noise)
    batch = transition_batch(8)
    torch.manual_seed(3)
    expected = offline.qvalue_loss(batch.clone())[0]
    torch.manual_seed(3)
    torch.testing.assert_close(loss.qvalue_off_loss(batch.clone())[0], expected)


def test_from_offline_pt_keeps_kappa_and_returns_meta(tmp_path):
    """offline.pt as the pipeline writes it: the offline TD3+BC loss's state_dict and meta."""
    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, HIDDEN)
    offline = OPTLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), action_spec=spec,
                      bc_alpha=2.5, loss_function="l2")
    offline.make_value_estimator(gamma=0.5)
    _scramble(offline.actor_network_params, offline.qvalue_off_network_params,
              offline.target_qvalue_off_network_params)
    meta = {"env_id": "Hopper-v5", "backbone": {"name": "td3", "hidden": list(HIDDEN)},
            "obs_dim": OBS_DIM, "action_dim": ACT_DIM, "normalize_observations": True}
    path = tmp_path / "offline.pt"
    torch.save({"format_version": 2, "meta": meta, "offline_loss": offline.state_dict(), "vae": {},
                "obs_loc": torch.zeros(OBS_DIM), "obs_scale": torch.ones(OBS_DIM)}, path)

    loss, schedule = _finetune_loss(make_td3_actor(OBS_DIM, spec, HIDDEN), spec)
    loss.make_value_estimator(gamma=0.99)
    kappa = loss.kappa
    report = load_offline(loss, path)
    for group in ("actor_network_params", "target_actor_network_params",
                  "qvalue_off_network_params", "target_qvalue_off_network_params"):
        _assert_group_equal(getattr(loss, group), getattr(offline, group))
    _assert_kappa_kept(loss, schedule, kappa)
    assert loss.value_estimator.gamma.item() == pytest.approx(0.99)  # the fine-tuning gamma
    assert report.meta == meta
    assert set(report.extras) == {"vae", "obs_loc", "obs_scale"}
    # the loaded dict works the same; a future format is refused by name
    payload = torch.load(path, weights_only=True)
    load_offline(loss, payload)
    payload["format_version"] = 3
    with pytest.raises(OfflineStateError, match="format_version 3"):
        load_offline(loss, payload)
    with pytest.raises(OfflineStateError, match="No offline checkpoint"):
        load_offline(loss, tmp_path / "missing.pt")


def test_from_plain_modules():
    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, HIDDEN)
    critics = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN)
    loss, schedule = _finetune_loss(make_td3_actor(OBS_DIM, spec, HIDDEN), spec)
    kappa = loss.kappa
    load_offline(loss, {"actor": actor, "qvalue": critics})
    batch = transition_batch(8)
    act = actor.module(batch["observation"])
    torch.testing.assert_close(loss.actor_network.module(batch["observation"]), act)  # same weights
    q = loss.qvalue_off_network_params
    for i, critic in enumerate(critics):
        expected = critic.module(batch["observation"], batch["action"])
        for params in (q[i], loss.target_qvalue_off_network_params[i]):  # targets start equal
            with params.to_module(loss.qvalue_off_network):
                got = loss.qvalue_off_network.module(batch["observation"], batch["action"])
            torch.testing.assert_close(got, expected)
    _assert_kappa_kept(loss, schedule, kappa)


def test_opt_loss_from_offline_builds_from_torchrl_losses():
    spec, actor, offline = _td3bc()
    loss = opt_loss_from_offline(offline, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN),
                                 kappa=0.2)
    assert isinstance(loss, OPTLoss) and loss.has_qvalue_on and loss.kappa.item() == pytest.approx(0.2)
    assert loss.actor_network is actor  # the policy a collector holds keeps acting trained
    _assert_group_equal(loss.qvalue_off_network_params, offline.qvalue_network_params)
    assert torch.equal(loss.max_action, offline.max_action)

    g_actor = make_gaussian_actor(OBS_DIM, spec, HIDDEN)
    iql = IQLLoss(
        g_actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), make_value(OBS_DIM, HIDDEN)
    )
    _scramble(iql.qvalue_network_params, iql.value_network_params, iql.target_qvalue_network_params)
    iql_opt = opt_loss_from_offline(iql, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN),
                                    value_on_network=make_value(OBS_DIM, HIDDEN))
    assert isinstance(iql_opt, OPTIQLLoss) and iql_opt.has_qvalue_on
    batch = transition_batch(8)
    # the offline pair's losses are IQLLoss's (same V, Q and target Q)
    torch.testing.assert_close(iql_opt.value_losses(batch.clone())["loss_value"],
                               iql.value_loss(batch.clone())[0])
    torch.testing.assert_close(iql_opt.qvalue_losses(batch.clone())["loss_qvalue"],
                               iql.qvalue_loss(batch.clone())[0])
    with pytest.raises(TypeError, match="load_offline"):
        opt_loss_from_offline(iql.state_dict())


def test_foreign_missing_and_mismatched_entries_are_named():
    spec, actor, offline = _td3bc()
    loss, _ = _finetune_loss(copy.deepcopy(actor), spec)
    state = offline.state_dict()
    with pytest.raises(OfflineStateError, match=r"lacks: \['foo.bar'\]"):
        load_offline(loss, {**state, "foo.bar": torch.zeros(1)})
    load_offline(loss, {**state, "foo.bar": torch.zeros(1)}, ignore=("foo",))
    partial = {k: v for k, v in state.items() if not k.startswith("target_qvalue")}
    with pytest.raises(OfflineStateError, match=r"does not provide.*target_qvalue_off_network_params"):
        load_offline(loss, partial)
    load_offline(loss, partial, fresh=("target_qvalue_off",))
    wider = OPTLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (16,)), action_spec=spec)
    with pytest.raises(OfflineStateError, match=r"qvalue_off_network_params.*shape \(2, 16, 6\)"):
        load_offline(loss, wider)
    other_bounds = OPTLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN),
                           action_spec=action_spec(-2.0, 2.0))
    with pytest.raises(OfflineStateError, match="action bounds"):
        load_offline(loss, other_bounds)
    iql = IQLLoss(make_gaussian_actor(OBS_DIM, spec, HIDDEN),
                  make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), make_value(OBS_DIM, HIDDEN))
    with pytest.raises(OfflineStateError, match=r"IQLLoss module has entries OPTLoss lacks.*value_off"):
        load_offline(loss, iql)
    with pytest.raises(TypeError, match="source must be"):
        load_offline(loss, 3)


def test_spot_agent_hands_over_its_vae_but_not_the_penalty_schedule():
    from torchrl_opt import SPOTVAE, SPOTDensityPenalty

    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, HIDDEN)
    offline_vae = SPOTVAE(OBS_DIM, ACT_DIM, hidden=HIDDEN)
    offline = OPTLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), action_spec=spec,
                      normalize_q=True, actor_penalty=SPOTDensityPenalty(offline_vae, 0.5))
    penalty = SPOTDensityPenalty(SPOTVAE(OBS_DIM, ACT_DIM, hidden=HIDDEN), 0.5, cooling=True,
                                 cooling_steps=10)
    penalty.step(3)
    lambda_before = penalty.lambda_.item()
    loss, _ = _finetune_loss(actor, spec, normalize_q=True, actor_penalty=penalty)
    load_offline(loss, offline)
    for mine, theirs in zip(penalty.vae.state_dict().values(), offline_vae.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert penalty.step_count == 3 and penalty.lambda_.item() == lambda_before
    # a loss without the penalty takes the agent only when told to skip it
    plain = OPTLoss(actor, make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN), action_spec=spec)
    with pytest.raises(OfflineStateError, match=r"lacks: \['actor_penalty.vae"):
        load_offline(plain, offline)
    load_offline(plain, offline, ignore=("actor_penalty",))
    _assert_group_equal(plain.qvalue_off_network_params, offline.qvalue_off_network_params)
