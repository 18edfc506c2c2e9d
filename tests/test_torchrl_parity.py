"""OPTLoss is TorchRL's TD3Loss, and OPTIQLLoss is IQLLoss, when built with default arguments.

Both sides are built from deep copies of the same modules (a *list* of critics, so that both stack
the same weights instead of re-drawing them), with the same perturbed target parameters and the
same smoothing noise. Compared: every out key, loss value, gradient, the ``(loss, metadata)``
methods, the ``td_error`` priority written into the input and the priorities a
``TensorDictPrioritizedReplayBuffer`` ends up with (on TorchRL's C++ sum-tree when its extension
loads, else on a plain NumPy segment tree with the same interface: the buffer's Python code, which
reads ``td_error`` and applies ``(p + eps) ** alpha``, is TorchRL's either way).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch
from torchrl.objectives import IQLLoss, TD3Loss

from torchrl_opt.models import make_gaussian_actor, make_qvalue_ensemble, make_td3_actor, make_value
from torchrl_opt.objectives.iql_opt import OPTIQLLoss
from torchrl_opt.objectives.td3_opt import OPTLoss

HIDDEN = (16,)
BATCH = 16
TD3_DIAGNOSTICS = ("pred_value", "next_state_value", "target_value")


def _perturb_together(*groups) -> None:
    """Add the same noise to corresponding leaves of parameter groups (targets != live params)."""
    with torch.no_grad():
        for leaves in zip(*(g.values(True, True) for g in groups)):
            noise = 0.1 * torch.randn_like(leaves[0])
            for leaf in leaves:
                leaf.add_(noise)


def _td3_pair(*, q_on: bool = False, **kwargs) -> tuple[TD3Loss, OPTLoss]:
    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, HIDDEN)
    critics = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN)
    ref = TD3Loss(copy.deepcopy(actor), copy.deepcopy(critics), action_spec=spec)
    on = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN) if q_on else None
    ours = OPTLoss(copy.deepcopy(actor), copy.deepcopy(critics), on, action_spec=spec, **kwargs)
    _perturb_together(ref.target_qvalue_network_params, ours.target_qvalue_off_network_params)
    _perturb_together(ref.target_actor_network_params, ours.target_actor_network_params)
    return ref, ours


def _grads(total: torch.Tensor, *groups) -> list[torch.Tensor | None]:
    leaves = [p for g in groups for p in g.values(True, True) if p.requires_grad]
    return list(torch.autograd.grad(total, leaves, allow_unused=True))


def _assert_same_grads(mine, theirs) -> None:
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- TD3
@pytest.mark.parametrize("weighted", [False, True])
def test_default_optloss_is_torchrl_td3loss(weighted):
    ref, ours = _td3_pair()
    assert ours.loss_function == ref.loss_function == "smooth_l1"
    batch = transition_batch(BATCH)
    if weighted:  # a prioritised buffer's importance weights
        batch["priority_weight"] = torch.rand(BATCH) + 0.5
    td_ref, td_ours = batch.clone(), batch.clone()
    torch.manual_seed(7)
    out_ref = ref(td_ref)
    torch.manual_seed(7)
    out = ours(td_ours)

    assert set(out.keys()) == set(out_ref.keys()) == set(ours.out_keys) == set(ref.out_keys)
    for key in ("loss_actor", "loss_qvalue"):
        torch.testing.assert_close(out[key], out_ref[key])
    for key in TD3_DIAGNOSTICS:  # TorchRL returns them per sample; OPTLoss their batch mean
        torch.testing.assert_close(out[key], out_ref[key].mean())
    # the first critic at the actor's action (TorchRL reports every member)
    torch.testing.assert_close(
        out["state_action_value_actor"], out_ref["state_action_value_actor"][0].mean()
    )
    # the priority TorchRL's prioritised replay reads
    torch.testing.assert_close(td_ours["td_error"], td_ref["td_error"])
    assert td_ours["td_error"].shape == (BATCH,) and not td_ours["td_error"].requires_grad

    groups_ref = (ref.actor_network_params, ref.qvalue_network_params)
    groups = (ours.actor_network_params, ours.qvalue_off_network_params)
    total_ref = out_ref["loss_actor"] + out_ref["loss_qvalue"]
    total = out["loss_actor"] + out["loss_qvalue"]
    _assert_same_grads(_grads(total, *groups), _grads(total_ref, *groups_ref))


def test_td3_methods_return_loss_and_metadata_like_torchrl():
    ref, ours = _td3_pair()
    batch = transition_batch(BATCH)
    torch.manual_seed(3)
    loss_ref, meta_ref = ref.value_loss(batch.clone())
    torch.manual_seed(3)
    loss, meta = ours.value_loss(batch.clone())
    torch.testing.assert_close(loss, loss_ref)
    assert set(meta) == set(meta_ref) == {"td_error", *TD3_DIAGNOSTICS}
    torch.testing.assert_close(meta["td_error"], meta_ref["td_error"])  # [members, batch]
    _assert_same_grads(_grads(loss, ours.qvalue_off_network_params),
                       _grads(loss_ref, ref.qvalue_network_params))

    actor_ref, meta_actor_ref = ref.actor_loss(batch.clone())
    actor, meta_actor = ours.actor_loss(batch.clone())
    torch.testing.assert_close(actor, actor_ref)
    assert set(meta_actor) == set(meta_actor_ref) == {"state_action_value_actor"}
    _assert_same_grads(_grads(actor, ours.actor_network_params),
                       _grads(actor_ref, ref.actor_network_params))


def test_td3_per_sample_outputs_with_reduction_none():
    spec = action_spec()
    actor = make_td3_actor(OBS_DIM, spec, HIDDEN)
    critics = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN)
    ref = TD3Loss(copy.deepcopy(actor), copy.deepcopy(critics), action_spec=spec, reduction="none")
    ours = OPTLoss(copy.deepcopy(actor), copy.deepcopy(critics), action_spec=spec, reduction="none")
    batch = transition_batch(BATCH)
    torch.manual_seed(1)
    out_ref = ref(batch.clone())
    torch.manual_seed(1)
    out = ours(batch.clone())
    for key in ("loss_actor", "loss_qvalue", *TD3_DIAGNOSTICS):
        assert out[key].shape == out_ref[key].shape, key
        torch.testing.assert_close(out[key], out_ref[key])
    assert out["loss_qvalue"].shape == (BATCH,) and out["pred_value"].shape == (2, BATCH)
    torch.testing.assert_close(out["state_action_value_actor"], out_ref["state_action_value_actor"][0])


def test_td3_with_q_on_adds_the_online_twin_and_eq4_actor():
    """With Q_on (kappa=0) the Q_off entries stay TD3Loss's, and Q_on's are TD3Loss's on Q_on's
    critics with the same noise; the priority is the max over both twins."""
    ref, ours = _td3_pair(q_on=True, fuse_critics=True)
    on_critics = [copy.deepcopy(ours.qvalue_on_network) for _ in range(2)]
    ref_on = TD3Loss(copy.deepcopy(ours.actor_network), on_critics, action_spec=action_spec())
    with torch.no_grad():
        for dst, src in ((ref_on.actor_network_params, ours.actor_network_params),
                         (ref_on.target_actor_network_params, ours.target_actor_network_params),
                         (ref_on.qvalue_network_params, ours.qvalue_on_network_params),
                         (ref_on.target_qvalue_network_params, ours.target_qvalue_on_network_params)):
            dst.update_(src)
    batch = transition_batch(BATCH)
    td_ref, td_on, td_ours = batch.clone(), batch.clone(), batch.clone()
    torch.manual_seed(5)
    out_ref = ref(td_ref)
    torch.manual_seed(5)
    out_on = ref_on(td_on)
    torch.manual_seed(5)
    out = ours(td_ours)
    assert set(out.keys()) == set(out_ref.keys()) | {
        f"{k}_on" for k in out_ref.keys() if k != "loss_actor"
    } | {"kappa"}
    for key in ("loss_actor", "loss_qvalue", *TD3_DIAGNOSTICS):
        torch.testing.assert_close(out[key], out_ref[key].mean(), rtol=1e-5, atol=1e-6)
    for key in ("loss_qvalue", *TD3_DIAGNOSTICS):
        torch.testing.assert_close(out[f"{key}_on"], out_on[key].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(td_ours["td_error"], torch.maximum(td_ref["td_error"], td_on["td_error"]))
    # Eq. 4 at kappa = 1 is TD3's actor loss on Q_on
    ours.kappa.fill_(1.0)
    torch.testing.assert_close(ours.actor_loss(batch)[0], ref_on.actor_loss(batch)[0])


def test_priority_key_is_configurable_and_generator_replaces_the_global_rng():
    ref, ours = _td3_pair()
    ref.set_keys(priority="my_priority")
    ours.set_keys(priority="my_priority")
    batch = transition_batch(BATCH)
    td_ref, td_ours = batch.clone(), batch.clone()
    torch.manual_seed(11)
    out_ref = ref(td_ref)
    # the same stream from a seeded generator, while the global RNG sits elsewhere
    ours.generator = torch.Generator().manual_seed(11)
    torch.manual_seed(12345)
    rng_state = torch.get_rng_state()
    out = ours(td_ours)
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG must not be consumed"
    torch.testing.assert_close(out["loss_qvalue"], out_ref["loss_qvalue"])
    assert "td_error" not in td_ours.keys() and "td_error" not in td_ref.keys()
    torch.testing.assert_close(td_ours["my_priority"], td_ref["my_priority"])
    # per call: same seed, same loss; another seed, another loss
    ours.generator = None
    a = ours.qvalue_losses(batch, generator=torch.Generator().manual_seed(11))["loss_qvalue"]
    b = ours.value_loss(batch, generator=torch.Generator().manual_seed(11))[0]
    c = ours.qvalue_losses(batch, generator=torch.Generator().manual_seed(2))["loss_qvalue"]
    torch.testing.assert_close(a, out_ref["loss_qvalue"])
    torch.testing.assert_close(b, out_ref["loss_qvalue"])
    assert not torch.allclose(a, c)
    # the step method never writes into its input (it runs under torch.func / vmap / compile)
    assert "my_priority" not in batch.keys()


def test_select_out_keys_and_optimiser_parameter_helpers_match_torchrl():
    ref, ours = _td3_pair()
    ours.select_out_keys("loss_actor", "loss_qvalue")
    ref.select_out_keys("loss_actor", "loss_qvalue")
    batch = transition_batch(BATCH)
    opt_ref = torch.optim.Adam(list(ref.qvalue_network_params.values(True, True)), lr=1e-2)
    opt = torch.optim.Adam(ours.critic_parameters(), lr=1e-2)
    actor_opt = torch.optim.Adam(ours.actor_parameters(), lr=1e-2)
    assert {id(p) for p in ours.critic_parameters()} == {
        id(p) for p in ours.qvalue_off_network_params.values(True, True)
    }
    assert {id(p) for p in ours.actor_parameters()} == {
        id(p) for p in ours.actor_network_params.values(True, True) if p.requires_grad
    }
    for loss, optim in ((ref, opt_ref), (ours, opt)):
        torch.manual_seed(2)
        out = loss(batch.clone())
        assert set(out.keys()) == {"loss_actor", "loss_qvalue"}
        optim.zero_grad()
        out["loss_qvalue"].backward()
        optim.step()
    actor_opt.zero_grad()  # the critic step left the actor alone
    assert all(p.grad is None for p in ours.actor_parameters())
    for key, value in ref.qvalue_network_params.items(True, True):
        torch.testing.assert_close(ours.qvalue_off_network_params.get(key), value)
    # the kwargs form TorchRL documents for select_out_keys
    ours.reset_out_keys()
    assert "pred_value" in ours.out_keys


# --------------------------------------------------------------------------- IQL
def _iql_pair(**kwargs) -> tuple[IQLLoss, OPTIQLLoss]:
    spec = action_spec()
    actor = make_gaussian_actor(OBS_DIM, spec, HIDDEN)
    critics = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN)
    value = make_value(OBS_DIM, HIDDEN)
    ref = IQLLoss(copy.deepcopy(actor), copy.deepcopy(critics), copy.deepcopy(value), **kwargs)
    ours = OPTIQLLoss(copy.deepcopy(actor), copy.deepcopy(critics), copy.deepcopy(value), **kwargs)
    _perturb_together(ref.target_qvalue_network_params, ours.target_qvalue_off_network_params)
    return ref, ours


def test_default_optiqlloss_is_torchrl_iqlloss():
    ref, ours = _iql_pair()
    assert (ours.expectile, ours.temperature, ours.loss_function) == (
        ref.expectile, ref.temperature, ref.loss_function) == (0.5, 1.0, "smooth_l1")
    batch = transition_batch(BATCH)
    td_ref, td_ours = batch.clone(), batch.clone()
    out_ref, out = ref(td_ref), ours(td_ours)
    assert set(out_ref.keys()) <= set(out.keys()) == set(ours.out_keys)
    assert {k for k in out.keys() if k.startswith("loss_")} == {
        k for k in out_ref.keys() if k.startswith("loss_")}
    for key in out_ref.keys():
        torch.testing.assert_close(out[key], out_ref[key], msg=key)
    torch.testing.assert_close(td_ours["td_error"], td_ref["td_error"])

    pairs = {
        "loss_actor": ("actor_network_params", "actor_network_params"),
        "loss_value": ("value_off_network_params", "value_network_params"),
        "loss_qvalue": ("qvalue_off_network_params", "qvalue_network_params"),
    }
    for key, (mine, theirs) in pairs.items():
        _assert_same_grads(
            _grads(out[key], getattr(ours, mine)), _grads(out_ref[key], getattr(ref, theirs))
        )

    # the (loss, metadata) methods
    for name in ("actor_loss", "value_loss", "qvalue_loss"):
        loss_ref, meta_ref = getattr(ref, name)(batch.clone())
        loss, meta = getattr(ours, name)(batch.clone())
        torch.testing.assert_close(loss, loss_ref, msg=name)
        assert set(meta_ref) <= set(meta), name
    torch.testing.assert_close(
        ours.qvalue_loss(batch)[1]["td_error"], ref.qvalue_loss(batch.clone())[1]["td_error"]
    )


def test_iql_per_sample_outputs_with_reduction_none():
    spec = action_spec()
    actor = make_gaussian_actor(OBS_DIM, spec, HIDDEN)
    critics = make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, HIDDEN)
    value = make_value(OBS_DIM, HIDDEN)
    ref = IQLLoss(copy.deepcopy(actor), copy.deepcopy(critics), copy.deepcopy(value),
                  reduction="none", scalar_output_mode="exclude")
    ours = OPTIQLLoss(copy.deepcopy(actor), copy.deepcopy(critics), copy.deepcopy(value),
                      reduction="none")
    batch = transition_batch(BATCH)
    out_ref, out = ref(batch.clone()), ours(batch.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        assert out[key].shape == (BATCH,)
        torch.testing.assert_close(out[key], out_ref[key])
    assert out["entropy"].shape == (BATCH,) and out["pred_value"].shape == (2, BATCH)


# --------------------------------------------------------------------------- prioritised replay
def _torchrl_extension_error() -> str | None:
    try:
        import torchrl._torchrl  # noqa: F401
    except Exception as err:  # ImportError / OSError: undefined symbols beside this torch build
        return f"{type(err).__name__}: {err}"
    return None


class _SegmentTree:
    """A NumPy stand-in for TorchRL's C++ segment trees (``torchrl._torchrl``): the entries in a
    flat array; ``query(l, r)`` reduces ``[l, r)``; ``scan_lower_bound(m)`` is the first index whose
    inclusive prefix sum exceeds ``m`` (the C++ tree's descent)."""

    neutral = 0.0

    def __init__(self, capacity: int) -> None:
        self.values = np.full(int(capacity), self.neutral, dtype=np.float64)

    def __getitem__(self, index):
        return torch.as_tensor(self.values[np.asarray(torch.as_tensor(index).cpu())])

    def __setitem__(self, index, value) -> None:
        self.values[np.asarray(torch.as_tensor(index).cpu())] = np.asarray(torch.as_tensor(value).cpu())

    def reduce(self, values: np.ndarray) -> float:
        return float(values.sum())

    def query(self, left: int, right: int) -> float:
        return self.reduce(self.values[int(left):int(right)])

    def scan_lower_bound(self, mass):
        return torch.as_tensor(np.searchsorted(np.cumsum(self.values), np.asarray(mass), side="right"))


class _MinSegmentTree(_SegmentTree):
    neutral = float("inf")

    def reduce(self, values: np.ndarray) -> float:
        return float(values.min())


@pytest.fixture
def segment_trees(monkeypatch) -> str:
    """TorchRL's C++ sum/min trees where its extension loads, else the NumPy stand-ins."""
    from torchrl.data.replay_buffers.samplers import prioritized

    if _torchrl_extension_error() is None:
        return "torchrl"
    for bits in ("32", "64"):
        monkeypatch.setattr(prioritized, f"SumSegmentTreeFp{bits}", _SegmentTree)
        monkeypatch.setattr(prioritized, f"MinSegmentTreeFp{bits}", _MinSegmentTree)
    return "numpy"


def test_segment_tree_stand_in_matches_a_prefix_sum_search():
    tree = _SegmentTree(5)
    tree[torch.tensor([0, 2, 3])] = torch.tensor([1.0, 2.0, 0.5])
    assert tree.query(0, 5) == 3.5 and _MinSegmentTree(3).query(0, 3) == float("inf")
    # prefix sums 1, 1, 3, 3.5, 3.5: the first index with a prefix sum above m
    assert tree.scan_lower_bound(np.array([0.0, 0.99, 1.0, 2.9, 3.2])).tolist() == [0, 0, 2, 2, 3]


def test_prioritized_replay_receives_optloss_priorities(segment_trees):
    from torchrl.data import LazyTensorStorage, TensorDictPrioritizedReplayBuffer

    data = transition_batch(64)
    ref, ours = _td3_pair()
    buffers = [
        TensorDictPrioritizedReplayBuffer(
            alpha=0.7, beta=0.5, storage=LazyTensorStorage(64), batch_size=BATCH
        )
        for _ in range(2)
    ]
    for rb in buffers:
        rb.extend(data.clone())
    sample = buffers[0].sample()
    assert {"priority_weight", "index"} <= set(sample.keys())
    for loss, rb in zip((ref, ours), buffers):
        td = sample.clone()
        torch.manual_seed(1)
        loss(td)  # writes td["td_error"], weighting the losses by td["priority_weight"]
        rb.update_tensordict_priority(td)
    rb_ref, rb = buffers
    everything = torch.arange(64)
    tree = torch.as_tensor(rb._sampler._sum_tree[everything]).cpu()
    torch.testing.assert_close(tree, torch.as_tensor(rb_ref._sampler._sum_tree[everything]).cpu())
    index = sample["index"].cpu()
    tree = tree[index]
    # the tree holds TorchRL's (td_error + eps) ** alpha for the rows just updated (rows drawn
    # twice carry two noise draws, and the last write wins: check the rows drawn once)
    once = torch.bincount(index, minlength=64)[index] == 1
    assert once.any()
    torch.manual_seed(1)
    ours(sample)
    expected = (sample["td_error"].cpu() + rb._sampler._eps) ** 0.7
    torch.testing.assert_close(tree[once], expected[once].to(tree.dtype))
