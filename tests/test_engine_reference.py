"""The incremental engine against a plain D-pass reference that lives only here.

Given the same random draws, every sequential operation (discrete sampling and completion, MADE MoG
sampling, MAF inversion, IAF densities) gives the same values through the engine as through one
full network pass per feature, over random configurations, contexts and mask sets.
"""

import random

import pytest
import torch

import flowkit
from flowkit.engine import autoregressive
from flowkit.transforms import MaskedAutoregressive

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning", "ignore::UserWarning")


def reference(made, x, step, encode=lambda v: v, context=None, mask=0, features=None):
    """One full MADE pass per feature, in the ordering of ``mask``."""
    x = x.clone()
    for d in made.orders[mask].tolist():
        if features is not None and d not in features:
            continue
        params = made(encode(x), context, mask=mask)[..., d, :]
        x[..., d] = step(d, params, x[..., d])
    return x


def configuration(seed):
    rng = random.Random(seed)
    D = rng.randint(1, 8)
    return dict(
        features=D,
        hidden_features=[rng.randint(1, 2 * D + 4) for _ in range(rng.randint(1, 3))],
        context_features=rng.choice([0, 0, 3]),
        num_masks=rng.choice([1, 3]),
        order_agnostic=rng.random() < 0.5,
        direct=rng.random() < 0.3,
        activation=rng.choice([torch.nn.ReLU, torch.nn.Tanh, torch.nn.ELU]),
        hidden_degrees=rng.choice(["random", "even"]),
        seed=seed,
    )


def context_for(options, batch, seed):
    C = options["context_features"]
    return torch.randn(batch, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) if C else None


@pytest.mark.parametrize("kind", ["bernoulli", "categorical", "mog"])
@pytest.mark.parametrize("seed", range(12))
def test_discrete_and_mog_sampling_match_the_reference(kind, seed):
    options = configuration(seed)
    D = options.pop("features")
    hidden = options.pop("hidden_features")
    model = {"bernoulli": lambda: flowkit.BernoulliMADE(D, hidden, **options),
             "categorical": lambda: flowkit.CategoricalMADE(D, 3, hidden, **options),
             "mog": lambda: flowkit.MADEMoG(D, 2, hidden, **options)}[kind]().double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    context = context_for(options, 6, seed)
    for r in range(model.made.num_masks):
        noise = model.head.noise((6, D), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        start = model._zeros(torch.Size([6]))
        step = lambda d, params, current: model.head.draw(params, noise[:, d])  # noqa: E731
        with torch.no_grad():
            fast = autoregressive(model.made, start, step, encode=model.head.encode, context=context, mask=r)
            slow = reference(model.made, start, step, model.head.encode, context, r)
        if kind == "mog":
            torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
        else:
            assert torch.equal(fast, slow)


@pytest.mark.parametrize("seed", range(6))
def test_completion_matches_the_reference(seed):
    options = configuration(seed)
    D = options.pop("features")
    model = flowkit.CategoricalMADE(D, 4, options.pop("hidden_features"), **options).double()
    context = context_for(options, 5, seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(4, (5, D), generator=generator)
    observed = torch.rand(5, D, generator=generator) < 0.5
    noise = model.head.noise((5, D), generator=generator, dtype=torch.float64)
    unobserved = [d for d in range(D) if not observed[:, d].all()]

    def step(d, params, current):
        return torch.where(observed[:, d], current, model.head.draw(params, noise[:, d]))

    with torch.no_grad():
        fast = autoregressive(model.made, x, step, encode=model.head.encode, context=context, features=unobserved)
        slow = reference(model.made, x, step, model.head.encode, context, model.made.current_mask, set(unobserved))
    assert torch.equal(fast, slow)
    assert torch.equal(fast[observed], x[observed])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("seed", range(8))
def test_maf_inversion_matches_the_reference(transformer, seed, dtype):
    options = configuration(seed)
    D = options.pop("features")
    layer = MaskedAutoregressive(D, options.pop("hidden_features"), transformer, **options).to(dtype)
    context = context_for(options, 7, seed)
    context = None if context is None else context.to(dtype)
    y = torch.randn(7, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    for r in range(layer.made.num_masks):
        layer.made.use_mask(r)
        step = lambda d, params, current: layer.transformer.inverse(y[..., d], params)[0]  # noqa: E731
        with torch.no_grad():
            fast, _ = layer.inverse(y, context)
            slow = reference(layer.made, y, step, context=context, mask=r)
        # float32: the two sum in different orders, and where a spline is nearly flat its inverse
        # divides that rounding by the small slope; float64 shows the computations are the same.
        tolerance = 1e-10 if dtype == torch.float64 else (1e-6 if transformer == "affine" else 1e-5)
        torch.testing.assert_close(fast, slow, rtol=tolerance, atol=tolerance)


def test_iaf_density_of_points_it_did_not_generate_uses_the_engine_and_matches():
    flow = flowkit.IAF(5, 3, [32, 32], context_features=2, seed=0).double()
    x, context = torch.randn(9, 5, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    with torch.no_grad():
        fast = flow.log_prob(x, context)
    slow = flow.log_prob(x, context)  # gradients on: the plain, differentiable loop
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    assert slow.requires_grad and not fast.requires_grad


def test_with_gradients_the_loop_is_differentiable():
    layer = MaskedAutoregressive(4, [16], seed=0)
    y = torch.randn(3, 4, requires_grad=True)
    x, _ = layer.inverse(y)
    x.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    assert all(p.grad is not None for p in layer.made.parameters())


def test_plan_is_rebuilt_when_weights_change():
    model = flowkit.BernoulliMADE(6, [16], seed=0).double().eval()
    noise = model.head.noise((4, 6), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    step = lambda d, params, current: model.head.draw(params, noise[:, d])  # noqa: E731
    start = torch.zeros(4, 6, dtype=torch.float64)
    with torch.no_grad():
        autoregressive(model.made, start, step)
        for p in model.parameters():
            p.mul_(-4)
        fast = autoregressive(model.made, start, step)
        slow = reference(model.made, start, step)
    assert torch.equal(fast, slow)


def test_masks_that_are_not_autoregressive_are_refused():
    made = flowkit.MADE(4, [8], seed=0)
    made.layers[-1].masks.fill_(True)
    with pytest.raises(RuntimeError, match="not autoregressive"), torch.no_grad():
        autoregressive(made, torch.zeros(2, 4), lambda d, p, c: c)
