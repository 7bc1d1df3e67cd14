"""Tests of the nflows interop: converted layers and flows against nflows itself, refusals, and the
adapters in both directions."""

import pytest
import torch
import torch.nn.functional as F
from nflows.distributions import StandardNormal as NflowsStandardNormal
from nflows.flows import Flow as NflowsFlow
from nflows.transforms import CompositeTransform
from nflows.transforms import ReversePermutation as NflowsReversePermutation
from nflows.transforms.autoregressive import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseLinearAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)

from flowkit import Flow, check_autoregressive
from flowkit.flows import StandardNormal
from flowkit.interop.nflows import convert_autoregressive, from_nflows, to_nflows
from flowkit.transforms import Composite, MaskedAutoregressive, ReversePermutation

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


D, H, BINS, BOUND = 4, 24, 6, 2.5


def scaled(module, factor):
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(factor)
    return module


def nflows_layer(kind, seed, factor=1.5, **options):
    torch.manual_seed(seed)
    if kind == "affine":
        layer = MaskedAffineAutoregressiveTransform(
            features=D, hidden_features=H, num_blocks=2, use_residual_blocks=False, **options)
    else:
        layer = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            features=D, hidden_features=H, num_bins=BINS, tails="linear", tail_bound=BOUND,
            num_blocks=2, use_residual_blocks=False, **options)
    return scaled(layer, factor)


def pair(kind, seed):
    """An nflows layer and its conversion, both in float64."""
    theirs = nflows_layer(kind, seed)
    ours = convert_autoregressive(theirs)
    return theirs.double(), ours.double()


def inputs(n=500, seed=0):
    return 2 * torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def max_error(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_converted_layer_matches_nflows(kind):
    theirs, ours = pair(kind, seed=0)
    x = inputs()
    y_theirs, logabsdet_theirs = theirs(x)
    y_ours, logabsdet_ours = ours(x)
    x_theirs, inverse_theirs = theirs.inverse(x)
    x_ours, inverse_ours = ours.inverse(x)
    with torch.no_grad():
        x_fast, inverse_fast = ours.inverse(x)
    errors = {
        "forward": max_error(y_ours, y_theirs),
        "forward logabsdet": max_error(logabsdet_ours, logabsdet_theirs),
        "inverse": max_error(x_ours, x_theirs),
        "inverse logabsdet": max_error(inverse_ours, inverse_theirs),
        "inverse (no grad)": max_error(x_fast, x_theirs),
        "inverse logabsdet (no grad)": max_error(inverse_fast, inverse_theirs),
    }
    print(f"\n{kind} layer vs nflows, max abs errors: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-5
    assert logabsdet_theirs.std() > 0.1
    if kind == "spline":
        inside = (x.abs() < BOUND).all(-1) & (y_theirs.abs() < BOUND).all(-1)
        assert inside.sum() > 50 and (~inside).sum() > 50


@pytest.mark.parametrize("kinds", [("affine", "affine"), ("spline", "spline"), ("affine", "spline")])
def test_converted_flow_matches_nflows(kinds):
    (theirs_1, ours_1), (theirs_2, ours_2) = pair(kinds[0], seed=1), pair(kinds[1], seed=2)
    theirs = NflowsFlow(CompositeTransform([theirs_1, NflowsReversePermutation(D), theirs_2]),
                        NflowsStandardNormal([D])).double()
    ours = Flow(Composite([ours_1, ReversePermutation(D), ours_2]), StandardNormal(D))
    x = inputs(seed=3)
    z = inputs(seed=4) / 2
    with torch.no_grad():
        fast = ours.transform.inverse(z)[0]
    errors = {
        "log_prob": max_error(ours.log_prob(x), theirs.log_prob(x)),
        "inverse": max_error(ours.transform.inverse(z)[0], theirs._transform.inverse(z)[0]),
        "inverse (no grad)": max_error(fast, theirs._transform.inverse(z)[0]),
    }
    print(f"\n{'+'.join(kinds)} flow vs nflows, max abs errors: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-5


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_converted_layer_in_float32(kind):
    theirs = nflows_layer(kind, seed=5)
    ours = convert_autoregressive(theirs)
    x = inputs(seed=5).float()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.inverse(x), theirs.inverse(x), rtol=1e-4, atol=1e-4)


def test_converted_layer_with_random_masks():
    theirs = nflows_layer("affine", seed=6, random_mask=True).double()
    ours = convert_autoregressive(theirs).double()
    x = inputs(seed=6)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.inverse(x), theirs.inverse(x), rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(ours.inverse(x), theirs.inverse(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", [F.relu, torch.tanh, F.elu])
def test_converted_layer_with_other_activations(activation):
    theirs = nflows_layer("affine", seed=7, activation=activation).double()
    ours = convert_autoregressive(theirs).double()
    x = inputs(seed=7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_check_autoregressive_on_the_converted_layer(kind):
    _, ours = pair(kind, seed=8)
    depends = check_autoregressive(ours)
    natural = torch.tril(torch.ones(D, D, dtype=torch.bool), diagonal=-1)
    assert torch.equal(depends, natural)


@pytest.mark.parametrize("kind", ["affine", "spline"])
def test_conversion_keeps_the_dtype(kind):
    theirs = nflows_layer(kind, seed=9).double()
    ours = convert_autoregressive(theirs)
    assert all(p.dtype == torch.float64 for p in ours.parameters())


@pytest.mark.parametrize("build, error, message", [
    (lambda: MaskedAffineAutoregressiveTransform(D, H), ValueError, "residual"),
    (lambda: MaskedAffineAutoregressiveTransform(D, H, context_features=2, use_residual_blocks=False),
     ValueError, "context"),
    (lambda: MaskedAffineAutoregressiveTransform(D, H, use_residual_blocks=False, use_batch_norm=True),
     ValueError, "batch norm"),
    (lambda: MaskedAffineAutoregressiveTransform(D, H, use_residual_blocks=False, dropout_probability=0.1),
     ValueError, "dropout"),
    (lambda: MaskedAffineAutoregressiveTransform(D, H, use_residual_blocks=False, activation=F.softplus),
     ValueError, "activation"),
    (lambda: MaskedPiecewiseRationalQuadraticAutoregressiveTransform(D, H, use_residual_blocks=False),
     ValueError, "tails"),
    (lambda: MaskedPiecewiseRationalQuadraticAutoregressiveTransform(D, H, tails="linear"),
     ValueError, "residual"),
    (lambda: MaskedPiecewiseLinearAutoregressiveTransform(num_bins=4, features=D, hidden_features=H),
     TypeError, "MaskedAffineAutoregressiveTransform"),
    (lambda: NflowsReversePermutation(D), TypeError, "ReversePermutation"),
    (lambda: MaskedAutoregressive(D, [H], seed=0), TypeError, "MaskedAutoregressive"),
])
def test_conversion_refusals(build, error, message):
    with pytest.raises(error, match=message):
        convert_autoregressive(build())


def flowkit_layers(context_features=0):
    first = MaskedAutoregressive(D, [H, H], context_features=context_features, seed=10)
    second = MaskedAutoregressive(D, [H, H], "spline", context_features=context_features,
                                  transformer_options={"bins": BINS, "bound": BOUND}, seed=11)
    return scaled(Composite([first, ReversePermutation(D), second]), 1.5).double()


def test_to_nflows_inside_an_nflows_flow():
    layers = flowkit_layers()
    theirs = NflowsFlow(to_nflows(layers), NflowsStandardNormal([D])).double()
    ours = Flow(layers, StandardNormal(D))
    x = inputs(seed=12)
    torch.testing.assert_close(theirs.log_prob(x), ours.log_prob(x), rtol=0, atol=1e-10)

    torch.manual_seed(13)
    samples, log_p = theirs.sample_and_log_prob(64)
    assert samples.shape == (64, D) and torch.isfinite(samples).all()
    # nflows' StandardNormal draws float32 noise and scores it in float32.
    torch.testing.assert_close(ours.log_prob(samples), log_p, rtol=1e-6, atol=1e-5)


def test_to_nflows_with_a_context():
    layers = flowkit_layers(context_features=2)
    theirs = NflowsFlow(to_nflows(layers), NflowsStandardNormal([D])).double()
    ours = Flow(layers, StandardNormal(D), context_features=2)
    x = inputs(n=20, seed=14)
    context = torch.randn(20, 2, dtype=torch.float64)
    torch.testing.assert_close(theirs.log_prob(x, context), ours.log_prob(x, context), rtol=0, atol=1e-10)

    samples = theirs.sample(5, context[:3])
    assert samples.shape == (3, 5, D)
    log_p = ours.log_prob(samples, context[:3, None])
    assert torch.isfinite(log_p).all()


def test_to_nflows_refuses_non_transforms():
    with pytest.raises(TypeError, match="flowkit Transform"):
        to_nflows(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nflows Transform"):
        from_nflows(ReversePermutation(3))


def nflows_composite(context_features=None):
    torch.manual_seed(15)
    return scaled(CompositeTransform([
        MaskedAffineAutoregressiveTransform(D, H, context_features=context_features),
        NflowsReversePermutation(D),
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            D, H, context_features=context_features, num_bins=BINS, tails="linear", tail_bound=BOUND),
    ]), 1.5).double()


def test_from_nflows_inside_a_flowkit_flow():
    transform = nflows_composite()
    theirs = NflowsFlow(transform, NflowsStandardNormal([D])).double()
    ours = Flow(from_nflows(transform), StandardNormal(D)).double()
    x = inputs(n=30, seed=16)
    expected = theirs.log_prob(x)
    torch.testing.assert_close(ours.log_prob(x), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.log_prob(x.view(5, 6, D)), expected.view(5, 6), rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.log_prob(x[0]), expected[0], rtol=0, atol=1e-10)

    samples, log_p = ours.sample_and_log_prob((2, 3))
    assert samples.shape == (2, 3, D)
    torch.testing.assert_close(theirs.log_prob(samples.view(6, D)), log_p.view(6), rtol=0, atol=1e-8)


def test_from_nflows_with_a_context():
    transform = nflows_composite(context_features=3)
    theirs = NflowsFlow(transform, NflowsStandardNormal([D])).double()
    ours = Flow(from_nflows(transform), StandardNormal(D), context_features=3)
    x = inputs(n=8, seed=17).view(2, 4, D)
    context = torch.randn(4, 3, dtype=torch.float64)
    log_p = ours.log_prob(x, context)
    assert log_p.shape == (2, 4)
    expected = theirs.log_prob(x.reshape(8, D), context.repeat(2, 1)).view(2, 4)
    torch.testing.assert_close(log_p, expected, rtol=0, atol=1e-10)
