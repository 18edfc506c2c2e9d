"""Tests for torchrl_opt.objectives.spot: SPOT's VAE, its loss, negELBO and the density penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torch import nn

from torchrl_opt.objectives.spot import (
    SPOT_LAMBDA_PRESETS,
    SPOTVAE,
    SPOTDensityPenalty,
    SPOTVAELoss,
    UnknownSPOTPresetError,
    VAELoss,
    spot_lambda,
    spot_lambda_preset,
)


# ----------------------------------------------------------------------------- helpers
def _tiny_vae(obs_dim=3, action_dim=2, hidden=(5, 4), low=-1.5, high=2.0, seed=3) -> SPOTVAE:
    torch.manual_seed(seed)
    return SPOTVAE(obs_dim, action_dim, low, high, hidden)


def _np_linear(layer: nn.Linear, x: np.ndarray) -> np.ndarray:
    w = layer.weight.detach().double().numpy()
    b = layer.bias.detach().double().numpy()
    return x @ w.T + b


def _np_mlp(seq: nn.Sequential, x: np.ndarray) -> np.ndarray:
    """Reference MLP in float64 numpy: Linear/ReLU alternating, as models.mlp builds it."""
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        x = np.maximum(_np_linear(layer, x), 0.0)
    return _np_linear(linears[-1], x)


def _np_neg_elbo_terms(vae: SPOTVAE, obs, act, noise, low, high):
    """Independent float64 reference of recon / KL per pair (noise: [B, S, d_z])."""
    obs, act, noise = (np.asarray(t, dtype=np.float64) for t in (obs, act, noise))
    h = _np_mlp(vae.encoder, np.concatenate([obs, act], -1))
    d_z = vae.latent_dim
    mu, log_std = h[:, :d_z], np.clip(h[:, d_z:], -4.0, 15.0)
    std = np.exp(log_std)
    B, S, _ = noise.shape
    recon = np.zeros(B)
    for b in range(B):
        for k in range(S):
            z = mu[b] + std[b] * noise[b, k]
            out = _np_mlp(vae.decoder, np.concatenate([obs[b], z])[None])[0]
            u = (high - low) / 2 * np.tanh(out) + (high + low) / 2
            recon[b] += np.sum((u - act[b]) ** 2)
    recon /= S * act.shape[-1]
    kl = np.mean(0.5 * (mu**2 + std**2 - 1.0 - np.log(std**2)), axis=-1)
    return recon, kl


def _constant_vae(mu, log_std, dec_bias, low=-2.0, high=2.0) -> SPOTVAE:
    """VAE whose encoder outputs constants (mu, log_std) and decoder a constant action."""
    vae = SPOTVAE(2, 1, low, high, hidden=(3, 3))
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.encoder[-1].bias.copy_(torch.tensor([*mu, *log_std]))
        vae.decoder[-1].bias.fill_(dec_bias)
    return vae


# ----------------------------------------------------------------------------- the VAE
def test_vae_architecture_matches_spot():
    vae = SPOTVAE(17, 6, -1.0, 1.0)
    assert vae.latent_dim == 12  # 2 x action_dim
    enc = [m for m in vae.encoder if isinstance(m, nn.Linear)]
    dec = [m for m in vae.decoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in enc] == [(23, 750), (750, 750), (750, 24)]
    assert [(m.in_features, m.out_features) for m in dec] == [(29, 750), (750, 750), (750, 6)]
    assert sum(isinstance(m, nn.ReLU) for m in vae.encoder) == 2
    assert sum(isinstance(m, nn.ReLU) for m in vae.decoder) == 2


def test_encoder_log_std_is_clamped():
    vae = _constant_vae(mu=(0.0, 0.0), log_std=(20.0, -10.0), dec_bias=0.0)
    mean, log_std = vae.encode(torch.zeros(4, 2), torch.zeros(4, 1))
    assert mean.shape == log_std.shape == (4, 2)
    assert torch.equal(log_std, torch.tensor([[15.0, -4.0]]).expand(4, 2))


def test_decoder_bounds_and_unbounded():
    vae = _constant_vae(mu=(0.0, 0.0), log_std=(0.0, 0.0), dec_bias=0.7, low=-1.0, high=3.0)
    out = vae.decode(torch.zeros(5, 2), torch.zeros(5, 2))
    assert torch.allclose(out, torch.full((5, 1), 1.0 + 2.0 * math.tanh(0.7)))
    with torch.no_grad():
        vae.decoder[-1].bias.fill_(50.0)
    assert torch.allclose(vae.decode(torch.zeros(2, 2), torch.zeros(2, 2)), torch.tensor(3.0))
    unbounded = SPOTVAE(2, 1, None, None, hidden=(3, 3))
    with torch.no_grad():
        for p in unbounded.parameters():
            p.zero_()
        unbounded.decoder[-1].bias.fill_(50.0)
    out = unbounded.decode(torch.zeros(2, 2), torch.zeros(2, 2))
    assert torch.equal(out, torch.full((2, 1), 50.0))


def test_prior_samples_are_clipped_latents():
    vae = _tiny_vae()
    obs = torch.randn(64, 3)
    torch.manual_seed(11)
    sampled = vae.sample(obs)
    torch.manual_seed(11)
    z = torch.randn(64, vae.latent_dim)
    assert (z.abs() > 0.5).any()  # the clip is active for this draw
    expected = vae.decode(obs, z.clamp(-0.5, 0.5))
    assert torch.equal(sampled, expected)
    assert not torch.allclose(vae.decode(obs, z), expected)
    assert ((sampled >= -1.5) & (sampled <= 2.0)).all()


def test_vae_rejects_bad_config_and_inputs():
    with pytest.raises(ValueError, match="action_dim must be a positive integer"):
        SPOTVAE(3, 0)
    with pytest.raises(ValueError, match="both action_low and action_high"):
        SPOTVAE(3, 2, None, 1.0)
    with pytest.raises(ValueError, match="must exceed action_low"):
        SPOTVAE(3, 2, 1.0, -1.0)
    with pytest.raises(ValueError, match="log_std_min"):
        SPOTVAE(3, 2, log_std_min=2.0, log_std_max=1.0)
    vae = _tiny_vae()
    with pytest.raises(ValueError, match="observation has last dim 4, expected 3"):
        vae.encode(torch.zeros(2, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="action has last dim 3, expected 2"):
        vae.neg_elbo(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="batch shape"):
        vae.neg_elbo(torch.zeros(2, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="noise must have shape \\(2, 3, 4\\)"):
        vae.neg_elbo(torch.zeros(2, 3), torch.zeros(2, 2), num_samples=3, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        vae.neg_elbo(torch.zeros(2, 3), torch.zeros(2, 2), num_samples=0)


# ----------------------------------------------------------------------------- VAE loss
def test_vae_loss_hand_computation_constant_networks():
    # encoder -> mu = (0.5, -1.0), log_sigma = (0.0, -0.5); decoder -> 2 * tanh(0.3) always
    vae = _constant_vae(mu=(0.5, -1.0), log_std=(0.0, -0.5), dec_bias=0.3)
    loss_fn = SPOTVAELoss(vae)
    actions = torch.tensor([[0.0], [1.0], [-1.0]])
    td = TensorDict(observation=torch.randn(3, 2), action=actions, batch_size=[3])
    out = loss_fn(td)

    # KL(N(mu, s^2) || N(0, 1)) per latent dim = 0.5 * (mu^2 + s^2 - 1 - log s^2), mean over dims
    kl_1 = 0.5 * (0.25 + 1.0 - 1.0 - 0.0)  # 0.125
    kl_2 = 0.5 * (1.0 + math.exp(-1.0) - 1.0 + 1.0)  # 0.6839397...
    kl = (kl_1 + kl_2) / 2
    u = 2.0 * math.tanh(0.3)
    recon = ((u - 0.0) ** 2 + (u - 1.0) ** 2 + (u + 1.0) ** 2) / 3
    assert out["loss_kl"].item() == pytest.approx(kl, rel=1e-6)
    assert out["loss_recon"].item() == pytest.approx(recon, rel=1e-6)
    assert out["loss_vae"].item() == pytest.approx(recon + 0.5 * kl, rel=1e-6)
    assert set(out.keys()) == {"loss_vae", "loss_recon", "loss_kl"}


def test_kl_term_matches_torch_distributions():
    vae = _tiny_vae()
    obs, act = torch.randn(8, 3), torch.rand(8, 2) * 3.5 - 1.5
    _, kl = vae.elbo_terms(obs, act)
    mean, log_std = vae.encode(obs, act)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, log_std.exp()), torch.distributions.Normal(0.0, 1.0)
    ).mean(-1)
    assert torch.allclose(kl, ref, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vae_loss_matches_float64_reference_with_seeded_noise(reduction):
    vae = _tiny_vae()
    loss_fn = VAELoss(vae, beta=0.5, reduction=reduction)
    obs, act = torch.randn(6, 3), torch.rand(6, 2) * 3.5 - 1.5
    td = TensorDict(observation=obs, action=act, batch_size=[6])
    torch.manual_seed(123)
    out = loss_fn(td)
    torch.manual_seed(123)
    noise = torch.randn(6, 1, vae.latent_dim)  # the single reparameterisation sample per pair
    recon, kl = _np_neg_elbo_terms(vae, obs, act, noise, -1.5, 2.0)
    reduce = {"mean": np.mean, "sum": np.sum, "none": lambda x: x}[reduction]
    np.testing.assert_allclose(out["loss_recon"].numpy(), reduce(recon), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["loss_kl"].numpy(), reduce(kl), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        out["loss_vae"].detach().numpy(), reduce(recon + 0.5 * kl), rtol=1e-5, atol=1e-6
    )


def test_vae_loss_gradients_train_the_vae_and_components_are_detached():
    vae = _tiny_vae()
    loss_fn = SPOTVAELoss(vae)
    td = TensorDict(observation=torch.randn(6, 3), action=torch.rand(6, 2), batch_size=[6])
    torch.manual_seed(0)
    out = loss_fn(td)
    assert not out["loss_recon"].requires_grad and not out["loss_kl"].requires_grad
    total = sum(v for k, v in out.items() if k.startswith("loss_"))  # TorchRL's usual pattern
    total.backward()
    grads_sum = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    torch.manual_seed(0)
    loss_fn(td)["loss_vae"].backward()
    for g, p in zip(grads_sum, vae.parameters()):
        assert torch.equal(g, p.grad)
    # the loss's parameters are the VAE's: an optimiser over the loss trains the VAE itself
    before = [p.detach().clone() for p in vae.parameters()]
    torch.optim.SGD(loss_fn.parameters(), lr=0.1).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))


def test_vae_loss_keys_and_errors():
    vae = _tiny_vae()
    loss_fn = SPOTVAELoss(vae)
    assert set(loss_fn.in_keys) == {"observation", "action"}
    loss_fn.set_keys(observation="obs", action=("data", "act"))
    assert set(loss_fn.in_keys) == {"obs", ("data", "act")}
    td = TensorDict(
        {"obs": torch.randn(4, 3), "data": {"act": torch.rand(4, 2)}}, batch_size=[4]
    )
    assert loss_fn(td)["loss_vae"].shape == ()
    assert loss_fn.beta.dtype == torch.float32 and loss_fn.beta.item() == 0.5
    with pytest.raises(TypeError, match="SPOTVAE"):
        SPOTVAELoss(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="reduction"):
        SPOTVAELoss(vae, reduction="max")
    with pytest.raises(ValueError, match="beta must be >= 0"):
        SPOTVAELoss(vae, beta=-1.0)


def test_vae_learns_simple_action_distribution():
    """Actions a = tanh(2 s_0 - s_1) + small noise: the loss must drop markedly in 300 steps."""
    torch.manual_seed(0)
    obs = torch.rand(512, 2) * 2 - 1
    act = (torch.tanh(2 * obs[:, :1] - obs[:, 1:]) * 0.9 + 0.02 * torch.randn(512, 1)).clamp(-1, 1)
    vae = SPOTVAE(2, 1, -1.0, 1.0, hidden=(64, 64))
    loss_fn = SPOTVAELoss(vae)
    opt = torch.optim.Adam(loss_fn.parameters(), lr=1e-3)

    def eval_recon() -> float:
        with torch.no_grad():
            torch.manual_seed(99)
            return loss_fn(TensorDict(observation=obs, action=act, batch_size=[512]))[
                "loss_recon"
            ].item()

    recon_0 = eval_recon()
    for _ in range(300):
        idx = torch.randint(0, 512, (128,))
        out = loss_fn(TensorDict(observation=obs[idx], action=act[idx], batch_size=[128]))
        opt.zero_grad()
        out["loss_vae"].backward()
        opt.step()
    recon_end = eval_recon()
    assert recon_end < 0.05 * recon_0, (recon_0, recon_end)
    # the density model now prefers dataset actions over far-off ones
    with torch.no_grad():
        torch.manual_seed(5)
        on = vae.neg_elbo(obs, act, num_samples=4).mean()
        torch.manual_seed(5)
        off = vae.neg_elbo(obs, -act, num_samples=4).mean()
    assert on < 0.5 * off


# ----------------------------------------------------------------------------- negELBO
def test_neg_elbo_matches_reference_with_seeded_noise():
    vae = _tiny_vae()
    obs, act = torch.randn(5, 3), torch.rand(5, 2) * 3.5 - 1.5
    torch.manual_seed(7)
    got = vae.neg_elbo(obs, act, beta=0.5, num_samples=3)
    torch.manual_seed(7)
    noise = torch.randn(5, 3, vae.latent_dim)
    recon, kl = _np_neg_elbo_terms(vae, obs, act, noise, -1.5, 2.0)
    assert got.shape == (5,)
    np.testing.assert_allclose(got.detach().numpy(), recon + 0.5 * kl, rtol=1e-5, atol=1e-6)
    # explicit noise gives the same values
    assert torch.equal(vae.neg_elbo(obs, act, 0.5, 3, noise=noise), got)


def test_neg_elbo_is_affine_in_true_negative_elbo():
    """With d_z = 2 d_a: negELBO = beta/(2 d_a) * (-ELBO of a N(u, beta/4) decoder) + const."""
    vae = _tiny_vae()
    beta, d_a, S = 0.5, 2, 4
    obs, act = torch.randn(7, 3), torch.rand(7, 2) * 3.5 - 1.5
    noise = torch.randn(7, S, vae.latent_dim)
    ours = vae.neg_elbo(obs, act, beta, S, noise=noise)

    mean, log_std = vae.encode(obs, act)
    z = mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * noise
    u = vae.decode(obs.unsqueeze(1).expand(7, S, 3), z)
    log_px = torch.distributions.Normal(u, math.sqrt(beta / 4)).log_prob(act.unsqueeze(1))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, log_std.exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    neg_elbo_true = -log_px.sum(-1).mean(-1) + kl
    const = -beta / 4 * math.log(math.pi * beta / 2)
    assert torch.allclose(ours, beta / (2 * d_a) * neg_elbo_true + const, atol=1e-5)


def test_neg_elbo_arbitrary_batch_dims():
    vae = _tiny_vae()
    obs, act = torch.randn(2, 3, 3), torch.rand(2, 3, 2)
    noise = torch.randn(2, 3, 2, vae.latent_dim)
    out = vae.neg_elbo(obs, act, num_samples=2, noise=noise)
    flat = vae.neg_elbo(
        obs.reshape(6, 3), act.reshape(6, 2), num_samples=2, noise=noise.reshape(6, 2, -1)
    )
    assert out.shape == (2, 3)
    assert torch.allclose(out.reshape(6), flat, atol=1e-6)


# ----------------------------------------------------------------------------- penalty
def _actor(obs_dim=3, action_dim=2) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(obs_dim, 8), nn.ReLU(), nn.Linear(8, action_dim), nn.Tanh())


def test_penalty_value_shape_and_lambda():
    vae = _tiny_vae()
    pen = SPOTDensityPenalty(vae, 0.25)
    obs, act = torch.randn(6, 3), torch.rand(6, 2)
    td = TensorDict(observation=obs, action=act, batch_size=[6])
    torch.manual_seed(4)
    got = pen(td)
    torch.manual_seed(4)
    ref = 0.25 * vae.neg_elbo(obs, act, 0.5, 1)
    assert got.shape == (6,)
    assert torch.allclose(got, ref)
    assert pen.lambda_.dtype == torch.float32 and pen.lambda_.shape == ()
    assert "lambda_" in dict(pen.named_buffers())


@pytest.mark.parametrize("freeze", [True, False])
def test_penalty_gradient_reaches_actor_but_not_vae(freeze):
    vae = _tiny_vae()
    vae_before = [p.detach().clone() for p in vae.parameters()]
    pen = SPOTDensityPenalty(vae, 1.0, freeze=freeze)
    assert all(p.requires_grad is (not freeze) for p in vae.parameters())
    actor = _actor()
    opt = torch.optim.Adam(list(actor.parameters()) + list(pen.parameters()), lr=1e-2)
    obs = torch.randn(16, 3)
    td = TensorDict(observation=obs, batch_size=[16])
    for _ in range(3):
        td.set("action", actor(obs))
        loss = pen(td).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
        assert all(p.grad is None for p in vae.parameters())  # nothing accumulates into the VAE
        opt.step()
    for b, p in zip(vae_before, vae.parameters()):
        assert torch.equal(b, p)


def test_penalty_action_gradient_matches_finite_differences():
    vae = _tiny_vae().double()
    pen = SPOTDensityPenalty(vae, 0.7, num_samples=2).double()
    obs = torch.randn(3, 3, dtype=torch.float64)
    act = (torch.rand(3, 2, dtype=torch.float64) * 2 - 1).requires_grad_(True)

    def f(a: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(21)  # same latent noise at every evaluation
        return pen(TensorDict(observation=obs, action=a, batch_size=[3])).sum()

    f(act).backward()
    eps = 1e-6
    fd = torch.zeros_like(act)
    for i in range(3):
        for j in range(2):
            d = torch.zeros_like(act)
            d[i, j] = eps
            fd[i, j] = (f(act.detach() + d) - f(act.detach() - d)) / (2 * eps)
    assert torch.allclose(act.grad, fd, rtol=1e-5, atol=1e-7)


def test_spot_lambda_cooling_boundaries():
    lam = 0.25
    # SPOT_TD3.train_online: lambd * max(lambd_end, 1 - total_it / 1e6)
    assert spot_lambda(0, lam) == lam
    assert spot_lambda(1, lam) == pytest.approx(lam * (1 - 1e-6))
    assert spot_lambda(400_000, lam) == pytest.approx(lam * 0.6)
    assert spot_lambda(800_000, lam) == pytest.approx(lam * 0.2)  # floor reached
    assert spot_lambda(800_001, lam) == pytest.approx(lam * 0.2)
    assert spot_lambda(5_000_000, lam) == pytest.approx(lam * 0.2)
    assert spot_lambda(10, lam, cooling=False) == lam
    assert spot_lambda(50, 1.0, lambda_end=0.0, cooling_steps=100) == pytest.approx(0.5)
    assert spot_lambda(150, 1.0, lambda_end=0.0, cooling_steps=100) == 0.0
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        spot_lambda(-1, lam)


def test_penalty_step_updates_buffer_in_place():
    pen = SPOTDensityPenalty(_tiny_vae(), 0.5, cooling=True, cooling_steps=10, lambda_end=0.2)
    captured = pen.lambda_
    assert captured.item() == 0.5
    td = TensorDict(observation=torch.randn(4, 3), action=torch.rand(4, 2), batch_size=[4])
    torch.manual_seed(3)
    at_start = pen(td)
    values = [pen.step() for _ in range(10)]
    torch.manual_seed(3)
    assert torch.allclose(pen(td), at_start * (0.1 / 0.5))  # the penalty uses the new lambda
    expected = [0.5 * max(0.2, 1 - t / 10) for t in range(1, 11)]
    assert values == pytest.approx(expected)
    assert pen.lambda_ is captured and captured.item() == pytest.approx(0.1)
    assert pen.step_count == 10
    assert pen.value(4) == pytest.approx(0.3)

    plain = SPOTDensityPenalty(_tiny_vae(), 0.5)  # cooling off (SPOT's default, offline phase)
    assert plain.step(n=100) == 0.5 and plain.lambda_.item() == 0.5


def test_penalty_state_dict_round_trip():
    pen = SPOTDensityPenalty(_tiny_vae(), 1.0, cooling=True, cooling_steps=100)
    pen.step(n=37)
    sd = pen.state_dict()
    other = SPOTDensityPenalty(_tiny_vae(seed=8), 1.0, cooling=True, cooling_steps=100)
    other.load_state_dict(sd)
    assert other.step_count == 37
    assert other.lambda_.item() == pytest.approx(0.63)
    assert other.step() == pen.step() == pytest.approx(0.62)
    for a, b in zip(pen.vae.parameters(), other.vae.parameters()):
        assert torch.equal(a, b)


def test_penalty_errors():
    vae = _tiny_vae()
    with pytest.raises(TypeError, match="SPOTVAE"):
        SPOTDensityPenalty(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="lambda_ must be >= 0"):
        SPOTDensityPenalty(vae, -1.0)
    with pytest.raises(ValueError, match="relative floor"):
        SPOTDensityPenalty(vae, 1.0, lambda_end=1.5)
    with pytest.raises(ValueError, match="cooling_steps must be a positive integer"):
        SPOTDensityPenalty(vae, 1.0, cooling_steps=0)
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        SPOTDensityPenalty(vae, 1.0).step(n=-2)


def test_lambda_presets_match_spot_configs():
    # SPOT configs/online_finetune/antmaze-*.yml, `lambd:` (copied by hand)
    expected = {
        "umaze": 0.25,
        "umaze-diverse": 0.25,
        "medium-play": 0.05,
        "medium-diverse": 0.025,
        "large-play": 0.025,
        "large-diverse": 0.025,
    }
    assert dict(SPOT_LAMBDA_PRESETS) == {("antmaze", k): v for k, v in expected.items()}
    for dataset, lam in expected.items():
        assert spot_lambda_preset("antmaze", dataset) == lam
    assert spot_lambda_preset("AntMaze", "medium_play") == 0.05
    with pytest.raises(UnknownSPOTPresetError) as info:
        spot_lambda_preset("pen", "cloned")
    assert "antmaze/large-diverse" in str(info.value) and "'pen'" in str(info.value)


# ----------------------------------------------------------------------------- compile
@pytest.mark.compile
def test_compiled_vae_loss_forward_backward_matches_eager():
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    vae = _tiny_vae()
    loss_fn = SPOTVAELoss(vae)
    td = TensorDict(observation=torch.randn(8, 3), action=torch.rand(8, 2), batch_size=[8])
    compiled = torch.compile(loss_fn, fullgraph=True)
    with inductor_config.patch(fallback_random=True):  # same RNG stream as eager
        torch.manual_seed(5)
        out_c = compiled(td)
        out_c["loss_vae"].backward()
    grads_c = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    torch.manual_seed(5)
    out_e = loss_fn(td)
    out_e["loss_vae"].backward()
    for key in ("loss_vae", "loss_recon", "loss_kl"):
        assert torch.allclose(out_c[key], out_e[key], atol=1e-6), key
    for g, p in zip(grads_c, vae.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


@pytest.mark.compile
@pytest.mark.parametrize("freeze", [True, False])
def test_compiled_penalty_fullgraph_sees_lambda_updates(freeze):
    torch._dynamo.reset()
    vae = _tiny_vae()
    pen = SPOTDensityPenalty(vae, 1.0, cooling=True, cooling_steps=4, lambda_end=0.0, freeze=freeze)
    compiled = torch.compile(pen, fullgraph=True, backend="aot_eager")
    obs = torch.randn(4, 3)
    act = torch.rand(4, 2).requires_grad_(True)
    td = TensorDict(observation=obs, action=act, batch_size=[4])
    torch.manual_seed(2)
    first = compiled(td)
    first.sum().backward()
    assert act.grad is not None and act.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())
    pen.step(n=2)  # lambda 1.0 -> 0.5, written in place
    torch.manual_seed(2)
    second = compiled(td)
    assert torch.allclose(second, 0.5 * first.detach(), atol=1e-6)
