"""Functional update steps (torch.func gradient + tensor Adam + Polyak) against the eager pipeline.

The eager reference is the pipeline's own ``make_step`` (``backward`` + ``torch.optim.Adam`` +
``SoftUpdate``/``TargetUpdate``) built by the pipeline's update engine; the
functional steps are built on an identically initialised agent and must land on the same
parameters, targets and losses.
"""

from __future__ import annotations

import pytest
import torch
from _helpers import action_spec, transition_batch
from tensordict import TensorDict
from torch import nn

from torchrl_opt.models import make_qvalue_ensemble, make_td3_actor
from torchrl_opt.objectives.meta import MetaAdaptationLoss
from torchrl_opt.objectives.td3_opt import OPTLoss
from torchrl_opt.pipeline.agents import make_agent
from torchrl_opt.pipeline.config import AccelerationConfig, BackboneConfig, OnlinePretrainConfig, RunConfig
from torchrl_opt.pipeline.functional import (
    FunctionalAdam,
    FunctionalStep,
    FunctionalStepError,
    SeedBatchedStep,
    make_functional_step,
    stack_seeds,
    target_update_pairs,
)
from torchrl_opt.pipeline.updates import (
    TargetUpdate,
    UpdateEngine,
    loss_method,
    soft_update_keeping_targets,
)

OBS, ACT, BATCH, STEPS = 5, 2, 32, 3
EAGER = AccelerationConfig(compile=False, cudagraphs=False)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- builders
def _batches(device="cpu", n=STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [transition_batch(BATCH, OBS, ACT, generator=g).to(device) for _ in range(n)]


def _pairs(batches):
    return [TensorDict(offline=b, online=b.apply(lambda x: x.flip(0))) for b in batches]


def _agent(name, device="cpu", *, finetune=True, pretrain_cfg=None):
    torch.manual_seed(0)
    cfg = RunConfig(backbone=BackboneConfig(name=name, hidden=[16, 16]), acceleration=EAGER)
    if pretrain_cfg is not None:
        cfg.online_pretrain = pretrain_cfg
    agent = make_agent(cfg, OBS, action_spec().to(device), device)
    if finetune:
        agent.start_online(q_on=True, kappa=0.4)
    return agent


def _pipeline_updates(agent, kind):
    """The steps the pipeline builds for one seed (the ``module`` engine)."""
    engine = UpdateEngine(1, agent.device, EAGER)
    assert engine.kind == "module"
    return [engine.build([agent.loss_for(kind)], d) for d in agent.update_defs(kind)]


def _groups(loss, *names):
    return tuple(name for name in names if name in loss._modules)


def functional_specs(loss, cfg) -> list[tuple[str, FunctionalStep, int]]:
    """The functional twin of ``agents.td3_update_defs``: ``(name, step, every)``."""
    pairs, weight = target_update_pairs(soft_update_keeping_targets(loss, cfg.tau), loss)
    critic = _groups(loss, "qvalue_off_network_params", "qvalue_on_network_params")
    qvalue_keys = loss.qvalue_loss_keys
    actor_loss = loss_method(loss.actor_loss, "loss_actor")
    if cfg.name == "iql":
        value = _groups(loss, "value_off_network_params", "value_on_network_params")
        return [
            ("value", make_functional_step(loss, value, loss.value_losses, loss.value_loss_keys,
                                           cfg.value_lr), 1),
            ("actor", make_functional_step(loss, ("actor_network_params",), actor_loss,
                                           ("loss_actor",), cfg.actor_lr), 1),
            ("qvalue", make_functional_step(loss, critic, loss.qvalue_losses, qvalue_keys,
                                            cfg.critic_lr, target_updater_pairs=pairs,
                                            tau=weight), 1),
        ]
    return [
        ("critic", make_functional_step(loss, critic, loss.qvalue_losses, qvalue_keys,
                                        cfg.critic_lr), 1),
        ("actor", make_functional_step(loss, ("actor_network_params",), actor_loss,
                                       ("loss_actor",), cfg.actor_lr,
                                       target_updater_pairs=pairs, tau=weight), cfg.actor_delay),
    ]


def functional_pretrain(loss, cfg: OnlinePretrainConfig, tau: float) -> FunctionalStep:
    """The functional twin of the agents' ``pretrain`` update."""
    meta = MetaAdaptationLoss(loss, mode=cfg.mode, order=cfg.order, alpha=cfg.alpha,
                              loss_ratio_weighting=cfg.loss_ratio_weighting)
    pairs, weight = target_update_pairs(TargetUpdate(loss, loss.online_param_names, tau), loss)
    return make_functional_step(loss, loss.online_param_names, meta, ("loss_pretrain",), cfg.lr,
                                target_updater_pairs=pairs, tau=weight)


def _run_eager(agent, kind, batches, pretrain_cfg=None):
    losses = []
    if kind == "pretrain":
        (spec,) = _pipeline_updates(agent, "pretrain")
        for i, b in enumerate(_pairs(batches)):
            torch.manual_seed(100 + i)
            losses.append(spec.step(b)["loss_pretrain"].clone())
    else:
        updates = _pipeline_updates(agent, kind)
        for i, b in enumerate(batches):
            for spec in updates:
                if i % spec.every:
                    continue
                torch.manual_seed(100 + i)
                out = spec.step(b)
                losses += [out[k].clone() for k in sorted(out.keys()) if k.startswith("loss")]
    return losses


def _run_functional(agent, kind, batches, pretrain_cfg=None, wrap=lambda step: step):
    losses = []
    loss = agent.finetune_loss if kind != "offline" else agent.offline_loss
    if kind == "pretrain":
        step = wrap(functional_pretrain(loss, pretrain_cfg, agent.cfg.tau))
        for i, b in enumerate(_pairs(batches)):
            torch.manual_seed(100 + i)
            losses.append(step(b)["loss_pretrain"].clone())
    else:
        specs = [(n, wrap(s), every) for n, s, every in functional_specs(loss, agent.cfg)]
        for i, b in enumerate(batches):
            for _, step, every in specs:
                if i % every:
                    continue
                torch.manual_seed(100 + i)
                out = step(b)
                losses += [out[k].clone() for k in sorted(out.keys()) if k.startswith("loss")]
    return losses


def _state(agent, kind):
    loss = agent.finetune_loss if kind != "offline" else agent.offline_loss
    return {k: v.detach().clone() for k, v in loss.state_dict().items()}


def _assert_same_run(name, kind, *, exact, pretrain_cfg=None, wrap=lambda s: s):
    batches = _batches()
    eager, fun = (_agent(name, finetune=kind != "offline", pretrain_cfg=pretrain_cfg) for _ in range(2))
    before = _state(fun, kind)
    eager_losses = _run_eager(eager, kind, batches, pretrain_cfg)
    fun_losses = _run_functional(fun, kind, batches, pretrain_cfg, wrap)
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-4, "atol": 1e-5}
    assert len(eager_losses) == len(fun_losses) > 0
    for a, b in zip(eager_losses, fun_losses):
        torch.testing.assert_close(b, a, **tol)
    eager_state, fun_state = _state(eager, kind), _state(fun, kind)
    assert eager_state.keys() == fun_state.keys()
    moved = 0
    for key in eager_state:
        torch.testing.assert_close(fun_state[key], eager_state[key], **tol, msg=key)
        moved += not torch.equal(fun_state[key], before[key])
    assert moved > 0  # the steps did train something


# --------------------------------------------------------------------------- FunctionalAdam
@pytest.mark.parametrize(
    "kwargs, torch_cls",
    [
        ({}, torch.optim.Adam),
        ({"weight_decay": 0.1}, torch.optim.Adam),
        ({"weight_decay": 0.1, "decoupled_weight_decay": True}, torch.optim.AdamW),
        ({"betas": (0.5, 0.9), "eps": 1e-6}, torch.optim.Adam),
    ],
)
def test_functional_adam_equals_torch_adam_bit_for_bit(kwargs, torch_cls):
    torch.manual_seed(0)
    ref = [torch.randn(7, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    params = TensorDict({"a": {"w": ref[0].detach().clone()}, "b": ref[1].detach().clone()}, [])
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "decoupled_weight_decay"}
    opt = torch_cls(ref, lr=0.01, **torch_kwargs)
    fadam = FunctionalAdam(params, lr=0.01, **kwargs)
    for _ in range(6):
        grads = [torch.randn_like(p) for p in ref]
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        opt.step()
        fadam.step(TensorDict({"a": {"w": grads[0]}, "b": grads[1]}, []))
    assert torch.equal(params["a", "w"], ref[0].detach())
    assert torch.equal(params["b"], ref[1].detach())
    state = opt.state[ref[0]]
    assert torch.equal(fadam.state["exp_avg", "a", "w"], state["exp_avg"])
    assert torch.equal(fadam.state["exp_avg_sq", "a", "w"], state["exp_avg_sq"])
    assert fadam.state["step"].item() == state["step"].item() == 6


def test_functional_adam_first_step_is_lr_times_sign():
    # closed form: from zero moments, m_1 / (1 - beta1) = g and sqrt(v_1 / (1 - beta2)) = |g|, so
    # the first step is theta <- theta - lr * g / (|g| + eps).
    params = TensorDict({"w": torch.zeros(5)}, [])
    g = torch.tensor([1.0, -2.0, 0.5, -0.25, 3.0], dtype=torch.float64)
    adam = FunctionalAdam(params, lr=0.1)
    adam.step(TensorDict({"w": g.float()}, []))
    expected = -0.1 * g / (g.abs() + 1e-8)
    torch.testing.assert_close(params["w"], expected.float(), rtol=1e-6, atol=1e-7)


def test_functional_adam_update_is_pure_and_state_dict_round_trips():
    params = TensorDict({"w": torch.ones(3)}, [])
    adam = FunctionalAdam(params, lr=0.1)
    grads = TensorDict({"w": torch.tensor([1.0, -1.0, 2.0])}, [])
    new_params, new_state = adam.update(params, grads, adam.state)
    assert torch.equal(params["w"], torch.ones(3)) and adam.state["step"].item() == 0
    assert new_state["step"].item() == 1 and not torch.equal(new_params["w"], params["w"])
    adam.step(grads)
    saved = adam.state_dict()
    adam.step(grads)
    other = FunctionalAdam(TensorDict({"w": torch.ones(3)}, []), lr=0.5)
    exp_avg = other.state["exp_avg", "w"]
    other.load_state_dict(saved)
    assert other.state["exp_avg", "w"] is exp_avg  # loaded in place, for captured graphs
    assert other.lr == 0.1 and other.state["step"].item() == 1
    torch.testing.assert_close(other.state["exp_avg", "w"], saved["state"]["exp_avg.w"])
    with pytest.raises(FunctionalStepError, match="does not match"):
        FunctionalAdam(TensorDict({"v": torch.ones(3)}, []), lr=0.1).load_state_dict(saved)
    with pytest.raises(FunctionalStepError, match="shape"):
        FunctionalAdam(TensorDict({"w": torch.ones(4)}, []), lr=0.1).load_state_dict(saved)
    with pytest.raises(FunctionalStepError, match="lr"):
        FunctionalAdam(params, lr=0.0)
    with pytest.raises(FunctionalStepError, match="no parameters"):
        FunctionalAdam(TensorDict({}, []), lr=0.1)


# --------------------------------------------------------------------------- steps vs make_step
@pytest.mark.parametrize("name, kind", [("td3", "offline"), ("td3", "finetune"), ("iql", "finetune")])
def test_functional_steps_equal_pipeline_make_step(name, kind):
    """Critic/actor(+targets) steps, IQL value/actor/qvalue(+targets): same bits as eager Adam."""
    _assert_same_run(name, kind, exact=True)


@pytest.mark.parametrize(
    "name, cfg",
    [
        ("td3", OnlinePretrainConfig(alpha=0.1, order=2)),
        ("td3", OnlinePretrainConfig(alpha=0.1, order=1)),
        ("td3", OnlinePretrainConfig(mode="joint", loss_ratio_weighting=True)),
        ("iql", OnlinePretrainConfig(alpha=0.1, order=2)),
    ],
)
def test_functional_meta_pretrain_step_equals_eager_meta_gradient(name, cfg):
    """Nested grad_and_value (outer step around the meta loss's inner one) gives the eager
    second-order (and first-order) meta-gradient: same Q_on/V_on and targets after 3 Adam steps."""
    _assert_same_run(name, "pretrain", exact=True, pretrain_cfg=cfg)


def test_second_order_meta_step_differs_from_first_order():
    # guards the test above from passing because both orders collapse to the same update
    batches = _batches()
    params = []
    for order in (1, 2):
        agent = _agent("td3")
        step = functional_pretrain(agent.finetune_loss, OnlinePretrainConfig(alpha=0.5, order=order,
                                                                            lr=1e-2), 0.005)
        for b in _pairs(batches):
            torch.manual_seed(0)
            step(b)
        params.append(torch.cat([p.flatten() for p in step.params.values(True, True)]))
    assert not torch.allclose(params[0], params[1], rtol=1e-5, atol=1e-7)


def test_grad_clipping_matches_clip_grad_norm():
    batches = _batches()
    losses = []
    for functional in (False, True):
        agent = _agent("td3")
        loss = agent.finetune_loss
        names = ("qvalue_off_network_params", "qvalue_on_network_params")
        keys = loss.qvalue_loss_keys
        if functional:
            step = make_functional_step(loss, names, loss.qvalue_losses, keys, 1e-3,
                                        max_grad_norm=0.05)
        else:  # backward, torch's clip_grad_norm_, torch.optim.Adam
            params = [p for n in names for p in getattr(loss, n).values(True, True)]
            optimizer = torch.optim.Adam(params, lr=1e-3)

            def step(batch):
                out = loss.qvalue_losses(batch)
                sum(out[k] for k in keys).backward()
                torch.nn.utils.clip_grad_norm_(params, 0.05)
                optimizer.step()
                optimizer.zero_grad()
        for i, b in enumerate(batches):
            torch.manual_seed(i)
            step(b)
        losses.append(torch.cat([p.detach().flatten() for p in loss.parameters()]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-7)


def test_functional_step_rejects_bad_configuration():
    loss = _agent("td3").finetune_loss
    keys = ("loss_qvalue",)
    with pytest.raises(FunctionalStepError, match="no parameter group 'critic_params'"):
        make_functional_step(loss, ("critic_params",), loss.qvalue_losses, keys, 1e-3)
    with pytest.raises(FunctionalStepError, match="param_names is empty"):
        make_functional_step(loss, (), loss.qvalue_losses, keys, 1e-3)
    with pytest.raises(FunctionalStepError, match="loss_keys is empty"):
        make_functional_step(loss, ("qvalue_off_network_params",), loss.qvalue_losses, (), 1e-3)
    with pytest.raises(FunctionalStepError, match="tau"):
        make_functional_step(loss, ("qvalue_off_network_params",), loss.qvalue_losses, keys, 1e-3,
                             tau=1.5)
    with pytest.raises(FunctionalStepError, match="no nn.Parameter"):
        make_functional_step(loss, ("target_qvalue_off_network_params",), loss.qvalue_losses,
                             keys, 1e-3)
    with pytest.raises(FunctionalStepError, match="target pairs"):
        target_update_pairs(object(), loss)


def test_functional_step_trains_only_its_groups_and_returns_detached_metrics():
    agent = _agent("td3")
    loss = agent.finetune_loss
    step = functional_specs(loss, agent.cfg)[0][1]  # the critic step, no target update
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    out = step(_batches(n=1)[0])
    assert not any(v.requires_grad for v in out.values(True, True))
    assert set(out.keys()) >= {"loss_qvalue", "loss_qvalue_on"}
    for key, value in loss.state_dict().items():
        changed = not torch.equal(value, before[key])
        assert changed == (key.startswith(("qvalue_off_network_params", "qvalue_on_network_params"))
                           and not key.startswith("target")), key
    # the live parameters are still the loss's own nn.Parameter objects
    assert all(isinstance(p, nn.Parameter) for p in step.params.values(True, True))
    ids = {id(p) for p in loss.qvalue_on_network_params.values(True, True)}
    assert ids <= {id(p) for p in step.params.values(True, True)}


# --------------------------------------------------------------------------- seed batching
def _opt_loss(seed, policy_noise=0.0):
    torch.manual_seed(seed)
    spec = action_spec()
    return OPTLoss(
        make_td3_actor(OBS, spec, (16,)),
        make_qvalue_ensemble(OBS, ACT, 2, (16,)),
        make_qvalue_ensemble(OBS, ACT, 2, (16,)),
        action_spec=spec,
        kappa=0.3,
        policy_noise=policy_noise,
    )


def _critic_step(loss):
    return make_functional_step(
        loss, ("qvalue_off_network_params", "qvalue_on_network_params"), loss.qvalue_losses,
        ("loss_qvalue", "loss_qvalue_on"), 1e-3,
    )


def _actor_step(loss):
    pairs, weight = target_update_pairs(soft_update_keeping_targets(loss, 0.05), loss)
    return make_functional_step(loss, ("actor_network_params",),
                                loss_method(loss.actor_loss, "loss_actor"), ("loss_actor",), 1e-3,
                                target_updater_pairs=pairs, tau=weight)


def _meta_step(loss):
    return functional_pretrain(loss, OnlinePretrainConfig(alpha=0.3, lr=1e-3), 0.05)


def _seed_batch(S, pair, g):
    def one():
        b = transition_batch(BATCH, OBS, ACT, generator=g)
        return TensorDict(offline=b, online=transition_batch(BATCH, OBS, ACT, generator=g)) if pair else b

    return torch.stack([one() for _ in range(S)])


@pytest.mark.parametrize("make, pair", [(_critic_step, False), (_actor_step, False),
                                        (_meta_step, True)])
def test_seed_batched_step_equals_independent_runs(make, pair):
    S = 3
    single_losses = [_opt_loss(s) for s in range(S)]
    singles = [make(loss) for loss in single_losses]
    losses = [_opt_loss(s) for s in range(S)]
    batched = SeedBatchedStep(losses, make(losses[0]))
    g = torch.Generator().manual_seed(3)
    key = next(iter(batched.step.loss_keys))
    for _ in range(STEPS):
        batch = _seed_batch(S, pair, g)
        expected = torch.stack([step(batch[i])[key] for i, step in enumerate(singles)])
        out = batched(batch)
        assert out.batch_size == torch.Size([S])
        torch.testing.assert_close(out[key], expected, rtol=1e-6, atol=1e-7)
    for i in range(S):  # parameters, targets and Adam state of every seed
        for (name, a), (_, b) in zip(single_losses[i].state_dict().items(),
                                     losses[i].state_dict().items()):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
        for key_, value in singles[i].optimizer.state.items(True, True):
            torch.testing.assert_close(batched.optimizer.state.get(key_)[i], value,
                                       rtol=1e-6, atol=1e-7)


def test_seed_batched_noise_is_independent_per_seed():
    """Identical seeds on identical batches: 'different' randomness draws different TD3 target
    noise per seed (losses differ), 'same' shares it (losses equal)."""
    results = {}
    for randomness in ("different", "same"):
        losses = [_opt_loss(0, policy_noise=0.5) for _ in range(3)]
        batched = SeedBatchedStep(losses, _critic_step(losses[0]), randomness=randomness)
        batch = torch.stack([_batches(n=1)[0]] * 3)
        torch.manual_seed(0)
        results[randomness] = batched(batch)["loss_qvalue"]
    assert torch.allclose(results["same"], results["same"][0].expand(3))
    assert not torch.allclose(results["different"][0], results["different"][1])


def test_stack_seeds_shares_storage_and_validates():
    losses = [_opt_loss(s) for s in range(2)]
    groups = stack_seeds(losses)
    assert groups.batch_size == torch.Size([2])
    w = groups["qvalue_on_network_params", "module", "net", "0", "weight"]
    assert w.shape[:2] == (2, 2)  # seeds x twin members
    with torch.no_grad():
        w.add_(1.0)
    assert torch.equal(losses[1].qvalue_on_network_params["module", "net", "0", "weight"], w[1])
    with pytest.raises(FunctionalStepError, match="at least one"):
        stack_seeds([])
    small = OPTLoss(make_td3_actor(OBS, action_spec(), (8,)), make_qvalue_ensemble(OBS, ACT, 2, (8,)),
                    action_spec=action_spec())
    with pytest.raises(FunctionalStepError, match="different parameter groups"):
        stack_seeds([_opt_loss(0), small])
    batched = SeedBatchedStep(losses, _critic_step(losses[0]))
    with pytest.raises(FunctionalStepError, match="leading seed dimension"):
        batched(_batches(n=1)[0])
    with pytest.raises(FunctionalStepError, match="template"):
        SeedBatchedStep(losses, _critic_step(losses[1]))


# --------------------------------------------------------------------------- compile
@pytest.mark.compile
def test_compiled_functional_meta_step_is_one_graph_and_matches_eager():
    """fullgraph=True: forward, outer + inner grad, Adam and Polyak update in one graph."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    with torch._inductor.config.patch(fallback_random=True):
        _assert_same_run("td3", "pretrain", exact=False, pretrain_cfg=OnlinePretrainConfig(alpha=0.1),
                         wrap=lambda step: torch.compile(step, fullgraph=True))


@pytest.mark.compile
def test_compiled_functional_actor_step_is_one_graph():
    loss = _opt_loss(0)
    step = _actor_step(loss)
    reference = _actor_step(_opt_loss(0))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    for b in _batches(n=2):
        torch.testing.assert_close(compiled(b)["loss_actor"], reference(b)["loss_actor"])
    assert len(graphs) == 1
    for a, b in zip(loss.state_dict().values(), reference.loss_module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.compile
def test_compiled_seed_batched_step_is_one_graph():
    S = 2
    losses = [_opt_loss(s) for s in range(S)]
    reference = [_opt_loss(s) for s in range(S)]
    ref_steps = [_critic_step(loss) for loss in reference]
    batched = SeedBatchedStep(losses, _critic_step(losses[0]))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(batched, fullgraph=True, backend=backend)
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        batch = _seed_batch(S, False, g)
        out = compiled(batch)
        for i in range(S):
            torch.testing.assert_close(out["loss_qvalue_on"][i], ref_steps[i](batch[i])["loss_qvalue_on"],
                                       rtol=1e-6, atol=1e-7)
    assert len(graphs) == 1
    for i in range(S):
        for a, b in zip(losses[i].parameters(), reference[i].parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- CUDA
def _cuda_graphed(step):
    from tensordict.nn import CudaGraphModule

    return CudaGraphModule(torch.compile(step, fullgraph=True), warmup=2, device=torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("name, kind", [("td3", "finetune"), ("td3", "pretrain"), ("iql", "finetune")])
def test_compiled_and_graphed_functional_steps_match_eager_on_cuda(name, kind):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    batches = _batches("cuda", n=STEPS + 2)
    cfg = OnlinePretrainConfig(alpha=0.1)
    eager = _agent(name, "cuda", pretrain_cfg=cfg)
    fun = _agent(name, "cuda", pretrain_cfg=cfg)
    with torch._inductor.config.patch(fallback_random=True):
        eager_losses = _run_eager(eager, kind, batches, cfg)
        fun_losses = _run_functional(fun, kind, batches, cfg, wrap=_cuda_graphed)
    for a, b in zip(eager_losses, fun_losses):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for (key, a), b in zip(_state(eager, kind).items(), _state(fun, kind).values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.gpu
def test_graphed_seed_batched_step_equals_independent_runs_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    S = 3
    single_losses = [_opt_loss(s).cuda() for s in range(S)]
    singles = [_critic_step(loss) for loss in single_losses]
    losses = [_opt_loss(s).cuda() for s in range(S)]
    batched = _cuda_graphed(SeedBatchedStep(losses, _critic_step(losses[0])))
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        batch = _seed_batch(S, False, g).cuda()
        expected = torch.stack([step(batch[i])["loss_qvalue"] for i, step in enumerate(singles)])
        torch.testing.assert_close(batched(batch)["loss_qvalue"], expected, rtol=1e-4, atol=1e-5)
    for i in range(S):
        for a, b in zip(single_losses[i].parameters(), losses[i].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
