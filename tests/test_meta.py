"""MetaAdaptationLoss: meta-gradients against finite differences and explicit second-order terms."""

from __future__ import annotations

import pytest
import torch
from _helpers import ACT_DIM, OBS_DIM, action_spec, transition_batch, zero_grads
from tensordict import TensorDict

from torchrl_opt.models import make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.common import LossInputError
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.td3_opt import OPTLoss

ALPHA = 0.3  # large enough that the second-order term is far above float64 noise


def _opt_loss(dtype=torch.float64) -> OPTLoss:
    spec = action_spec()
    torch.manual_seed(0)
    loss = OPTLoss(
        make_td3_actor(OBS_DIM, spec, (8,)),
        make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (8,)),
        make_qvalue_ensemble(OBS_DIM, ACT_DIM, 2, (8,)),
        action_spec=spec,
        kappa=0.5,
        policy_noise=0.0,  # deterministic targets, so finite differences are exact up to O(eps^2)
        loss_function="l2",
    )
    return loss.to(dtype)


def _batches(dtype=torch.float64) -> TensorDict:
    g = torch.Generator().manual_seed(1)
    return TensorDict(
        offline=transition_batch(16, generator=g, dtype=dtype),
        online=transition_batch(16, generator=g, dtype=dtype),
    )


def _flat(params) -> list[torch.Tensor]:
    return list(params.values(True, True))


def _td_loss_at(loss: OPTLoss, batch, flat_values: list[torch.Tensor]) -> torch.Tensor:
    """Q_on's TD loss at parameters given as a flat list (independent of torch.func)."""
    params = loss.online_params().clone(False)
    for key, value in zip(list(params.keys(True, True)), flat_values):
        params.set(key, value)
    return loss.online_pretrain_loss(batch, params)[0]


def _reference_objective(loss, batches, flat_values, alpha):
    """F(psi) = L_off(psi) + L_on(psi - alpha * grad L_off(psi)) with plain autograd."""
    psi = [v.detach().requires_grad_(True) for v in flat_values]
    l_off = _td_loss_at(loss, batches["offline"], psi)
    g = torch.autograd.grad(l_off, psi)
    adapted = [p - alpha * gi for p, gi in zip(psi, g)]
    return l_off.detach() + _td_loss_at(loss, batches["online"], adapted).detach()


def _meta_grad(loss, batches, order, mode="meta", **kwargs) -> list[torch.Tensor]:
    meta = MetaAdaptationLoss(loss, mode=mode, order=order, alpha=ALPHA, **kwargs)
    zero_grads(loss)
    meta(batches)["loss_pretrain"].backward()
    return [p.grad.clone() for p in meta.online_parameters()]


def test_second_order_meta_gradient_matches_finite_differences():
    loss = _opt_loss()
    batches = _batches()
    grad = _meta_grad(loss, batches, order=2)
    psi = [p.detach().clone() for p in _flat(loss.online_params())]
    torch.manual_seed(3)
    direction = [torch.randn_like(p) for p in psi]
    eps = 1e-5
    plus = _reference_objective(loss, batches, [p + eps * d for p, d in zip(psi, direction)], ALPHA)
    minus = _reference_objective(loss, batches, [p - eps * d for p, d in zip(psi, direction)], ALPHA)
    finite_difference = (plus - minus) / (2 * eps)
    analytic = sum((g * d).sum() for g, d in zip(grad, direction))
    torch.testing.assert_close(analytic, finite_difference, rtol=1e-6, atol=1e-8)


def test_first_order_differs_by_exactly_the_hessian_term():
    """order2 - order1 = -alpha * H_off(psi) @ grad L_on(psi'), and it is non-zero."""
    loss = _opt_loss()
    batches = _batches()
    g2 = _meta_grad(loss, batches, order=2)
    g1 = _meta_grad(loss, batches, order=1)

    psi = [p.detach().clone().requires_grad_(True) for p in _flat(loss.online_params())]
    l_off = _td_loss_at(loss, batches["offline"], psi)
    g_off = torch.autograd.grad(l_off, psi, create_graph=True)
    adapted = [(p - ALPHA * g).detach().requires_grad_(True) for p, g in zip(psi, g_off)]
    l_on = _td_loss_at(loss, batches["online"], adapted)
    g_on = torch.autograd.grad(l_on, adapted)
    hvp = torch.autograd.grad(g_off, psi, grad_outputs=g_on)  # H_off @ grad L_on(psi')
    second_order = [-ALPHA * h for h in hvp]

    assert sum(s.abs().sum() for s in second_order) > 1e-6
    for a, b, s in zip(g2, g1, second_order):
        torch.testing.assert_close(a - b, s, rtol=1e-7, atol=1e-10)
    # and order 1 is exactly grad L_off(psi) + grad L_on(psi')
    for a, go, gn in zip(g1, g_off, g_on):
        torch.testing.assert_close(a, go.detach() + gn, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("online", lambda off, on: on),
        ("offline", lambda off, on: off),
        ("joint", lambda off, on: off + on),
    ],
)
def test_ablation_modes_are_the_plain_objectives(mode, expected):
    loss = _opt_loss()
    batches = _batches()
    grad = _meta_grad(loss, batches, order=2, mode=mode)
    psi = [p.detach().clone().requires_grad_(True) for p in _flat(loss.online_params())]
    l_off = _td_loss_at(loss, batches["offline"], psi)
    l_on = _td_loss_at(loss, batches["online"], psi)
    reference = torch.autograd.grad(expected(l_off, l_on), psi)
    for a, b in zip(grad, reference):
        torch.testing.assert_close(a, b)


def test_loss_ratio_weighting():
    loss = _opt_loss()
    batches = _batches()
    out = MetaAdaptationLoss(loss, alpha=ALPHA, loss_ratio_weighting=True)(batches)
    l_off, l_on = out["loss_offline"], out["loss_online"]
    torch.testing.assert_close(out["online_weight"], torch.minimum(l_off, l_on) / l_on)
    torch.testing.assert_close(out["loss_pretrain"].detach(), l_off + out["online_weight"] * l_on)
    assert not out["online_weight"].requires_grad


def test_only_q_on_receives_gradients():
    loss = _opt_loss()
    meta = MetaAdaptationLoss(loss, alpha=ALPHA)
    meta(_batches())["loss_pretrain"].backward()
    online = {id(p) for p in meta.online_parameters()}
    assert online == {id(p) for p in loss.qvalue_on_network_params.values(True, True)}
    for name, p in loss.named_parameters():
        if id(p) in online:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_default_order_is_first_order():
    loss = _opt_loss()
    batches = _batches()
    assert MetaAdaptationLoss(loss).order == 1
    meta = MetaAdaptationLoss(loss, alpha=ALPHA)
    zero_grads(loss)
    meta(batches)["loss_pretrain"].backward()
    default = [p.grad.clone() for p in meta.online_parameters()]
    for a, b in zip(default, _meta_grad(loss, batches, order=1)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.allclose(a, b) for a, b in zip(default, _meta_grad(loss, batches, order=2)))


def test_flat_or_incomplete_input_names_the_layout():
    loss = _opt_loss()
    meta = MetaAdaptationLoss(loss)
    flat = transition_batch(4, dtype=torch.float64)
    with pytest.raises(LossInputError, match=r"(?s)'offline'.*'online'.*lacks \['offline', 'online'\]"
                       r".*TensorDict\(offline=offline_batch, online=online_batch\)"):
        meta(flat)
    with pytest.raises(LossInputError, match=r"lacks \['online'\]"):
        meta(TensorDict(offline=flat))
    # a sub-batch missing a transition key: the wrapped loss names it
    broken = TensorDict(offline=flat, online=flat.exclude(("next", "reward")))
    with pytest.raises(LossInputError, match=r"(?s)OPTLoss.qvalue_on_loss.*\('next', 'reward'\)"):
        meta(broken)


def test_bad_configuration():
    loss = _opt_loss()
    with pytest.raises(ValueError, match="mode"):
        MetaAdaptationLoss(loss, mode="maml")
    with pytest.raises(ValueError, match="order"):
        MetaAdaptationLoss(loss, order=3)
    with pytest.raises(TypeError, match="online critics"):
        MetaAdaptationLoss(torch.nn.Linear(2, 2))


@pytest.mark.compile
@pytest.mark.parametrize("order", [1, 2])
def test_meta_loss_compiles_without_graph_breaks(order):
    loss = _opt_loss(torch.float32)
    loss.policy_noise = 0.2
    batches = _batches(torch.float32)
    meta = MetaAdaptationLoss(loss, alpha=ALPHA, order=order)

    def step(td):
        return meta(td)["loss_pretrain"]

    compiled = torch.compile(step, fullgraph=True)
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(4)
        eager_value = step(batches)
        eager_value.backward()
        eager_grads = [p.grad.clone() for p in meta.online_parameters()]
        zero_grads(loss)
        torch.manual_seed(4)
        compiled_value = compiled(batches)
        compiled_value.backward()
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-5, atol=1e-6)
    for a, b in zip(meta.online_parameters(), eager_grads):
        torch.testing.assert_close(a.grad, b, rtol=1e-4, atol=1e-6)


def test_seed_batched_pretrain_step_equals_single_runs():
    """The default (first-order) meta step under ``vmap`` over 2 seeds (SeedBatchedStep) equals
    each seed's own functional step."""
    from torchrl_opt.pipeline.functional import SeedBatchedStep, make_functional_step

    def build(seed):
        torch.manual_seed(seed)
        return _opt_loss(torch.float32)

    singles = [build(0), build(1)]
    stacked = [build(0), build(1)]
    batches = _batches(torch.float32)

    def step_of(loss):
        return make_functional_step(loss, loss.online_param_names,
                                    MetaAdaptationLoss(loss, alpha=ALPHA), ("loss_pretrain",), 1e-2)

    expected = [step_of(loss)(batches)["loss_pretrain"] for loss in singles]
    batched = SeedBatchedStep(stacked, step_of(stacked[0]))
    out = batched(torch.stack([batches, batches], 0))
    torch.testing.assert_close(out["loss_pretrain"], torch.stack(expected), rtol=1e-5, atol=1e-6)
    for single, seed in zip(singles, stacked):
        for p, q in zip(single.online_params().values(True, True),
                        seed.online_params().values(True, True)):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
