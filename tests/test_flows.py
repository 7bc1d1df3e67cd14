"""Tests of the flows: normalisation, sampling and its log-densities, the Distribution interface,
fitting, MAF MoG, autoregressive checks, state dicts, argument checks and CUDA."""

import dataclasses
import inspect
import io
import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import flowkit
from flowkit import IAF, MADE, MAF, MADEMoG, check_autoregressive
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.flows import AutoregressiveFlowBuilder, DiagonalNormal, Flow, FlowDistribution, StandardNormal
from flowkit.transforms import Affine, MaskedAutoregressive
from flowkit.transforms.autoregressive import TRANSFORMER_OPTIONS

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


SPLINE = {"transformer": "spline", "bins": 4, "bound": 3.0}


def prepared(model, factor=1.0):
    """``model`` in float64 and eval mode, its weights scaled by ``factor``; affine layers start
    from a unit scale (``softplus(u) = 1``), so a MAF's density does not spread over the plane.
    Flows given here are built with ``identity_init=False``: the tests want layers far from the
    identity (``tests/test_init.py`` covers the identity start)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
        for m in model.modules():
            if isinstance(m, MaskedAutoregressive) and isinstance(m.transformer, Affine):
                m.made.layers[-1].bias.view(m.features, 2)[:, 0] += math.log(math.e - 1)
    return model.double().eval()


def normal_log_prob(x):
    return -0.5 * (x.pow(2).sum(-1) + x.shape[-1] * math.log(2 * math.pi))


def quad_total(model, context=None):
    def density(x):
        with torch.no_grad():
            return model.log_prob(torch.tensor([[x]], dtype=torch.float64), context).exp().item()

    total, error = integrate.quad(density, -np.inf, np.inf, limit=200)
    assert error < 1e-4
    return total


def simpson_total(model, half_width=30.0, points=200_001):
    x = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    with torch.no_grad():
        density = model.log_prob(x[:, None]).exp()
    assert density[0] < 1e-12 and density[-1] < 1e-12
    return integrate.simpson(density.numpy(), x=x.numpy())


def grid(n=600, half_width=8.0):
    h = 2 * half_width / n
    centres = torch.linspace(-half_width + h / 2, half_width - h / 2, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2), h * h


ONE_D = {
    "maf-affine": (lambda: prepared(MAF(1, 3, [8], identity_init=False, seed=0), 3.0), quad_total),
    "iaf-affine": (lambda: prepared(IAF(1, 3, [8], identity_init=False, seed=0), 3.0), quad_total),
    "mademog": (lambda: prepared(MADEMoG(1, 3, [8], seed=0), 3.0), quad_total),
    "maf-mog": (lambda: prepared(MAF(1, 2, [8], base=MADEMoG(1, 3, [8], seed=5), identity_init=False, seed=0), 3.0),
                quad_total),
    "maf-spline": (lambda: prepared(MAF(1, 3, [8], **SPLINE, identity_init=False, seed=0), 2.0), simpson_total),
    "iaf-spline": (lambda: prepared(IAF(1, 3, [8], **SPLINE, identity_init=False, seed=0), 2.0), simpson_total),
}


@pytest.mark.parametrize("kind", ONE_D)
def test_one_dimensional_flows_integrate_to_one(kind):
    build, integrate_ = ONE_D[kind]
    model = build()
    assert integrate_(model) == pytest.approx(1.0, abs=1e-3)
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)[:, None]
    with torch.no_grad():
        assert (model.log_prob(x) - normal_log_prob(x)).abs().max() > 0.5


TWO_D = {
    "maf-affine": (lambda: prepared(MAF(2, 3, [16, 16], identity_init=False, seed=2), 1.5), None),
    "maf-spline": (lambda: prepared(MAF(2, 2, [16, 16], **SPLINE, identity_init=False, seed=0), 1.25), None),
    "iaf-affine": (lambda: prepared(IAF(2, 3, [16, 16], identity_init=False, seed=0), 1.25), None),
    "maf-mog": (lambda: prepared(MAF(2, 2, [16], base=MADEMoG(2, 3, [16], seed=1), identity_init=False, seed=0), 1.0),
                None),
    "conditional-maf-spline": (lambda: prepared(MAF(2, 2, [16, 16], **SPLINE, context_features=3, identity_init=False,
                                                    seed=0), 1.25),
                               [0.5, -1.0, 2.0]),
    "conditional-maf-affine": (lambda: prepared(MAF(2, 3, [16, 16], context_features=3, identity_init=False, seed=0),
                                                1.0),
                               [0.5, -1.0, 2.0]),
}


@pytest.mark.parametrize("kind", TWO_D)
def test_two_dimensional_flows_integrate_to_one_on_a_grid(kind):
    build, context = TWO_D[kind]
    model = build()
    context = None if context is None else torch.tensor(context, dtype=torch.float64)
    points, area = grid()
    with torch.no_grad():
        density = model.log_prob(points, context).exp()
    assert density.sum().item() * area == pytest.approx(1.0, abs=1e-3)
    total_variation = 0.5 * (density - normal_log_prob(points).exp()).abs().sum().item() * area
    assert total_variation > 0.2


def test_conditional_flow_changes_with_the_context():
    model = TWO_D["conditional-maf-spline"][0]()
    points, area = grid()
    with torch.no_grad():
        a = model.log_prob(points, torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)).exp()
        b = model.log_prob(points, torch.tensor([-2.0, 1.0, 0.0], dtype=torch.float64)).exp()
    assert b.sum().item() * area == pytest.approx(1.0, abs=1e-3)
    assert 0.5 * (a - b).abs().sum().item() * area > 0.1


FLOWS = {
    "maf-affine": lambda: prepared(MAF(3, 3, [16, 16], context_features=2, identity_init=False, seed=0), 1.5),
    "maf-spline": lambda: prepared(MAF(3, 3, [16, 16], context_features=2, **SPLINE, identity_init=False, seed=1), 1.5),
    "iaf-affine": lambda: prepared(IAF(3, 3, [16, 16], context_features=2, identity_init=False, seed=2), 1.5),
    "iaf-spline": lambda: prepared(IAF(3, 3, [16, 16], context_features=2, **SPLINE, identity_init=False, seed=3), 1.5),
    "maf-batch-norm": lambda: prepared(MAF(3, 3, [16, 16], context_features=2, batch_norm=True,
                                           permutation="random", identity_init=False, seed=4), 1.5),
}


@pytest.mark.parametrize("kind", FLOWS)
def test_sample_and_log_prob_agrees_with_log_prob(kind):
    flow = FLOWS[kind]()
    context = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, log_p = flow.sample_and_log_prob(50, context, generator=torch.Generator().manual_seed(1))
    assert x.shape == (50, 4, 3) and log_p.shape == (50, 4)
    torch.testing.assert_close(flow.log_prob(x, context), log_p, rtol=0, atol=1e-8)
    assert log_p.std() > 0.1


@pytest.mark.parametrize("kind", FLOWS)
def test_sampling_without_gradients_matches_the_graph_path(kind):
    flow = FLOWS[kind]()
    context = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = flow.sample(30, context, generator=torch.Generator().manual_seed(3))
    x_graph = flow.rsample(30, context, generator=torch.Generator().manual_seed(3))
    assert x.grad_fn is None and x_graph.grad_fn is not None
    torch.testing.assert_close(x, x_graph, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        log_p = flow.log_prob(x, context)
    torch.testing.assert_close(log_p, flow.log_prob(x, context), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_unconditional_sample_and_log_prob_agrees_with_log_prob(factory):
    flow = prepared(factory(3, 3, [16], identity_init=False, seed=5), 1.5)
    x, log_p = flow.sample_and_log_prob((2, 3))
    assert x.shape == (2, 3, 3) and log_p.shape == (2, 3)
    torch.testing.assert_close(flow.log_prob(x), log_p, rtol=0, atol=1e-8)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_an_iaf_layer_is_the_inverse_of_the_maf_layer_with_the_same_seed(transformer):
    options = SPLINE if transformer == "spline" else {}
    maf = prepared(MAF(3, 1, [16], context_features=2, identity_init=False, seed=23, **options), 1.5)
    iaf = prepared(IAF(3, 1, [16], context_features=2, identity_init=False, seed=23, **options), 1.5)
    generator = torch.Generator().manual_seed(24)
    z = torch.randn(10, 3, dtype=torch.float64, generator=generator)
    context = torch.randn(10, 2, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(iaf.transform.inverse(z, context), maf.transform(z, context), rtol=0, atol=0)
    torch.testing.assert_close(iaf.transform(z, context), maf.transform.inverse(z, context), rtol=0, atol=0)


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_sample_shapes(factory):
    flow = factory(3, 2, [16], seed=6)
    assert flow.sample(()).shape == (3,)
    assert flow.sample(5).shape == (5, 3)
    assert flow.sample((2, 3)).shape == (2, 3, 3)
    assert flow.sample(torch.Size([2])).shape == (2, 3)
    conditional = factory(3, 2, [16], context_features=2, seed=6)
    assert conditional.sample(4, torch.randn(3, 2)).shape == (4, 3, 3)
    assert conditional.sample((), torch.randn(2)).shape == (3,)
    assert conditional.sample((2, 5), torch.randn(7, 2)).shape == (2, 5, 7, 3)


def test_samples_are_reproducible_with_a_generator():
    flow = MAF(3, 2, [16], seed=7)
    a = flow.sample(5, generator=torch.Generator().manual_seed(3))
    b = flow.sample(5, generator=torch.Generator().manual_seed(3))
    c = flow.sample(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_samples():
    assert MAF(3, 2, [16], seed=6).sample(0).shape == (0, 3)


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_log_prob_batch_dims_and_broadcast_context(factory):
    flow = prepared(factory(3, 2, [16], context_features=2, identity_init=False, seed=8), 1.5)
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(5, 3, 3, dtype=torch.float64, generator=generator)
    context = torch.randn(3, 2, dtype=torch.float64, generator=generator)

    log_p = flow.log_prob(x, context)
    assert log_p.shape == (5, 3)
    flat = flow.log_prob(x.reshape(15, 3), context.repeat(5, 1))
    torch.testing.assert_close(log_p, flat.view(5, 3), rtol=0, atol=1e-12)

    one = flow.log_prob(x[0, 0], context)
    assert one.shape == (3,)
    torch.testing.assert_close(one, flow.log_prob(x[0, 0].expand(3, 3), context), rtol=0, atol=1e-12)
    assert flow.log_prob(x[:, :1], context[None]).shape == (5, 3)

    unconditional = factory(3, 2, [16], seed=8)
    assert unconditional.log_prob(torch.randn(2, 4, 3)).shape == (2, 4)
    assert unconditional.log_prob(torch.randn(3)).shape == ()


@pytest.mark.parametrize("factory", [MAF, IAF])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_rsample_gradients_reach_every_parameter(factory, transformer):
    flow = factory(3, 3, [16], transformer=transformer, context_features=2, seed=9)
    x = flow.rsample(64, torch.randn(2))
    assert x.requires_grad
    x.pow(2).sum().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_sample_has_no_gradient(factory):
    flow = factory(3, 2, [16], seed=10)
    x = flow.sample(8)
    assert not x.requires_grad and x.grad_fn is None
    assert flow.rsample(8).grad_fn is not None


def test_distribution_interface():
    flow = prepared(MAF(3, 2, [16], context_features=2, identity_init=False, seed=11), 1.5)
    context = torch.randn(4, 2, dtype=torch.float64)
    q = flow.distribution(context)
    assert isinstance(q, torch.distributions.Distribution) and isinstance(q, FlowDistribution)
    assert q.batch_shape == (4,) and q.event_shape == (3,) and q.has_rsample
    assert q.sample().shape == (4, 3)
    assert q.sample((5,)).shape == (5, 4, 3)
    x = q.rsample((5,))
    assert x.shape == (5, 4, 3) and x.grad_fn is not None
    assert q.log_prob(x).shape == (5, 4)
    torch.testing.assert_close(q.log_prob(x), flow.log_prob(x, context))

    plain = prepared(MAF(3, 2, [16], identity_init=False, seed=11)).distribution()
    assert plain.batch_shape == () and plain.event_shape == (3,)
    assert plain.sample((2, 6)).shape == (2, 6, 3)


def gaussian_of(flow):
    """The normal distribution of a 1-D affine flow, from its noise-to-data map at 0 and 1."""
    with torch.no_grad():
        x, _ = flow.transform.inverse(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    return torch.distributions.Normal(x[0, 0], (x[1, 0] - x[0, 0]).abs())


def test_distribution_monte_carlo_kl_matches_the_closed_form():
    q_flow = prepared(MAF(1, 2, [8], identity_init=False, seed=12), 2.0)
    p_flow = prepared(MAF(1, 2, [8], identity_init=False, seed=13), 2.0)
    q_normal, p_normal = gaussian_of(q_flow), gaussian_of(p_flow)
    x = torch.linspace(-5, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(q_flow.log_prob(x[:, None]), q_normal.log_prob(x), rtol=0, atol=1e-10)

    q, p = q_flow.distribution(), p_flow.distribution()
    torch.manual_seed(14)
    samples = q.rsample((40_000,))
    terms = q.log_prob(samples) - p.log_prob(samples)
    estimate, error = terms.mean(), terms.std() / math.sqrt(terms.numel())
    exact = torch.distributions.kl_divergence(q_normal, p_normal)
    assert exact > 0.1
    assert abs(estimate.item() - exact.item()) < 4 * error.item() + 1e-3

    estimate.backward()
    assert all(p.grad is not None for p in q_flow.parameters())


def test_fit_a_correlated_gaussian():
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.5]])
    cholesky = torch.linalg.cholesky(cov)
    generator = torch.Generator().manual_seed(0)
    flow = MAF(2, 5, [16], seed=0)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    steps = 400
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    for _ in range(steps):
        batch = mean + torch.randn(256, 2, generator=generator) @ cholesky.T
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    x = flow.eval().sample(20_000, generator=torch.Generator().manual_seed(100))
    assert (x.mean(0) - mean).abs().max() < 0.1
    assert (torch.cov(x.T) - cov).abs().max() < 0.1
    for i in range(2):
        marginal = stats.norm(mean[i].item(), cov[i, i].sqrt().item())
        assert stats.kstest(x[:2000, i].numpy(), marginal.cdf).pvalue > 1e-3


def test_fit_a_bimodal_mixture_with_mademog():
    weights, means, scales = [0.3, 0.7], [-2.0, 1.5], [0.5, 0.7]
    generator = torch.Generator().manual_seed(2)
    model = MADEMoG(1, 2, [8], seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    steps = 1000
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    for _ in range(steps):
        k = (torch.rand(256, generator=generator) < weights[1]).long()
        batch = torch.tensor(means)[k] + torch.tensor(scales)[k] * torch.randn(256, generator=generator)
        loss = -model.log_prob(batch[:, None]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    components = [(w, stats.norm(m, s)) for w, m, s in zip(weights, means, scales)]

    def cdf(x):
        return sum(w * normal.cdf(x) for w, normal in components)

    x = model.sample(2000, generator=torch.Generator().manual_seed(102))
    assert stats.kstest(x[:, 0].numpy(), cdf).pvalue > 1e-3
    grid_ = torch.linspace(-5, 5, 201)[:, None]
    with torch.no_grad():
        fitted = model.log_prob(grid_).exp()
    truth = torch.tensor(sum(w * normal.pdf(grid_[:, 0].numpy()) for w, normal in components))
    assert (fitted - truth).abs().max() < 0.03


def test_maf_mog():
    flow = TWO_D["maf-mog"][0]()
    assert isinstance(flow.base, MADEMoG) and flow.features == 2
    generator = torch.Generator().manual_seed(15)
    x = 3 * torch.randn(100, 2, dtype=torch.float64, generator=generator)
    log_p = flow.log_prob(x)
    assert log_p.shape == (100,) and torch.isfinite(log_p).all()
    assert flow.sample((4, 5), generator=generator).shape == (4, 5, 2)
    samples, log_p = flow.sample_and_log_prob(50, generator=generator)
    torch.testing.assert_close(flow.log_prob(samples), log_p, rtol=0, atol=1e-8)

    points, area = grid()
    with torch.no_grad():
        density = flow.log_prob(points).exp()
    mean = (points * density[:, None]).sum(0) * area
    std = ((points - mean).pow(2) * density[:, None]).sum(0).sqrt() * math.sqrt(area)
    samples = flow.sample(4000, generator=generator)
    assert ((samples.mean(0) - mean).abs() < 5 * std / math.sqrt(4000)).all()


def test_conditional_maf_mog():
    base = MADEMoG(2, 3, [16], context_features=2, seed=1)
    flow = prepared(MAF(2, 2, [16], base=base, context_features=2, identity_init=False, seed=0))
    context = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    samples, log_p = flow.sample_and_log_prob(5, context, generator=torch.Generator().manual_seed(17))
    assert samples.shape == (5, 3, 2)
    torch.testing.assert_close(flow.log_prob(samples, context), log_p, rtol=0, atol=1e-8)
    points, area = grid()
    with torch.no_grad():
        assert flow.log_prob(points, context[0]).exp().sum().item() * area == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("factory", [MAF, IAF])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_check_autoregressive_on_every_made(factory, transformer):
    flow = factory(4, 3, [16, 16], transformer=transformer, context_features=2, batch_norm=True,
                   permutation="random", seed=16)
    mades = [m for m in flow.modules() if isinstance(m, MADE)]
    assert len(mades) == 3
    for made in mades:
        position = torch.argsort(made.order)
        assert torch.equal(check_autoregressive(made), position[None, :] < position[:, None])


def test_state_dict_round_trip():
    def build(seed):
        return MAF(3, 3, [16], context_features=2, batch_norm=True, permutation="random", seed=seed, **SPLINE)

    source = build(0)
    generator = torch.Generator().manual_seed(17)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
        for _ in range(3):
            x = 2 * torch.randn(64, 3, generator=generator) + 1
            source.log_prob(x, torch.randn(64, 2, generator=generator))
    source.eval()
    target = build(1).eval()
    x = torch.randn(20, 3, generator=generator)
    context = torch.randn(20, 2, generator=generator)
    assert not torch.allclose(target.log_prob(x, context), source.log_prob(x, context))
    target.sample(6, context[:2])

    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    assert torch.equal(target.log_prob(x, context), source.log_prob(x, context))
    a = source.sample(6, context[:2], generator=torch.Generator().manual_seed(5))
    b = target.sample(6, context[:2], generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_conditional_flows_check_the_context(factory):
    flow = factory(2, 2, [8], context_features=3, seed=18)
    x = torch.randn(4, 2)
    for call in (lambda: flow.log_prob(x), lambda: flow.sample(4), lambda: flow.rsample(4),
                 lambda: flow.sample_and_log_prob(4), lambda: flow.distribution()):
        with pytest.raises(ValueError, match="context"):
            call()
    for call in (lambda: flow.log_prob(x, torch.randn(4, 2)), lambda: flow.sample(4, torch.randn(2)),
                 lambda: flow.distribution(torch.randn(5, 4))):
        with pytest.raises(ValueError, match=r"context of shape \(\*, 3\)"):
            call()
    with pytest.raises(ValueError, match="broadcast"):
        flow.log_prob(torch.randn(5, 2), torch.randn(4, 3))

    unconditional = factory(2, 2, [8], seed=18)
    for call in (lambda: unconditional.log_prob(x, torch.randn(4, 3)),
                 lambda: unconditional.sample(4, torch.randn(3)),
                 lambda: unconditional.distribution(torch.randn(3))):
        with pytest.raises(ValueError, match="unconditional"):
            call()


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_flow_checks_x(factory):
    flow = factory(2, 2, [8], seed=19)
    with pytest.raises(ValueError, match=r"\(\*, 2\)"):
        flow.log_prob(torch.randn(4, 3))
    with pytest.raises(TypeError, match="floating"):
        flow.log_prob(torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]]))


@pytest.mark.parametrize("factory", [MAF, IAF])
@pytest.mark.parametrize("arguments", [
    {"transforms": 0}, {"transforms": -1}, {"transforms": True}, {"transforms": 2.0},
    {"permutation": "sideways"}, {"transformer": "foo"},
])
def test_bad_factory_arguments(factory, arguments):
    options = {"transforms": 2, **arguments}
    wrong_type = isinstance(options["transforms"], (bool, float))  # a count of the wrong type: TypeError
    with pytest.raises(TypeError if wrong_type else ValueError, match="transforms|permutation|transformer"):
        factory(2, hidden_features=[8], **options)


def test_training_a_float32_batch_norm_maf_on_float64_data():
    flow = MAF(2, 2, [8], batch_norm=True, seed=20).train()
    assert torch.isfinite(flow.log_prob(torch.randn(16, 2, dtype=torch.float64))).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
class TestCuda:
    @pytest.mark.parametrize("factory", [MAF, IAF])
    @pytest.mark.parametrize("transformer", ["affine", "spline"])
    def test_log_prob_matches_cpu(self, factory, transformer):
        flow = factory(3, 2, [16], transformer=transformer, context_features=2, seed=21).double()
        x = torch.randn(30, 3, dtype=torch.float64)
        context = torch.randn(30, 2, dtype=torch.float64)
        expected = flow.log_prob(x, context)
        flow.cuda()
        torch.testing.assert_close(flow.log_prob(x.cuda(), context.cuda()).cpu(), expected, rtol=0, atol=1e-10)

    @pytest.mark.parametrize("factory", [MAF, IAF])
    @pytest.mark.parametrize("transformer", ["affine", "spline"])
    def test_sample_and_round_trip(self, factory, transformer):
        flow = factory(3, 2, [16], transformer=transformer, context_features=2, seed=22).cuda()
        context = torch.randn(4, 2, device="cuda")
        x, log_p = flow.sample_and_log_prob(5, context)
        assert x.device.type == log_p.device.type == "cuda" and x.shape == (5, 4, 3)
        torch.testing.assert_close(flow.log_prob(x, context), log_p, rtol=0, atol=1e-4)
        z, _ = flow.transform(x, context)
        x_back, _ = flow.transform.inverse(z, context)
        torch.testing.assert_close(x_back, x, rtol=0, atol=1e-4)


def test_conditional_flow_over_an_unconditional_made_mog_base():
    base = MADEMoG(2, 3, [16], seed=1)
    flow = MAF(2, 2, [16], context_features=3, base=base, seed=0)
    context = torch.randn(4, 3)
    x = flow.sample(5, context)
    assert x.shape == (5, 4, 2)
    assert torch.isfinite(flow.log_prob(x, context)).all()
    z, logabsdet = flow.transform(x, context)
    torch.testing.assert_close(flow.log_prob(x, context), base.log_prob(z) + logabsdet)
    assert not flow.distribution(context).has_rsample
    assert MAF(2, 2, [16], seed=0).distribution().has_rsample


def test_spline_options_are_refused_for_the_affine_transformer():
    with pytest.raises(ValueError, match="bins apply to the spline transformer"):
        MAF(2, 2, [8], transformer="affine", bins=4)


def test_both_directions_return_the_layer_dtype():
    layer = MaskedAutoregressive(3, [8], seed=0)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert layer(x)[0].dtype == torch.float32
    assert layer.inverse(x)[0].dtype == torch.float32


def test_flow_distribution_works_as_a_pyro_guide():
    pyro = pytest.importorskip("pyro")
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    flow = MAF(2, 2, [16], seed=0)
    target = torch.tensor([1.0, -2.0])

    def model():
        pyro.sample("z", dist.Normal(target, 0.5).to_event(1))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", flow.distribution())

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-2}), Trace_ELBO(num_particles=4))
    for _ in range(250):
        svi.step()
    with torch.no_grad():
        samples = flow.sample(4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples.mean(0), target, atol=0.15, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.full((2,), 0.5), atol=0.1, rtol=0)


def test_flow_infers_its_context_width_from_its_parts():
    from flowkit.flows import StandardNormal
    from flowkit.transforms import MaskedAutoregressive

    flow = Flow(MaskedAutoregressive(2, [8], context_features=3), StandardNormal(2))
    x, context = torch.randn(5, 2), torch.randn(5, 3)
    assert flow.context_features == 3 and flow.log_prob(x, context).shape == (5,)
    assert flow.sample(2, context).shape == (2, 5, 2)
    with pytest.raises(flowkit.FlowkitValueError, match="this model is conditional"):
        flow.log_prob(x)
    base = DiagonalNormal(2, context_features=3)  # a conditional base alone makes the flow conditional too
    assert Flow(MaskedAutoregressive(2, [8]), base).context_features == 3
    assert Flow(MaskedAutoregressive(2, [8]), StandardNormal(2)).context_features == 0
    with pytest.raises(flowkit.FlowkitValueError, match="context of width 3 but the base one of width 2"):
        Flow(MaskedAutoregressive(2, [8], context_features=3), DiagonalNormal(2, context_features=2))
    with pytest.raises(flowkit.FlowkitValueError, match="context_features=3 but the flow has context_features=2"):
        Flow(MaskedAutoregressive(2, [8], context_features=3), StandardNormal(2), context_features=2)
    assert Flow(MaskedAutoregressive(2, [8]), StandardNormal(2), context_features=4).context_features == 4


# ---------------------------------------------------------------- one builder behind MAF and IAF

DOCUMENTED_SIGNATURE = (
    "(features: 'int', transforms: 'int', hidden_features: 'int | Sequence[int]', *, "
    "transformer: 'str | nn.Module' = 'affine', context_features: 'int' = 0, batch_norm: 'bool' = False, "
    "permutation: 'str | None' = 'reverse', linear: 'str | None' = None, identity_init: 'bool' = True, "
    "base: 'nn.Module | None' = None, seed: 'int | None' = None, bins: 'int | None' = None, "
    "bound: 'float | None' = None, min_bin_width: 'float | None' = None, min_bin_height: 'float | None' = None, "
    "min_derivative: 'float | None' = None, eps: 'float | None' = None, **made_options: 'Any') -> 'Flow'"
)


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_the_factories_have_the_documented_signature_made_from_the_builder(factory):
    signature = inspect.signature(factory)
    assert str(signature) == DOCUMENTED_SIGNATURE
    fields = {f.name: f for f in dataclasses.fields(AutoregressiveFlowBuilder)}
    parameters = dict(signature.parameters)
    assert list(parameters) == list(fields)  # the same names, in the same order, made_options last
    for name, parameter in parameters.items():
        assert parameter.annotation == fields[name].type or name == "made_options"
        if fields[name].default is not dataclasses.MISSING:
            assert parameter.default == fields[name].default
    assert [p.kind for p in parameters.values()][:4] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3 + [
        inspect.Parameter.KEYWORD_ONLY]
    assert parameters["made_options"].kind is inspect.Parameter.VAR_KEYWORD
    assert factory.__name__ == factory.__qualname__ in ("MAF", "IAF")
    for name in parameters:  # one docstring describes every option, shared by the builder and both factories
        for documented in (factory, AutoregressiveFlowBuilder):
            assert re.search(rf"\b{name}\b[^\n]*:", documented.__doc__), (documented, name)
    assert inspect.isfunction(factory) and factory.__module__ == "flowkit.builders"


@pytest.mark.parametrize("inverse", [False, True])
def test_the_factories_are_the_builder(inverse):
    factory = IAF if inverse else MAF
    options = dict(transformer="spline", context_features=2, batch_norm=True, permutation="random", linear="lu",
                   bins=5, bound=2.0, min_bin_width=1e-2, min_derivative=1e-2, seed=3, order="random")
    by_position = factory(3, 2, [16], **options)
    by_name = factory(features=3, transforms=2, hidden_features=[16], **options)
    made = {"order": options.pop("order")}
    built = AutoregressiveFlowBuilder(features=3, transforms=2, hidden_features=(16,), made_options=made,
                                      **options).flow(inverse=inverse)
    kinds = [type(t).__name__ for t in built.transform.transforms]
    assert kinds == [type(t).__name__ for t in by_position.transform.transforms]
    assert kinds[0] == ("Inverse" if inverse else "MaskedAutoregressive")
    for flow in (by_name, built):
        assert flow.state_dict().keys() == by_position.state_dict().keys()
        for key, value in flow.state_dict().items():
            torch.testing.assert_close(value, by_position.state_dict()[key], rtol=0, atol=0)
    spline = next(m for m in built.modules() if isinstance(m, MaskedAutoregressive)).transformer
    assert (spline.bins, spline.bound, spline.min_bin_width, spline.min_derivative) == (5, 2.0, 1e-2, 1e-2)


def test_the_builder_is_a_frozen_keyword_only_dataclass_that_normalises_its_options():
    builder = AutoregressiveFlowBuilder(features=np.int64(2), transforms=2, hidden_features=8, seed=np.int64(1),
                                        made_options={"direct": True})
    assert (builder.features, builder.hidden_features, builder.seed) == (2, (8,), 1)
    assert type(builder.features) is int and builder.transformer_options == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        builder.transforms = 3
    with pytest.raises(TypeError):
        builder.made_options["direct"] = False
    with pytest.raises(TypeError):
        AutoregressiveFlowBuilder(2, 2, [8])
    assert builder == AutoregressiveFlowBuilder(features=2, transforms=2, hidden_features=[8], seed=1,
                                                made_options={"direct": True})
    assert hash(builder) == hash(AutoregressiveFlowBuilder(features=2, transforms=2, hidden_features=(8,), seed=1))
    first, second = builder.layers(), builder.layers()
    assert first is not second and all(a is not b for a, b in zip(first.parameters(), second.parameters()))
    assert builder.flow().transform.transforms[0].made.direct is not None


@pytest.mark.parametrize("build, error, match", [
    (lambda: MAF(2, 2, [8], eps=0.1, bins=4), FlowkitValueError, "bins apply to the spline transformer"),
    (lambda: MAF(2, 2, [8], transformer="spline", eps=0.1), FlowkitValueError, "eps apply to the affine"),
    (lambda: IAF(2, 2, [8], transformer="spline", min_bin_width=0.9), FlowkitValueError, "min_bin_width"),
    (lambda: MAF(2, 2, [8], transformer_options={"bins": 4}), FlowkitTypeError, "transformer_options"),
    (lambda: MAF(2, 2, [8], tails="linear"), FlowkitTypeError, "tails"),
    (lambda: MAF(2, 2, [8], num_params=3), FlowkitTypeError, "params"),
    (lambda: MAF(2, 2, [8], base=StandardNormal(3)), FlowkitValueError, "base has 3 features"),
    (lambda: MAF(2, 2, [8], base=object()), FlowkitTypeError, "base"),
    (lambda: MAF(2, 2), FlowkitTypeError, r"MAF\(\): missing a required argument: 'hidden_features'"),
    (lambda: IAF(2, 2, [8], 3), FlowkitTypeError, r"IAF\(\): too many positional arguments"),
    (lambda: MAF(2, 2, [8], transforms=3), FlowkitTypeError, "multiple values for argument 'transforms'"),
    (lambda: AutoregressiveFlowBuilder(features=2, transforms=2, hidden_features=[8], made_options={"seed": 1}),
     FlowkitTypeError, "seed"),
    (lambda: AutoregressiveFlowBuilder(features=2, transforms=2, hidden_features=[8], made_options=[1]),
     FlowkitTypeError, "made_options"),
])
def test_the_builder_refuses_bad_options_before_it_builds_anything(build, error, match):
    state = torch.get_rng_state()
    with pytest.raises(error, match=match):
        build()
    assert torch.equal(torch.get_rng_state(), state)


def test_all_spline_options_and_eps_reach_the_transformers_by_the_same_names():
    spline = MAF(2, 1, [8], transformer="spline", bins=3, bound=1.5, min_bin_width=0.01, min_bin_height=0.02,
                 min_derivative=0.03, seed=0).transform.transforms[0].transformer
    assert (spline.bins, spline.bound, spline.min_bin_width, spline.min_bin_height, spline.min_derivative) == (
        3, 1.5, 0.01, 0.02, 0.03)
    assert IAF(2, 1, [8], eps=0.25, seed=0).transform.transforms[0].transform.transformer.eps == 0.25
    assert set(inspect.signature(MAF).parameters) >= set(TRANSFORMER_OPTIONS["spline"] + TRANSFORMER_OPTIONS["affine"])


def test_flow_and_diagonal_normal_take_context_features_by_keyword_only():
    with pytest.raises(TypeError):
        Flow(MaskedAutoregressive(2, [8]), StandardNormal(2), 0)
    with pytest.raises(TypeError):
        DiagonalNormal(2, 3)
    for constructor in (Flow, DiagonalNormal):
        parameters = inspect.signature(constructor).parameters
        assert parameters["context_features"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(DiagonalNormal).parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY


def test_an_embedding_maps_the_raw_context_once_and_trains_with_the_flow():
    torch.manual_seed(0)
    maf = MAF(2, 2, [16], context_features=3, seed=0)
    summary = torch.nn.Sequential(torch.nn.Linear(7, 3), torch.nn.Tanh())
    flow = Flow(maf.transform, maf.base, context_features=7, embedding=summary)
    x, raw = torch.randn(5, 2), torch.randn(5, 7)
    assert torch.allclose(flow.log_prob(x, raw), maf.log_prob(x, summary(raw)), atol=1e-6)
    samples, log_p = flow.sample_and_log_prob(4, raw)
    assert samples.shape == (4, 5, 2) and torch.allclose(log_p, flow.log_prob(samples, raw), atol=1e-4)
    assert flow.distribution(raw[0]).sample((3,)).shape == (3, 2)
    flow.log_prob(x, raw).sum().backward()
    assert summary[0].weight.grad is not None and summary[0].weight.grad.abs().sum() > 0
    assert any(name.startswith("embedding.") for name in flow.state_dict())
    with pytest.raises(flowkit.FlowkitValueError, match=r"expected context of shape \(\*, 7\)"):
        flow.log_prob(x, summary(raw))  # the embedded width is not the raw one
    with pytest.raises(flowkit.FlowkitValueError, match="give context_features"):
        Flow(maf.transform, maf.base, embedding=summary)
    with pytest.raises(flowkit.FlowkitValueError, match="no part of this flow takes a context"):
        Flow(MAF(2, 1, [8]).transform, StandardNormal(2), context_features=7, embedding=summary)
    wrong = Flow(maf.transform, maf.base, context_features=7, embedding=torch.nn.Linear(7, 4))
    with pytest.raises(flowkit.FlowkitValueError, match=r"embedding to map the context \(5, 7\) to \(5, 3\)"):
        wrong.log_prob(x, raw)
