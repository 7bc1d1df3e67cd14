"""flowkit.vi on a linear-Gaussian model whose evidence and posterior are known in closed form.

z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3): log p(x) = log N(x; b, W W^T + s^2 I); the posterior is
N(mu(x), Sigma) with Sigma = (I + W^T W / s^2)^-1, mu(x) = Sigma W^T (x - b) / s^2.
"""

import inspect
import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal, kl_divergence

import flowkit
from flowkit.flows import DiagonalNormal, StandardNormal
from flowkit.vi import amortized_iaf, elbo, iwae, log_weights, reverse_kl

D, X = 2, 3


class LinearGaussian:
    def __init__(self, dtype=torch.float64, correlated=True):
        g = torch.Generator().manual_seed(1)
        self.W = torch.randn(X, D, generator=g, dtype=dtype)
        if correlated:  # columns far from orthogonal: a strongly correlated posterior
            self.W[:, 1] = 0.9 * self.W[:, 0] + 0.3 * self.W[:, 1]
        self.b = torch.randn(X, generator=g, dtype=dtype)
        self.s = 0.5
        self.x = self.sample(16, g)
        precision = torch.eye(D, dtype=dtype) + self.W.T @ self.W / self.s**2
        self.cov = torch.linalg.inv(precision)
        self.precision = precision
        self.mean = (self.x - self.b) @ self.W @ self.cov / self.s**2

    def sample(self, n, g):
        z = torch.randn(n, D, generator=g, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.s * torch.randn(n, X, generator=g, dtype=self.W.dtype)

    def log_evidence(self):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(X, dtype=self.W.dtype)
        return MultivariateNormal(self.b, cov).log_prob(self.x)

    def log_joint(self, z):
        prior = Independent(Normal(torch.zeros_like(z), 1.0), 1).log_prob(z)
        return prior + Independent(Normal(z @ self.W.T + self.b, self.s), 1).log_prob(self.x)

    def posterior(self):
        return MultivariateNormal(self.mean, self.cov)


@pytest.fixture
def model():
    return LinearGaussian()


def test_exact_posterior_makes_every_bound_the_evidence(model):
    truth = model.log_evidence()
    for q in (model.posterior(), _pyro().MultivariateNormal(model.mean, model.cov)):
        torch.testing.assert_close(elbo(model.log_joint, q, 7), truth, rtol=0, atol=1e-10)
        torch.testing.assert_close(iwae(model.log_joint, q, 50), truth, rtol=0, atol=1e-10)
        # chunks of unequal size: the bound still divides by K, not by the number of chunks
        torch.testing.assert_close(iwae(model.log_joint, q, 50, chunk=16), truth, rtol=0, atol=1e-10)
        assert log_weights(model.log_joint, q, 50, chunk=16).shape == (50, 16)


def _pyro():
    return pytest.importorskip("pyro.distributions")


def test_elbo_gap_is_the_kl_and_iwae_closes_it(model):
    torch.manual_seed(0)
    truth = model.log_evidence()
    loc = model.mean + 0.3
    scale = model.cov.diagonal().sqrt().expand_as(loc) * 1.5
    q = Independent(Normal(loc, scale), 1)
    kl = kl_divergence(MultivariateNormal(loc, torch.diag_embed(scale**2)), model.posterior())
    assert kl.min() > 0.5

    runs = 400
    with torch.no_grad():
        w = log_weights(model.log_joint, q, runs * 1000)          # (runs * 1000, 16)
    elbo_mean, elbo_se = w.mean(0), w.std(0) / math.sqrt(len(w))
    # E[log w] = log p(x) - KL(q || posterior), checked against the closed form
    assert ((elbo_mean - (truth - kl)).abs() < 4 * elbo_se + 1e-3).all()

    means = {}
    for k in (1, 10, 100, 1000):
        bounds = torch.logsumexp(w[: runs * k].reshape(runs, k, -1), 1) - math.log(k)
        means[k] = bounds.mean(0)
        se = bounds.std(0) / math.sqrt(runs)
        assert (means[k] <= truth + 4 * se + 1e-3).all(), k
    for small, large in ((1, 10), (10, 100), (100, 1000)):  # the bound rises with K
        rise = means[large] - means[small]
        assert rise.mean() > 0 and (rise > -0.02).all(), (small, large)
    assert (means[10] > means[1] + 0.1).all()
    gap = truth - means[1000]
    assert (gap < 0.1 * kl).all() and (gap.abs() < 0.05).all()
    # the library's iwae is the same estimator
    bound = torch.stack([iwae(model.log_joint, q, 100) for _ in range(200)]).mean(0)
    assert ((bound - means[100]).abs() < 0.05).all()


def _train(model, posterior, encoder, steps, samples=32, lr=1e-2):
    params = list(posterior.parameters()) + list(encoder.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -elbo(model.log_joint, posterior, samples, context=encoder(model.x)).mean()
        loss.backward()
        optimizer.step()
        schedule.step()


def _kl_to_posterior(model, posterior, encoder, samples=20000):
    """KL(q || p(z|x)) = log p(x) - E_q[log w], estimated, per example."""
    torch.manual_seed(5)
    with torch.no_grad():
        w = log_weights(model.log_joint, posterior, samples, context=encoder(model.x))
    return model.log_evidence() - w.mean(0), w.std(0) / math.sqrt(samples)


def test_amortized_iaf_reaches_the_true_posterior_and_the_diagonal_cannot(model):
    torch.manual_seed(0)
    encoder = nn.Linear(X, 8).double()
    iaf = amortized_iaf(D, 2, [32], context_features=8, seed=0).double()
    _train(model, iaf, encoder, 700)
    kl, se = _kl_to_posterior(model, iaf, encoder)
    assert (kl < 0.03 + 4 * se).all(), kl

    # the best diagonal Gaussian misses by 0.5 (sum log diag(precision) - log det precision)
    kl_best_diagonal = 0.5 * (model.precision.diagonal().log().sum() - torch.logdet(model.precision))
    assert kl_best_diagonal > 0.2
    torch.manual_seed(0)
    encoder = nn.Linear(X, 8).double()
    diagonal = amortized_iaf(D, context_features=8, transforms=0, seed=0).double()
    _train(model, diagonal, encoder, 700)
    kl, se = _kl_to_posterior(model, diagonal, encoder)
    assert (kl > kl_best_diagonal - 4 * se - 1e-3).all()
    assert ((kl - kl_best_diagonal).abs() < 0.03).all(), (kl, kl_best_diagonal)


@pytest.mark.parametrize("bound", ["elbo", "iwae"])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_gradients_reach_encoder_and_flow(model, bound, transformer):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(X, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    options = {"bins": 4} if transformer == "spline" else {}
    q = amortized_iaf(D, 2, [16], context_features=6, transformer=transformer, seed=0, **options).double()
    h = encoder(model.x)
    value = elbo(model.log_joint, q, 3, context=h) if bound == "elbo" else iwae(model.log_joint, q, 5, context=h)
    assert value.shape == (16,)
    value.mean().backward()
    for name, p in [*encoder.named_parameters(), *q.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_reverse_kl_is_kl_minus_log_normaliser():
    mean = torch.tensor([1.0, -0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    target = MultivariateNormal(mean, cov)
    log_z = 3.0
    log_density = lambda z: target.log_prob(z) + log_z  # noqa: E731
    torch.testing.assert_close(reverse_kl(log_density, target, 9), torch.tensor(-log_z, dtype=torch.float64))

    torch.manual_seed(0)
    flow = flowkit.IAF(2, transforms=2, hidden_features=[32], seed=0).double()
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(500):
        optimizer.zero_grad()
        reverse_kl(log_density, flow, 64).mean().backward()
        optimizer.step()
    with torch.no_grad():
        loss = reverse_kl(log_density, flow, 1)
        losses = torch.stack([reverse_kl(log_density, flow, 1000) for _ in range(20)])
    assert loss.shape == ()
    kl = losses.mean() + log_z
    assert 0 <= kl + 4 * losses.std() / math.sqrt(len(losses)) and kl < 0.02, kl
    # independent of log q: a Gaussian with the samples' moments is as close to the target
    z = flow.sample(20000)
    moments = MultivariateNormal(z.mean(0), torch.cov(z.T))
    assert kl_divergence(moments, target) < 0.03


def test_a_flow_and_its_distribution_give_the_same_bound(model):
    q = amortized_iaf(D, 2, [16], context_features=X, seed=3).double()
    torch.manual_seed(7)
    a = elbo(model.log_joint, q, 4, context=model.x)
    torch.manual_seed(7)
    b = elbo(model.log_joint, q.distribution(model.x), 4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unconditional_flow_posterior_shapes():
    flow = flowkit.MAF(2, transforms=1, hidden_features=[8], seed=0)
    w = log_weights(lambda z: -z.pow(2).sum(-1), flow, 6)
    assert w.shape == (6,)
    assert iwae(lambda z: -z.pow(2).sum(-1), flow, 6).shape == ()


def test_amortized_posterior_shapes_and_densities():
    q = amortized_iaf(3, 3, [24], context_features=5, seed=0).double()
    h = torch.randn(4, 2, 5, dtype=torch.float64)
    z, log_q = q.sample_and_log_prob(7, context=h)
    assert z.shape == (7, 4, 2, 3) and log_q.shape == (7, 4, 2)
    # one pass through the IAF agrees with the density of the same points, feature by feature
    torch.testing.assert_close(q.log_prob(z, h), log_q, rtol=0, atol=1e-10)
    torch.testing.assert_close(q.sample(2, h[0, 0]).shape, torch.Size([2, 3]))


def test_diagonal_normal_matches_torch():
    q = DiagonalNormal(3, context_features=4, seed=0).double()
    h = torch.randn(6, 4, dtype=torch.float64)
    loc, scale = q.loc_scale(h)
    z = q.rsample(5, h)
    assert z.shape == (5, 6, 3)
    reference = Independent(Normal(loc, scale), 1).log_prob(z)
    torch.testing.assert_close(q.log_prob(z, h), reference, rtol=0, atol=1e-12)
    # the draws have the stated mean and scale
    many = q.rsample(40000, h[:1])[:, 0]
    torch.testing.assert_close(many.mean(0), loc[0], atol=4 * scale[0].max().item() / 200 + 1e-3, rtol=0)
    torch.testing.assert_close(many.std(0), scale[0], atol=0, rtol=0.02)
    # without context it starts as the standard normal
    p = DiagonalNormal(3).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(p.log_prob(x), StandardNormal(3).log_prob(x), rtol=0, atol=1e-6)
    # seeded, and its state round-trips
    again = DiagonalNormal(3, context_features=4, seed=0).double()
    torch.testing.assert_close(again.log_prob(z, h), q.log_prob(z, h), rtol=0, atol=0)
    other = DiagonalNormal(3, context_features=4, seed=1).double()
    other.load_state_dict(q.state_dict())
    torch.testing.assert_close(other.log_prob(z, h), q.log_prob(z, h), rtol=0, atol=0)


def test_bad_input_is_named(model):
    q = model.posterior()
    with pytest.raises(ValueError, match="samples >= 1"):
        elbo(model.log_joint, q, 0)
    with pytest.raises(TypeError, match="samples to be an int"):
        iwae(model.log_joint, q, 2.5)
    with pytest.raises(TypeError, match="samples to be an int"):
        iwae(model.log_joint, q, True)
    with pytest.raises(ValueError, match="chunk >= 1"):
        iwae(model.log_joint, q, 10, chunk=0)
    with pytest.raises(ValueError, match="takes no context"):
        elbo(model.log_joint, q, 2, context=model.x)
    with pytest.raises(ValueError, match=r"to return shape \(2, 16\)"):
        elbo(lambda z: model.log_joint(z).sum(0), q, 2)
    with pytest.raises(ValueError, match="event_shape"):
        elbo(model.log_joint, Normal(model.mean, 1.0), 2)
    with pytest.raises(ValueError, match="returned NaN"):
        elbo(lambda z: model.log_joint(z) * float("nan"), q, 2)
    with pytest.raises(TypeError, match="expected the posterior"):
        elbo(model.log_joint, object(), 2)
    coin = Independent(Bernoulli(probs=torch.full((3,), 0.5)), 1)
    with pytest.raises(ValueError, match="has no rsample"):
        elbo(lambda z: z.sum(-1) * 0, coin, 2)
    with torch.no_grad():  # evaluation without gradients needs no reparameterisation
        assert elbo(lambda z: z.sum(-1) * 0, coin, 2).item() == pytest.approx(3 * math.log(2))
    flow_q = amortized_iaf(D, context_features=X, transforms=1, hidden_features=[8], seed=0).double()
    with pytest.raises(ValueError, match="this model is conditional"):
        elbo(model.log_joint, flow_q, 2)
    with pytest.raises(ValueError, match=r"context of shape \(\*, 3\)"):
        elbo(model.log_joint, flow_q, 2, context=torch.zeros(16, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="already holds its context"):
        elbo(model.log_joint, flow_q.distribution(model.x), 2, context=model.x)
    with pytest.raises(ValueError, match="context_features to be an int >= 1"):
        amortized_iaf(D, context_features=0, transforms=1, hidden_features=[8])
    with pytest.raises(ValueError, match="transforms to be an int >= 0"):
        amortized_iaf(D, context_features=3, transforms=-1, hidden_features=[8])
    with pytest.raises(ValueError, match="expected hidden_features"):
        amortized_iaf(D, context_features=3, transforms=2)
    with pytest.raises(ValueError, match="takes no hidden_features"):
        amortized_iaf(D, context_features=3, transforms=0, hidden_features=[8])
    with pytest.raises(ValueError, match="features to be an int >= 1"):
        DiagonalNormal(0)


def test_pyro_and_torch_posteriors_agree(model):
    dist = _pyro()
    loc = model.mean
    scale = model.cov.diagonal().sqrt().expand_as(loc)
    torch.manual_seed(3)
    a = log_weights(model.log_joint, Independent(Normal(loc, scale), 1), 5)
    torch.manual_seed(3)
    b = log_weights(model.log_joint, dist.Normal(loc, scale).to_event(1), 5)
    assert a.shape == (5, 16)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("base_context", [0, 5])
def test_a_diagonal_base_draws_and_scores_in_one_pass_under_a_conditional_flow(base_context):
    base = DiagonalNormal(3, context_features=base_context, seed=0).double()
    flow = flowkit.IAF(3, transforms=2, hidden_features=[16], context_features=5, base=base, seed=0).double()
    h = torch.randn(4, 5, dtype=torch.float64)
    x, log_p = flow.sample_and_log_prob(6, context=h)
    assert x.shape == (6, 4, 3) and log_p.shape == (6, 4)
    torch.testing.assert_close(flow.log_prob(x, h), log_p, rtol=0, atol=1e-10)
    z, log_q = base.sample_and_log_prob(6, h if base_context else None)
    torch.testing.assert_close(base.log_prob(z, h if base_context else None), log_q, rtol=0, atol=1e-12)


def test_amortized_iaf_takes_its_arguments_in_the_order_of_iaf():
    positional = amortized_iaf(2, 2, [8], context_features=3, seed=0)
    named = amortized_iaf(2, context_features=3, transforms=2, hidden_features=[8], seed=0)
    assert positional.context_features == named.context_features == 3
    assert positional.state_dict().keys() == named.state_dict().keys()
    for key, value in positional.state_dict().items():
        torch.testing.assert_close(value, named.state_dict()[key], rtol=0, atol=0)
    assert len([m for m in positional.modules() if isinstance(m, flowkit.transforms.MaskedAutoregressive)]) == 2
    ours, iaf = inspect.signature(amortized_iaf).parameters, inspect.signature(flowkit.IAF).parameters
    assert list(ours)[:3] == list(iaf)[:3] == ["features", "transforms", "hidden_features"]
    assert ours["context_features"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["context_features"].default is inspect.Parameter.empty  # required
    assert ours["seed"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("old_call", [
    lambda: amortized_iaf(2, 3),                                       # context_features missing
    lambda: amortized_iaf(2, 3, transforms=2, hidden_features=[8]),    # two values for transforms
    lambda: amortized_iaf(2, 3, 2, [8]),                               # four positional arguments
    lambda: amortized_iaf(2, 3, hidden_features=[8]),                  # context_features missing
])
def test_a_call_in_the_old_order_is_loud(old_call):
    with pytest.raises(TypeError, match="context_features|transforms|positional"):
        old_call()
