"""Tests of the transforms: log-determinants against autograd Jacobians, round trips, the affine
transformer, batch norm, permutations, input checks, dtypes and gradients."""

import copy
import inspect
import io

import pytest
import torch

import flowkit
from flowkit import check_autoregressive
from flowkit.errors import FlowkitTypeError, FlowkitValueError
from flowkit.transforms import (
    Affine,
    BatchNorm,
    Composite,
    Inverse,
    MaskedAutoregressive,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    set_population_statistics,
)
from flowkit.transforms.autoregressive import TRANSFORMER_OPTIONS

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


D, C = 4, 2
SPLINE = {"bins": 6, "bound": 2.5}


def scaled(module, factor):
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)
    return module


def layer(transformer="affine", context=C, seed=0, scale=1.0, **options):
    """A layer far from the identity: the MADE's own initialisation (``identity_init=False``), scaled."""
    options = {"transformer_options": SPLINE, **options} if transformer == "spline" else options
    built = MaskedAutoregressive(D, [24, 24], transformer, context_features=context, seed=seed,
                                 identity_init=False, **options)
    return scaled(built, scale)


def batch_norm(seed=0):
    generator = torch.Generator().manual_seed(seed)
    bn = BatchNorm(D)
    with torch.no_grad():
        bn.log_gamma.copy_(0.5 * torch.randn(D, generator=generator))
        bn.beta.copy_(torch.randn(D, generator=generator))
        bn.running_mean.copy_(torch.randn(D, generator=generator))
        bn.running_var.copy_(torch.rand(D, generator=generator) + 0.2)
    return bn.eval()


def build(name):
    """A transform of each kind and whether it takes a context."""
    if name == "maf-affine":
        return layer("affine", scale=2.5), True
    if name == "maf-affine-unconditional":
        return layer("affine", context=0, scale=2.5), False
    if name == "maf-spline":
        return layer("spline", scale=1.5), True
    if name == "iaf-affine":
        return Inverse(layer("affine", seed=1, scale=2.5)), True
    if name == "iaf-spline":
        return Inverse(layer("spline", seed=1, scale=1.5)), True
    if name == "permutation":
        return Permutation([2, 0, 3, 1]), False
    if name == "reverse":
        return ReversePermutation(D), False
    if name == "random":
        return RandomPermutation(D, seed=3), False
    if name == "batchnorm-eval":
        return batch_norm(), False
    if name == "composite":
        return Composite([
            layer("affine", seed=2, scale=2.5, order="random"),
            RandomPermutation(D, seed=4),
            Inverse(layer("spline", seed=3, scale=1.5)),
            batch_norm(seed=1),
            ReversePermutation(D),
            layer("spline", seed=4, scale=1.5),
        ]), True
    raise AssertionError(name)


KINDS = ["maf-affine", "maf-affine-unconditional", "maf-spline", "iaf-affine", "iaf-spline",
         "permutation", "reverse", "random", "batchnorm-eval", "composite"]


def autograd_logabsdet(f, x, context):
    """``log|det df/dx|`` at each row of ``x``, from the full Jacobian computed by autograd."""
    values = []
    for i in range(x.shape[0]):
        c = None if context is None else context[i]
        jacobian = torch.autograd.functional.jacobian(lambda v: f(v, c)[0], x[i])
        values.append(torch.linalg.slogdet(jacobian).logabsdet)
    return torch.stack(values)


def positions(order):
    return torch.argsort(torch.as_tensor(order))


@pytest.mark.parametrize("kind", KINDS)
def test_logabsdet_matches_autograd_jacobian(kind):
    transform, conditional = build(kind)
    transform = transform.double()
    generator = torch.Generator().manual_seed(1)
    x = 2.0 * torch.randn(6, D, generator=generator, dtype=torch.float64)
    context = torch.randn(6, C, generator=generator, dtype=torch.float64) if conditional else None

    y, logabsdet = transform(x, context)
    torch.testing.assert_close(logabsdet, autograd_logabsdet(transform, x, context), rtol=0, atol=1e-8)

    x_back, inverse_logabsdet = transform.inverse(y, context)
    torch.testing.assert_close(inverse_logabsdet, autograd_logabsdet(transform.inverse, y, context),
                               rtol=0, atol=1e-8)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, rtol=0, atol=1e-8)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-8)


@pytest.mark.parametrize("kind", ["maf-affine", "maf-spline", "composite"])
def test_logabsdet_is_not_trivial(kind):
    transform = build(kind)[0].double()
    x = torch.randn(50, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, logabsdet = transform(x, torch.zeros(50, C, dtype=torch.float64))
    assert logabsdet.std() > 0.1


@pytest.mark.parametrize("transformer, tolerance", [("affine", 1e-5), ("spline", 1e-4)])
@pytest.mark.parametrize("wrap", [False, True], ids=["maf", "iaf"])
@pytest.mark.parametrize("grad", [True, False], ids=["graph", "no-grad"])
def test_round_trip_float32(transformer, tolerance, wrap, grad):
    transform = layer(transformer, seed=5)
    transform = Inverse(transform) if wrap else transform
    generator = torch.Generator().manual_seed(3)
    x = 1.5 * torch.randn(2000, D, generator=generator)
    context = torch.randn(2000, C, generator=generator)

    with torch.set_grad_enabled(grad):
        y, logabsdet = transform(x, context)
        x_back, inverse_logabsdet = transform.inverse(y, context)
        assert (x_back - x).abs().max() <= tolerance
        assert (inverse_logabsdet + logabsdet).abs().max() <= 10 * tolerance

        x_again, _ = transform.inverse(x, context)
        y_again, _ = transform(x_again, context)
        assert (y_again - x).abs().max() <= tolerance


def tails(shape, generator):
    """Values with ``|x|`` spread log-uniformly over 10..1e3, both signs."""
    sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    return sign * 10 ** (1 + 2 * torch.rand(shape, generator=generator))


def test_spline_round_trip_in_the_tails():
    generator = torch.Generator().manual_seed(4)
    transform = layer("spline", seed=6)
    context = torch.randn(1000, C, generator=generator)

    far = tails((1000, D), generator)
    y, logabsdet = transform(far, context)
    assert torch.equal(y, far) and torch.equal(logabsdet, torch.zeros(1000))
    assert torch.equal(transform.inverse(far, context)[0], far)

    # The last feature in the ordering conditions no other: far values there leave the rest exact.
    last = int(transform.made.order[-1])
    x = 1.5 * torch.randn(1000, D, generator=generator)
    x[:, last] = far[:, last]
    y, _ = transform(x, context)
    assert torch.equal(y[:, last], x[:, last])
    assert (transform.inverse(y, context)[0] - x).abs().max() <= 1e-4
    assert (transform(transform.inverse(x, context)[0], context)[0] - x).abs().max() <= 1e-4


def test_one_feature_spline_round_trip_across_the_tails():
    transform = MaskedAutoregressive(1, [8], "spline", transformer_options=SPLINE, identity_init=False, seed=0)
    scaled(transform, 3.0)
    generator = torch.Generator().manual_seed(5)
    x = torch.cat([tails((500, 1), generator), 2.5 * torch.rand(500, 1, generator=generator) * 2 - 2.5])
    y, logabsdet = transform(x)
    assert (transform.inverse(y)[0] - x).abs().max() <= 1e-4
    assert (transform(transform.inverse(x)[0])[0] - x).abs().max() <= 1e-4
    outside = x.abs() > SPLINE["bound"]
    assert torch.equal(y[outside], x[outside])
    assert logabsdet[~outside[:, 0]].std() > 0.1


@pytest.mark.parametrize("magnitude", [1e2, 1e4, 1e6])
def test_far_values_never_give_nan_through_a_spline_maf(magnitude):
    flow = flowkit.MAF(3, transforms=3, hidden_features=[16, 16], transformer="spline", bins=5, bound=3.0,
                       identity_init=False, seed=0)
    generator = torch.Generator().manual_seed(6)
    x = magnitude * torch.randn(200, 3, generator=generator)
    x = torch.where(torch.rand(200, 3, generator=generator) < 0.3, torch.randn(200, 3, generator=generator), x)

    z, logabsdet = flow.transform(x)
    x_back, inverse_logabsdet = flow.transform.inverse(x)
    with torch.no_grad():
        x_fast, inverse_fast = flow.transform.inverse(x)
    for value in (z, logabsdet, x_back, inverse_logabsdet, x_fast, inverse_fast):
        assert torch.isfinite(value).all()
    x = x.requires_grad_(True)
    flow.log_prob(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


def test_spline_far_values_round_trip_in_the_well_conditioned_direction():
    transform = layer("spline", seed=7).double()
    generator = torch.Generator().manual_seed(7)
    context = torch.randn(2000, C, generator=generator, dtype=torch.float64)
    mixed = torch.where(torch.rand(2000, D, generator=generator) < 0.5,
                        tails((2000, D), generator).double(),
                        torch.randn(2000, D, generator=generator, dtype=torch.float64))
    x, _ = transform.inverse(mixed, context)
    assert torch.isfinite(x).all()
    assert (transform(x, context)[0] - mixed).abs().max() <= 1e-9


@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]])
def test_jacobian_is_triangular_in_the_made_order(transformer, order):
    transform = layer(transformer, seed=8, scale=1.5, order=order).double()
    assert transform.made.order.tolist() == order
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(D, generator=generator, dtype=torch.float64).clamp(-2, 2)
    context = torch.randn(C, generator=generator, dtype=torch.float64)

    for f, point in [(transform, x), (transform.inverse, transform(x, context)[0])]:
        jacobian = torch.autograd.functional.jacobian(lambda v: f(v, context)[0], point)
        in_order = jacobian[order][:, order]
        assert torch.equal(torch.triu(in_order, diagonal=1), torch.zeros(D, D, dtype=torch.float64))
        assert (in_order.diagonal() > 0).all()
        assert (torch.tril(in_order, diagonal=-1).abs() > 1e-6).sum() >= D


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_check_autoregressive_on_a_layer(transformer):
    order = [1, 3, 0, 2]
    transform = layer(transformer, seed=9, order=order)
    depends = check_autoregressive(transform)
    position = positions(order)
    expected = position[None, :] < position[:, None]
    assert torch.equal(depends, expected)


def test_affine_matches_closed_form():
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    params = 3 * torch.randn(7, 3, 2, generator=generator, dtype=torch.float64)
    u, t = params[..., 0], params[..., 1]
    scale = torch.log1p(torch.exp(u)) + 1e-3

    y, logabsdet = Affine()(x, params)
    torch.testing.assert_close(y, scale * x + t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logabsdet, torch.log(scale), rtol=1e-12, atol=1e-12)
    x_back, inverse_logabsdet = Affine().inverse(y, params)
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(inverse_logabsdet, -torch.log(scale), rtol=1e-12, atol=1e-12)

    y, _ = Affine(eps=0.5)(x, params)
    torch.testing.assert_close(y, (torch.log1p(torch.exp(u)) + 0.5) * x + t)
    with pytest.raises(ValueError, match="eps"):
        Affine(eps=0.0)


def test_affine_layer_uses_the_made_outputs_as_scale_and_shift():
    transform = layer("affine", seed=11, scale=2.0).double()
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(9, D, generator=generator, dtype=torch.float64)
    context = torch.randn(9, C, generator=generator, dtype=torch.float64)
    params = transform.made(x, context)
    scale = torch.log1p(torch.exp(params[..., 0])) + 1e-3
    y, logabsdet = transform(x, context)
    torch.testing.assert_close(y, scale * x + params[..., 1])
    torch.testing.assert_close(logabsdet, torch.log(scale).sum(-1))


def skewed(n=512, generator=None):
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return x * torch.tensor([1.0, 5.0, 0.2]).double() + torch.tensor([3.0, -2.0, 10.0]).double()


def test_batch_norm_train_mode_normalises_the_batch():
    bn = BatchNorm(3).double()
    log_gamma = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    beta = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    with torch.no_grad():
        bn.log_gamma.copy_(log_gamma)
        bn.beta.copy_(beta)
    y, _ = bn.train()(skewed(generator=torch.Generator().manual_seed(12)))
    torch.testing.assert_close(y.mean(0), beta, rtol=0, atol=1e-10)
    torch.testing.assert_close(y.std(0, unbiased=False), log_gamma.exp(), rtol=1e-3, atol=0)


def test_batch_norm_running_averages():
    bn = BatchNorm(3, momentum=0.25).double()
    x = skewed(generator=torch.Generator().manual_seed(13))
    bn.train()(x)
    torch.testing.assert_close(bn.running_mean, 0.25 * x.mean(0))
    torch.testing.assert_close(bn.running_var, 0.75 + 0.25 * x.var(0, unbiased=True))
    for _ in range(200):
        bn(x)
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    torch.testing.assert_close(bn.running_var, x.var(0, unbiased=True))

    frozen = bn.running_mean.clone(), bn.running_var.clone()
    bn.eval()(x[:5])
    assert torch.equal(bn.running_mean, frozen[0]) and torch.equal(bn.running_var, frozen[1])


def test_batch_norm_train_mode_is_eval_mode_with_the_batch_statistics():
    train, frozen = batch_norm().double(), batch_norm().double()
    train.momentum = 1.0
    x = 3 * torch.randn(512, D, dtype=torch.float64, generator=torch.Generator().manual_seed(14)) + 1
    with torch.no_grad():
        frozen.running_mean.copy_(x.mean(0))
        frozen.running_var.copy_(x.var(0, unbiased=False))
    y, logabsdet = train.train()(x)
    y_ref, logabsdet_ref = frozen(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(logabsdet, logabsdet_ref)
    expected = (train.log_gamma - 0.5 * torch.log(x.var(0, unbiased=False) + train.eps)).sum()
    torch.testing.assert_close(logabsdet, expected.expand(512))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_batch_norm_eval_inverse_is_exact(dtype, tolerance):
    bn = batch_norm().to(dtype)
    x = torch.randn(100, D, dtype=dtype, generator=torch.Generator().manual_seed(16))
    y, logabsdet = bn(x)
    x_back, inverse_logabsdet = bn.inverse(y)
    assert (x_back - x).abs().max() <= tolerance
    assert (inverse_logabsdet + logabsdet).abs().max() <= tolerance


def test_batch_norm_zero_variance_feature_stays_finite():
    bn = BatchNorm(3)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(17))
    x[:, 1] = 2.0
    x.requires_grad_(True)
    y, logabsdet = bn.train()(x)
    x_back, inverse_logabsdet = bn.inverse(y)
    (y.sum() + logabsdet.sum() + x_back.sum() + inverse_logabsdet.sum()).backward()
    for value in (y, logabsdet, x_back, inverse_logabsdet, x.grad, bn.log_gamma.grad, bn.beta.grad):
        assert torch.isfinite(value).all()
    assert torch.isfinite(bn.running_var).all() and torch.isfinite(bn.eval()(x)[0]).all()


@pytest.mark.parametrize("shape", [(1, 3), (1, 1, 3), (3,)])
def test_batch_norm_training_needs_two_examples(shape):
    with pytest.raises(ValueError, match="at least 2"):
        BatchNorm(3).train()(torch.randn(shape))
    assert BatchNorm(3).eval()(torch.randn(shape))[0].shape == shape


@pytest.mark.parametrize("context", [0, 3])
def test_population_statistics_are_those_of_each_layers_input_with_the_earlier_layers_set(context):
    flow = flowkit.MAF(4, 3, [16], batch_norm=True, context_features=context, seed=0).double()
    x = torch.randn(3000, 4, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1, 2.0], dtype=torch.float64) + 3
    c = torch.randn(3000, context, dtype=torch.float64) if context else None
    flow.train()
    assert set_population_statistics(flow, x, c, batch_size=700) == 2
    assert flow.training  # the mode is restored
    flow.eval()
    h = x
    with torch.no_grad():
        for layer in flow.transform.transforms:
            if isinstance(layer, BatchNorm):
                assert torch.allclose(layer.running_mean, h.mean(0), atol=1e-10)
                assert torch.allclose(layer.running_var, h.var(0), rtol=1e-8)
            h = layer(h, c)[0]
    whole = copy.deepcopy(flow)
    set_population_statistics(whole, x, c, batch_size=10**6)  # one batch: the same statistics
    assert torch.allclose(whole.log_prob(x[:5], None if c is None else c[:5]), flow.log_prob(x[:5], None if c is None
                                                                                              else c[:5]))


def test_population_statistics_of_a_model_without_batch_norm_and_bad_data():
    assert set_population_statistics(flowkit.MAF(2, 2, [8], seed=0), torch.randn(10, 2)) == 0
    flow = flowkit.MAF(2, 2, [8], batch_norm=True, seed=0)
    with pytest.raises(FlowkitValueError, match=r"N >= 2, got \(1, 2\)"):
        set_population_statistics(flow, torch.randn(1, 2))
    with pytest.raises(FlowkitValueError, match="a tensor"):
        set_population_statistics(flow, [[0.0, 1.0]])
    with pytest.raises(FlowkitValueError, match="NaN"):
        set_population_statistics(flow, torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))


def test_batch_norm_arguments():
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=0.0)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(3, eps=0.0)


@pytest.mark.parametrize("layer_dtype, input_dtype", [(torch.float32, torch.float64),
                                                      (torch.float64, torch.float32)])
def test_batch_norm_training_with_another_input_dtype(layer_dtype, input_dtype):
    bn = BatchNorm(3).to(layer_dtype).train()
    y, _ = bn(torch.randn(8, 3, dtype=input_dtype))
    assert torch.isfinite(y).all()


def test_permutation_maps_and_inverts():
    x = torch.arange(12.0).view(3, 4)
    t = Permutation([2, 0, 3, 1])
    y, logabsdet = t(x)
    assert torch.equal(y, x[:, [2, 0, 3, 1]]) and torch.equal(logabsdet, torch.zeros(3))
    assert torch.equal(t.inverse(y)[0], x)
    assert torch.equal(ReversePermutation(4)(x)[0], x.flip(-1))


@pytest.mark.parametrize("bad, error", [([0, 0, 1], ValueError), ([0, 1, 3], ValueError),
                                        ([[0, 1], [1, 0]], ValueError), ([], ValueError),
                                        (torch.tensor([0.0, 1.0]), TypeError)])
def test_permutation_rejects_non_permutations(bad, error):
    with pytest.raises(error):
        Permutation(bad)


def test_random_permutation_is_seeded():
    assert torch.equal(RandomPermutation(8, seed=5).permutation, RandomPermutation(8, seed=5).permutation)
    assert not torch.equal(RandomPermutation(8, seed=5).permutation, RandomPermutation(8, seed=6).permutation)
    assert sorted(RandomPermutation(8, seed=5).permutation.tolist()) == list(range(8))


def test_permutation_state_dict_round_trip():
    source, target = RandomPermutation(8, seed=5), RandomPermutation(8, seed=6)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer))
    x = torch.randn(3, 8)
    assert torch.equal(target(x)[0], source(x)[0])
    assert torch.equal(target.inverse(x)[0], source.inverse(x)[0])


BAD_INPUT_KINDS = ["maf-affine", "maf-spline", "iaf-affine", "permutation", "batchnorm-eval", "composite"]


@pytest.mark.parametrize("kind", BAD_INPUT_KINDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_wrong_feature_count(kind, direction):
    transform, conditional = build(kind)
    method = transform if direction == "forward" else transform.inverse
    context = torch.randn(5, C) if conditional else None
    with pytest.raises(ValueError, match=rf"\(\*, {D}\).*\(5, {D + 1}\)"):
        method(torch.randn(5, D + 1), context)
    with pytest.raises(ValueError, match=rf"\(\*, {D}\)"):
        method(torch.randn(()), context)


@pytest.mark.parametrize("kind", BAD_INPUT_KINDS)
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_integer_input(kind, direction):
    transform, conditional = build(kind)
    method = transform if direction == "forward" else transform.inverse
    with pytest.raises(TypeError, match="floating"):
        method(torch.ones(5, D, dtype=torch.long), torch.randn(5, C) if conditional else None)


@pytest.mark.parametrize("kind", ["maf-affine", "maf-spline", "iaf-affine", "iaf-spline", "composite"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_nan_input(kind, direction):
    transform, conditional = build(kind)
    method = transform if direction == "forward" else transform.inverse
    x = torch.randn(5, D)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        method(x, torch.randn(5, C) if conditional else None)


def test_nan_input_to_batch_norm():
    x = torch.randn(5, D)
    x[0, 0] = float("nan")
    for bn in (batch_norm(), batch_norm().train()):
        with pytest.raises(ValueError, match="NaN"):
            bn(x)


@pytest.mark.parametrize("kind", ["maf-affine", "iaf-spline", "composite"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_context_checks(kind, direction):
    transform, _ = build(kind)
    method = transform if direction == "forward" else transform.inverse
    with pytest.raises(ValueError, match="context"):
        method(torch.randn(5, D))
    with pytest.raises(ValueError, match=rf"context of shape \(\*, {C}\)"):
        method(torch.randn(5, D), torch.randn(5, C + 1))

    unconditional = layer("affine", context=0)
    method = unconditional if direction == "forward" else unconditional.inverse
    with pytest.raises(ValueError, match="unconditional"):
        method(torch.randn(5, D), torch.randn(5, C))


@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("direction", [
    "forward",
    "inverse",
])
def test_context_that_does_not_broadcast(transformer, direction):
    transform = layer(transformer)
    method = transform if direction == "forward" else transform.inverse
    with pytest.raises(ValueError, match="broadcast"):
        method(torch.randn(5, D), torch.randn(4, C))


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_context_broadcasts_over_the_batch(direction):
    transform = layer("spline", seed=12, scale=1.5).double()
    method = transform if direction == "forward" else transform.inverse
    generator = torch.Generator().manual_seed(18)
    x = torch.randn(3, 1, D, generator=generator, dtype=torch.float64)
    context = torch.randn(5, C, generator=generator, dtype=torch.float64)
    y, logabsdet = method(x, context)
    assert y.shape == (3, 5, D) and logabsdet.shape == (3, 5)
    y_ref, logabsdet_ref = method(x.expand(3, 5, D).reshape(15, D), context.repeat(3, 1))
    torch.testing.assert_close(y, y_ref.view(3, 5, D), rtol=0, atol=1e-12)
    torch.testing.assert_close(logabsdet, logabsdet_ref.view(3, 5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_double(transformer):
    transform = layer(transformer, seed=13).double()
    x, context = torch.randn(5, D), torch.randn(5, C)
    y, logabsdet = transform(x.double(), context.double())
    assert y.dtype == logabsdet.dtype == torch.float64
    x_back, inverse_logabsdet = transform.inverse(y, context.double())
    assert x_back.dtype == inverse_logabsdet.dtype == torch.float64
    torch.testing.assert_close(x_back, x.double(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_float32_input_in_a_float64_layer(transformer):
    transform = layer(transformer, seed=14, scale=1.5).double()
    y, context = torch.randn(5, D), torch.randn(5, C)
    x, logabsdet = transform.inverse(y, context)
    assert x.dtype == logabsdet.dtype == torch.float64
    x_ref, logabsdet_ref = transform.inverse(y.double(), context.double())
    assert torch.equal(x, x_ref) and torch.equal(logabsdet, logabsdet_ref)
    z, _ = transform(x.float(), context)
    assert z.dtype == torch.float64
    torch.testing.assert_close(z.float(), y, rtol=0, atol=1e-5)


ENGINE_OPTIONS = {
    "plain": {},
    "unconditional": {"context": 0},
    "direct": {"direct": True},
    "tanh": {"activation": torch.nn.Tanh},
    "elu": {"activation": torch.nn.ELU},
    "even-degrees": {"hidden_degrees": "even"},
    "random-order": {"order": "random"},
    "mask-set-2-of-3": {"num_masks": 3, "order_agnostic": True},
}


@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("variant", ENGINE_OPTIONS)
def test_inverse_without_gradients_matches_the_graph_path(transformer, variant):
    transform = layer(transformer, seed=17, scale=1.5, **ENGINE_OPTIONS[variant]).double()
    if variant == "mask-set-2-of-3":
        transform.made.use_mask(2)
    conditional = transform.made.context_features > 0
    generator = torch.Generator().manual_seed(21)
    for batch in [(7,), (), (2, 3)]:
        y = torch.randn(*batch, D, generator=generator, dtype=torch.float64)
        context = torch.randn(*batch, C, generator=generator, dtype=torch.float64) if conditional else None
        with torch.no_grad():
            x, logabsdet = transform.inverse(y, context)
        x_graph, logabsdet_graph = transform.inverse(y, context)
        assert x_graph.grad_fn is not None and x.grad_fn is None
        torch.testing.assert_close(x, x_graph, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(logabsdet, logabsdet_graph, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(transform(x, context)[0], y, rtol=1e-10, atol=1e-10)


def test_inverse_without_gradients_with_a_narrow_made():
    transform = MaskedAutoregressive(6, [3], "spline", transformer_options=SPLINE, identity_init=False,
                                     seed=18).double()
    y = torch.randn(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    with torch.no_grad():
        x, logabsdet = transform.inverse(y)
    torch.testing.assert_close((x, logabsdet), transform.inverse(y), rtol=1e-12, atol=1e-12)


def test_inverse_without_gradients_with_a_broadcast_context():
    transform = layer("spline", seed=19).double()
    generator = torch.Generator().manual_seed(23)
    y = torch.randn(D, generator=generator, dtype=torch.float64)
    context = torch.randn(5, C, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        x, logabsdet = transform.inverse(y, context)
    assert x.shape == (5, D) and logabsdet.shape == (5,)
    torch.testing.assert_close((x, logabsdet), transform.inverse(y.expand(5, D), context), rtol=1e-12, atol=1e-12)


def no_grad_inverse_matches(transform, y, context):
    with torch.no_grad():
        x = transform.inverse(y, context)[0]
    return torch.allclose(x, transform.inverse(y, context)[0], rtol=1e-10, atol=1e-10)


def test_inverse_without_gradients_follows_weight_updates():
    transform = layer("affine", seed=20).double()
    generator = torch.Generator().manual_seed(24)
    y = torch.randn(6, D, generator=generator, dtype=torch.float64)
    context = torch.randn(6, C, generator=generator, dtype=torch.float64)
    assert no_grad_inverse_matches(transform, y, context)

    optimizer = torch.optim.SGD(transform.parameters(), lr=0.05)
    transform(y, context)[1].sum().backward()
    optimizer.step()
    assert no_grad_inverse_matches(transform, y, context)

    transform.load_state_dict(layer("affine", seed=21).double().state_dict())
    assert no_grad_inverse_matches(transform, y, context)

    with torch.no_grad():
        transform.made.layers[0].weight.mul_(1.5)
    assert no_grad_inverse_matches(transform, y, context)

    transform.float()
    with torch.no_grad():
        x = transform.inverse(y.float(), context.float())[0]
    torch.testing.assert_close(x, transform.inverse(y.float(), context.float())[0], rtol=1e-5, atol=1e-5)


def test_inverse_without_gradients_follows_data_edits():
    transform = layer("affine", seed=20).double()
    generator = torch.Generator().manual_seed(25)
    y = torch.randn(6, D, generator=generator, dtype=torch.float64)
    context = torch.randn(6, C, generator=generator, dtype=torch.float64)
    assert no_grad_inverse_matches(transform, y, context)
    for p in transform.parameters():
        p.data.mul_(1.5)
    transform.eval()
    assert no_grad_inverse_matches(transform, y, context)


@pytest.mark.parametrize("grad", [True, False])
def test_inverse_of_an_empty_batch(grad):
    transform = layer("affine", seed=22)
    with torch.set_grad_enabled(grad):
        x, logabsdet = transform.inverse(torch.zeros(0, D), torch.zeros(0, C))
    assert x.shape == (0, D) and logabsdet.shape == (0,)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_gradients_flow_through_the_inverse(transformer):
    transform = layer(transformer, seed=15)
    generator = torch.Generator().manual_seed(19)
    y = torch.randn(32, D, generator=generator)
    context = torch.randn(32, C, generator=generator)
    x, logabsdet = transform.inverse(y, context)
    (x.sum() + logabsdet.sum()).backward()
    for name, p in transform.made.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_inverse_gradients_match_finite_differences(transformer):
    transform = layer(transformer, seed=16, scale=1.5).double()
    generator = torch.Generator().manual_seed(20)
    y = torch.randn(3, D, generator=generator, dtype=torch.float64).requires_grad_(True)
    context = torch.randn(3, C, generator=generator, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(transform.inverse, (y, context), fast_mode=True)


# ---------------------------------------------------------------- the transformer's options, by name

SPLINE_OPTIONS = {"bins": 5, "bound": 2.0, "min_bin_width": 1e-2, "min_bin_height": 2e-2, "min_derivative": 3e-2}


@pytest.mark.parametrize("transformer, options", [("spline", SPLINE_OPTIONS), ("spline", {"bins": 3}),
                                                  ("affine", {"eps": 0.25})])
def test_the_transformer_options_as_keywords_are_transformer_options(transformer, options):
    by_name = MaskedAutoregressive(3, [8], transformer, seed=0, **options)
    by_dict = MaskedAutoregressive(3, [8], transformer, transformer_options=options, seed=0)
    for name, value in options.items():
        assert getattr(by_name.transformer, name) == getattr(by_dict.transformer, name) == value
    for key, value in by_name.state_dict().items():
        torch.testing.assert_close(value, by_dict.state_dict()[key], rtol=0, atol=0)


def test_the_layer_and_the_flows_spell_the_transformer_options_the_same():
    options = set(TRANSFORMER_OPTIONS["spline"]) | set(TRANSFORMER_OPTIONS["affine"])
    layer = inspect.signature(MaskedAutoregressive).parameters
    assert options <= set(layer) and options <= set(inspect.signature(flowkit.MAF).parameters)
    assert options <= set(inspect.signature(flowkit.IAF).parameters)
    for name in options:
        assert layer[name].kind is inspect.Parameter.KEYWORD_ONLY and layer[name].default is None
        assert inspect.signature(flowkit.MAF).parameters[name].default is None
    for name in ("context_features", "transformer_options", "identity_init"):
        assert layer[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("build, error, match", [
    (lambda: MaskedAutoregressive(2, [8], "spline", bins=4, transformer_options={"bound": 2.0}), FlowkitValueError,
     "bins given both as keywords and with transformer_options"),
    (lambda: MaskedAutoregressive(2, [8], bins=4), FlowkitValueError, "bins apply to the spline transformer"),
    (lambda: MaskedAutoregressive(2, [8], transformer_options={"min_derivative": 0.1}), FlowkitValueError,
     "min_derivative apply to the spline transformer, not to 'affine'"),
    (lambda: MaskedAutoregressive(2, [8], "spline", eps=0.1), FlowkitValueError, "eps apply to the affine"),
    (lambda: MaskedAutoregressive(2, [8], Affine(), eps=0.1), FlowkitValueError, "eps are options of the named"),
    (lambda: MaskedAutoregressive(2, [8], "spline", transformer_options={"tails": "linear"}), FlowkitTypeError,
     "tails"),
    (lambda: MaskedAutoregressive(2, [8], "spline", transformer_options=[("bins", 4)]), FlowkitTypeError,
     "transformer_options"),
    (lambda: MaskedAutoregressive(2, [8], "cubic", bins=4), FlowkitValueError, "transformer"),
    (lambda: MaskedAutoregressive(2, [8], "spline", bins=0), FlowkitValueError, "bins"),
])
def test_conflicting_or_foreign_transformer_options_are_refused_by_name(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_standardize_from_data_is_a_diagonal_gaussian_in_front_of_a_standard_normal():
    from flowkit.flows import StandardNormal
    from flowkit.transforms import Standardize

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([0.1, 2.0, 30.0]) + 5.0
    layer = Standardize.from_data(x)
    y, logabsdet = layer(x)
    assert torch.allclose(y.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.std(0, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-12)
    back, inverse_logabsdet = layer.inverse(y)
    assert torch.allclose(back, x, atol=1e-12) and torch.allclose(inverse_logabsdet, -logabsdet)
    jacobian = torch.autograd.functional.jacobian(lambda row: layer(row[None])[0][0], x[0])
    assert torch.allclose(torch.logdet(jacobian), logabsdet[0])
    flow = flowkit.Flow(layer, StandardNormal(3)).double()
    closed_form = torch.distributions.Normal(layer.shift, layer.scale).log_prob(x).sum(-1)
    assert torch.allclose(flow.log_prob(x), closed_form, atol=1e-10)


def test_standardize_names_constant_features_and_keeps_them_on_request():
    from flowkit.transforms import Standardize

    x = torch.randn(50, 3)
    x[:, 1] = 4.0
    with pytest.raises(flowkit.FlowkitValueError, match=r"features \[1\] of x are constant"):
        Standardize.from_data(x)
    layer = Standardize.from_data(x, constant="keep")
    assert layer.scale[1] == 1.0 and torch.allclose(layer(x)[0][:, 1], torch.zeros(50))
    for bad in (torch.ones(1, 3), torch.ones(5, 3, dtype=torch.long), [[1.0, 2.0]]):
        with pytest.raises(flowkit.FlowkitValueError, match="expected a floating batch"):
            Standardize.from_data(bad)
    with pytest.raises(flowkit.FlowkitValueError, match="positive, finite scale"):
        Standardize(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(flowkit.FlowkitValueError, match="NaN"):
        Standardize.from_data(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
