"""Tests of the identity start of MAF and IAF layers: the transformers' identity parameters, what
the output layer starts at, untrained flows that look like their base (up to 63 features, 5 layers
of 2 x 512), exact self-inversion, and gradients that reach every weight at step 0."""

import math

import pytest
import torch
from torch import nn

from flowkit import IAF, MADE, MAF
from flowkit.transforms import Affine, Inverse, MaskedAutoregressive, Permutation, RationalQuadraticSpline
from flowkit.transforms.autoregressive import IDENTITY_WEIGHT_BOUND

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")

SPLINE = {"bins": 5, "bound": 2.0}


def base_nll(x):
    """The mean negative log-density of ``x`` under the standard normal base."""
    return 0.5 * (x.pow(2).sum(-1) + x.shape[-1] * math.log(2 * math.pi)).mean().item()


@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_affine_identity_params_give_the_identity(eps):
    affine = Affine(eps)
    x = torch.cat([torch.randn(50, dtype=torch.float64), torch.tensor([-1e6, 1e6], dtype=torch.float64)])
    params = affine.identity_params().expand(52, 2)
    for method in (affine, affine.inverse):
        y, logabsdet = method(x, params)
        torch.testing.assert_close(y, x, rtol=1e-15, atol=1e-15)
        assert logabsdet.abs().max() < 1e-15
    with pytest.raises(ValueError, match="no identity"):
        Affine(eps=1.0).identity_params()


@pytest.mark.parametrize("bins, bound, min_derivative", [(1, 3.0, 1e-3), (3, 0.5, 0.2), (8, 3.0, 1e-3)])
def test_spline_identity_params_give_the_identity(bins, bound, min_derivative):
    spline = RationalQuadraticSpline(bins=bins, bound=bound, min_bin_width=0.01, min_bin_height=0.02,
                                     min_derivative=min_derivative)
    params = spline.identity_params()
    assert params.shape == (spline.num_params,) and params.dtype == torch.float64
    x = torch.linspace(-2 * bound, 2 * bound, 1001, dtype=torch.float64)
    for method in (spline, spline.inverse):
        y, logabsdet = method(x, params.expand(1001, -1))
        torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
        assert logabsdet.abs().max() < 1e-12
    with pytest.raises(ValueError, match="no identity"):
        RationalQuadraticSpline(bins=bins, min_derivative=1.0).identity_params()


@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("direct", [False, True])
def test_the_output_layer_starts_at_the_identity_parameters(transformer, direct):
    options = {"transformer_options": SPLINE} if transformer == "spline" else {}
    layer = MaskedAutoregressive(4, [16, 16], transformer, context_features=2, direct=direct, seed=3, **options)
    default = MaskedAutoregressive(4, [16, 16], transformer, context_features=2, direct=direct, seed=3,
                                   identity_init=False, **options)
    plain = MADE(4, [16, 16], num_params=layer.transformer.num_params, context_features=2, direct=direct, seed=3)
    for key, value in plain.state_dict().items():  # the opt-out keeps the MADE's own initialisation
        assert torch.equal(default.made.state_dict()[key], value), key

    output, reference = layer.made.layers[-1], default.made.layers[-1]
    identity = layer.transformer.identity_params().float()
    torch.testing.assert_close(output.bias.detach().view(4, -1), identity.expand(4, -1), rtol=0, atol=0)
    # the MADE's draw, rescaled to a largest magnitude of IDENTITY_WEIGHT_BOUND
    factor = IDENTITY_WEIGHT_BOUND / reference.weight.abs().max()
    torch.testing.assert_close(output.weight, factor * reference.weight, rtol=1e-6, atol=0)
    assert output.weight.abs().max().item() == pytest.approx(IDENTITY_WEIGHT_BOUND, rel=1e-6)
    for mine, theirs in zip(layer.made.layers[:-1], default.made.layers[:-1]):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    if direct:
        assert torch.equal(layer.made.direct.weight, torch.zeros_like(layer.made.direct.weight))


def test_a_transformer_without_identity_params_keeps_the_made_initialisation():
    class Shift(nn.Module):
        num_params = 1

        def forward(self, x, params):
            return x + params[..., 0], torch.zeros_like(x)

        def inverse(self, y, params):
            return y - params[..., 0], torch.zeros_like(y)

    layer = MaskedAutoregressive(3, [8], Shift(), seed=4)
    reference = MADE(3, [8], num_params=1, seed=4)
    for key, value in reference.state_dict().items():
        assert torch.equal(layer.made.state_dict()[key], value), key


@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("direct", [False, True])
def test_a_layer_at_initialisation_is_near_the_identity_and_inverts_its_output(transformer, direct):
    options = {"transformer_options": SPLINE} if transformer == "spline" else {}
    layer = MaskedAutoregressive(6, [64, 64], transformer, context_features=3, direct=direct, seed=5, **options)
    generator = torch.Generator().manual_seed(6)
    x = 2 * torch.randn(500, 6, generator=generator)
    context = torch.randn(500, 3, generator=generator)
    y, logabsdet = layer(x, context)
    assert (y - x).abs().max() < 0.05 and logabsdet.abs().max() < 0.05
    assert (y - x).abs().max() > 0  # near, not at: the layer is not frozen at the identity
    x_back, inverse_logabsdet = layer.inverse(y, context)
    torch.testing.assert_close(x_back, x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(layer.inverse(y, context)[0], x, rtol=1e-6, atol=1e-6)


SMALL = [(1, 3, [8]), (2, 5, [32, 32]), (7, 4, [64, 64])]


def permuted(flow, x):
    """``x`` through the flow's permutations only: what the flow maps ``x`` to if every other layer
    is the identity."""
    for t in flow.transform.transforms:
        if isinstance(t, Permutation):
            x = t(x)[0]
    return x


@pytest.mark.parametrize("factory", [MAF, IAF])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
@pytest.mark.parametrize("size", SMALL, ids=lambda s: f"D{s[0]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_untrained_flows_look_like_their_base(factory, transformer, size, seed):
    features, transforms, hidden = size
    options = {"transformer": "spline", **SPLINE} if transformer == "spline" else {}
    flow = factory(features, transforms, hidden, seed=seed, **options)
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        x = flow.sample(1000, generator=generator)
        z, logabsdet = flow.transform(x)
        log_p = flow.log_prob(x)
    assert torch.isfinite(log_p).all()
    assert (permuted(flow, x) - z).abs().max() < 0.05 and logabsdet.abs().max() < 0.05
    data = torch.randn(500, features, generator=generator)
    assert abs(-flow.log_prob(data).mean().item() - base_nll(data)) < 0.01 * features


# 63 features, 5 layers of MADE [512, 512]: with the MADE's plain initialisation an affine MAF drew
# samples up to 1e13 and could not score them; an IAF scored standard-normal data at about 1e31 nats.
BIG = (63, 5, [512, 512])


@pytest.mark.parametrize("factory", [MAF, IAF])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_a_big_untrained_flow_looks_like_its_base(factory, transformer):
    features, transforms, hidden = BIG
    options = {"transformer": "spline", "bins": 8} if transformer == "spline" else {}
    flow = factory(features, transforms, hidden, seed=7, **options)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        x, log_p = flow.sample_and_log_prob(2000, generator=generator)
        z, _ = flow.transform(x[:256])
        scored = flow.log_prob(x[:256])  # the feature-by-feature direction for an IAF
        data = torch.randn(256, features, generator=generator)
        nll = -flow.log_prob(data).mean().item()
    assert x.abs().max() < 10 and torch.isfinite(log_p).all() and torch.isfinite(scored).all()
    torch.testing.assert_close(scored, log_p[:256], rtol=0, atol=1e-2)
    assert (permuted(flow, x[:256]) - z).abs().max() < 0.1
    assert abs(nll - base_nll(data)) < 0.5
    assert abs(nll - features * 0.5 * math.log(2 * math.pi * math.e)) < 2.0  # 0.35 is one std here
    if factory is MAF:  # one pass with a graph (an IAF's density of data would take 63)
        loss = -flow.log_prob(data).mean()
        loss.backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in flow.parameters()))
        assert torch.isfinite(norm) and 0 < norm < 1e3


@pytest.mark.parametrize("factory", [MAF, IAF])
@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_every_made_weight_gets_a_gradient_at_step_0(factory, transformer):
    options = {"transformer": "spline", **SPLINE} if transformer == "spline" else {}
    flow = factory(4, 3, [32, 32], context_features=2, direct=True, seed=9, **options)
    generator = torch.Generator().manual_seed(10)
    loss = -flow.log_prob(torch.randn(128, 4, generator=generator), torch.randn(128, 2, generator=generator)).mean()
    loss.backward()
    layers = [t.transform if isinstance(t, Inverse) else t for t in flow.transform.transforms]
    mades = [t.made for t in layers if isinstance(t, MaskedAutoregressive)]
    assert len(mades) == 3
    for made in mades:
        for name, p in made.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        # The hidden layers learn too: their gradients are not negligible next to the output layer's.
        hidden = made.layers[0].weight.grad.norm()
        output = made.layers[-1].weight.grad.norm()
        assert hidden > 1e-4 * output
