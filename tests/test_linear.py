"""Tests of the LU-decomposed linear layer: the map and its determinant against a dense weight built
here, exact inverses, the identity start, the eval-mode cache, saving, input checks, and its place
in MAF and IAF."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from flowkit import IAF, MAF
from flowkit.transforms import LULinear, MaskedAutoregressive, RandomPermutation, ReversePermutation

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")

D = 5
PERMUTATION = [3, 0, 4, 1, 2]


def randomised(layer, seed=0, scale=0.5):
    """``layer`` with every parameter drawn at random: entries of L and U of size ``scale``, a
    diagonal of U between about 0.3 and 3, a nonzero bias."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.lower_upper, layer.unconstrained_diagonal, layer.bias):
            p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return layer


def dense(layer):
    """``W = P L U`` from the raw parameters, by the definitions in the docstring."""
    raw = layer.lower_upper.detach().double()
    diagonal = F.softplus(layer.unconstrained_diagonal.detach().double()) + layer.eps
    lower = torch.tril(raw, -1) + torch.eye(layer.features, dtype=torch.float64)
    upper = torch.triu(raw, 1) + torch.diag(diagonal)
    return (lower @ upper)[torch.as_tensor(layer.permutation)]


def test_forward_is_the_affine_map_and_its_jacobian_is_the_weight():
    layer = randomised(LULinear(D, PERMUTATION).double(), seed=1)
    x = torch.randn(7, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weight = dense(layer)
    y, _ = layer(x)
    torch.testing.assert_close(y, x @ weight.T + layer.bias.detach(), rtol=0, atol=1e-12)
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v)[0], x[0])
    torch.testing.assert_close(jacobian, weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight().detach(), weight, rtol=0, atol=1e-12)
    assert (weight - torch.eye(D, dtype=torch.float64)).abs().max() > 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("permutation", [None, PERMUTATION])
def test_logabsdet_is_the_log_determinant_of_the_dense_weight(seed, permutation):
    layer = randomised(LULinear(D, permutation).double(), seed=seed, scale=1.0)
    x = torch.randn(4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, logabsdet = layer(x)
    expected = torch.linalg.slogdet(dense(layer)).logabsdet
    assert abs(expected.item()) > 0.1
    torch.testing.assert_close(logabsdet, expected.expand(4), rtol=0, atol=1e-10)
    _, inverse_logabsdet = layer.inverse(y)
    torch.testing.assert_close(inverse_logabsdet, -expected.expand(4), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("batch", [(64,), (), (3, 4), (0,)])
@pytest.mark.parametrize("grad", [True, False], ids=["graph", "no-grad"])
def test_round_trip(dtype, tolerance, batch, grad):
    layer = randomised(LULinear(D, PERMUTATION), seed=4).to(dtype)
    layer.train(grad)  # eval mode without gradients takes the cached path
    x = torch.randn(*batch, D, dtype=dtype, generator=torch.Generator().manual_seed(5))
    with torch.set_grad_enabled(grad):
        y, logabsdet = layer(x)
        x_back, inverse_logabsdet = layer.inverse(y)
        y_back, _ = layer(layer.inverse(x)[0])
    assert y.shape == x_back.shape == x.shape and logabsdet.shape == inverse_logabsdet.shape == batch
    assert y.dtype == dtype and logabsdet.dtype == dtype
    if x.numel():
        assert (x_back - x).abs().max() <= tolerance
        assert (y_back - x).abs().max() <= tolerance
        assert (logabsdet + inverse_logabsdet).abs().max() <= tolerance
        assert (y - x).abs().max() > 0.1


def test_inverse_solves_triangular_systems_instead_of_inverting_the_weight(monkeypatch):
    layer = randomised(LULinear(D), seed=6).double()
    for name in ("inv", "inv_ex", "solve"):
        monkeypatch.setattr(torch.linalg, name, lambda *a, **k: pytest.fail(f"torch.linalg.{name} called"))
    y = torch.randn(3, D, dtype=torch.float64)
    x, _ = layer.inverse(y)
    torch.testing.assert_close(layer(x)[0], y, rtol=0, atol=1e-12)


def test_identity_at_initialisation():
    layer = LULinear(D)
    assert torch.equal(layer.lower(), torch.eye(D))
    assert torch.equal(layer.bias.detach(), torch.zeros(D))
    torch.testing.assert_close(layer.upper().detach(), torch.eye(D), rtol=0, atol=1e-6)
    x = torch.randn(10, D)
    for method in (layer, layer.inverse):
        y, logabsdet = method(x)
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
        assert logabsdet.abs().max() < 1e-5
    permuted = LULinear(D, PERMUTATION)
    torch.testing.assert_close(permuted(x)[0], x[:, PERMUTATION], rtol=0, atol=1e-6)


def test_the_context_is_ignored():
    layer = randomised(LULinear(D), seed=7)
    x = torch.randn(4, D)
    assert torch.equal(layer(x, torch.randn(4, 3))[0], layer(x)[0])
    assert torch.equal(layer.inverse(x, torch.randn(4, 3))[0], layer.inverse(x)[0])


def test_gradients_reach_every_parameter():
    layer = randomised(LULinear(D, PERMUTATION), seed=8)
    x = torch.randn(16, D)
    y, logabsdet = layer(x)
    x_back, inverse_logabsdet = layer.inverse(y.detach())
    (y.pow(2).sum() + logabsdet.sum() + x_back.pow(2).sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Only the off-diagonal entries are used; the diagonal of lower_upper is not a parameter of W.
    off = ~torch.eye(D, dtype=torch.bool)
    assert (layer.lower_upper.grad[off] != 0).all() and (layer.lower_upper.grad.diagonal() == 0).all()
    assert (layer.unconstrained_diagonal.grad != 0).all() and (layer.bias.grad != 0).all()


def no_grad_forward(layer, x):
    with torch.no_grad():
        return layer(x)[0], layer.inverse(x)[0]


def fresh(layer, x):
    """The outputs computed without the cache (gradients on)."""
    return tuple(t.detach() for t in (layer(x)[0], layer.inverse(x)[0]))


def test_eval_cache_is_used_and_follows_an_optimiser_step(monkeypatch):
    layer = randomised(LULinear(D, PERMUTATION), seed=9).eval()
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(10))
    builds = []
    build = layer._build
    monkeypatch.setattr(layer, "_build", lambda: builds.append(1) or build())

    before = no_grad_forward(layer, x)
    no_grad_forward(layer, x)
    assert len(builds) == 1  # kept between calls

    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    y, logabsdet = layer(x)
    (y.pow(2).sum() - logabsdet.sum()).backward()
    optimizer.step()
    after = no_grad_forward(layer, x)
    for old, new, expected in zip(before, after, fresh(layer, x)):
        torch.testing.assert_close(new, expected, rtol=0, atol=0)
        assert (old - new).abs().max() > 1e-3


def test_eval_cache_follows_load_state_dict_dtype_and_replacement():
    layer = randomised(LULinear(D, PERMUTATION), seed=11).eval()
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(12))
    no_grad_forward(layer, x)

    layer.load_state_dict(randomised(LULinear(D, PERMUTATION), seed=13).state_dict())
    for kept, expected in zip(no_grad_forward(layer, x), fresh(layer, x)):
        torch.testing.assert_close(kept, expected, rtol=0, atol=0)

    with torch.no_grad():
        layer.bias.add_(1.0)  # in place: the version counter moves
    for kept, expected in zip(no_grad_forward(layer, x), fresh(layer, x)):
        torch.testing.assert_close(kept, expected, rtol=0, atol=0)

    layer.bias = torch.nn.Parameter(torch.full((D,), -2.0))
    for kept, expected in zip(no_grad_forward(layer, x), fresh(layer, x)):
        torch.testing.assert_close(kept, expected, rtol=0, atol=0)

    layer.double()
    kept = no_grad_forward(layer, x.double())
    assert kept[0].dtype == torch.float64
    for kept, expected in zip(kept, fresh(layer, x.double())):
        torch.testing.assert_close(kept, expected, rtol=0, atol=0)


def test_whole_module_save_and_state_dict_after_evaluation():
    layer = randomised(LULinear(D, PERMUTATION), seed=14).eval()
    x = torch.randn(8, D, generator=torch.Generator().manual_seed(15))
    expected = no_grad_forward(layer, x)  # fills the cache

    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for a, b in zip(no_grad_forward(loaded, x), expected):
        assert torch.equal(a, b)
    for a, b in zip(no_grad_forward(copy.deepcopy(layer), x), expected):
        assert torch.equal(a, b)

    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    target = LULinear(D).eval()
    no_grad_forward(target, x)
    target.load_state_dict(torch.load(buffer))
    assert torch.equal(target.permutation, torch.tensor(PERMUTATION))
    for a, b in zip(no_grad_forward(target, x), expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_input_checks(direction):
    layer = LULinear(D)
    method = layer if direction == "forward" else layer.inverse
    with pytest.raises(ValueError, match=rf"\(\*, {D}\).*\(4, {D + 1}\)"):
        method(torch.randn(4, D + 1))
    with pytest.raises(ValueError, match=rf"\(\*, {D}\)"):
        method(torch.randn(()))
    with pytest.raises(TypeError, match="floating"):
        method(torch.ones(4, D, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        method([[0.0] * D])
    x = torch.randn(4, D)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        method(x)


@pytest.mark.parametrize("arguments, error", [
    ((0,), ValueError), ((2.0,), TypeError), ((3, [0, 0, 1]), ValueError), ((3, [0, 1]), ValueError),
])
def test_constructor_checks(arguments, error):
    with pytest.raises(error):
        LULinear(*arguments)
    with pytest.raises(ValueError, match="eps"):
        LULinear(3, eps=0.0)


def perturbed(flow, seed):
    """``flow`` in float64 and eval mode, away from its identity start: every parameter moved by
    Gaussian noise of size 0.1, and the off-diagonal entries of L and U of each LU layer drawn with
    size 0.7 (shears of about 1: the density stays on the grid, the layer is far from a permutation)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        for t in flow.transform.transforms:
            if isinstance(t, LULinear):
                t.lower_upper.copy_(0.7 * torch.randn(t.lower_upper.shape, generator=generator))
    return flow.double().eval()


def names(flow):
    return [type(t).__name__ for t in flow.transform.transforms]


@pytest.mark.parametrize("factory", [MAF, IAF])
def test_factories_place_the_lu_layer_between_layers(factory):
    assert names(factory(3, 3, [8], linear="lu", seed=0)) == [
        "MaskedAutoregressive", "ReversePermutation", "LULinear", "MaskedAutoregressive",
        "ReversePermutation", "LULinear", "MaskedAutoregressive",
    ] if factory is MAF else [
        "Inverse", "ReversePermutation", "LULinear", "Inverse", "ReversePermutation", "LULinear", "Inverse",
    ]
    flow = factory(3, 2, [8], linear="lu", permutation="random", batch_norm=True, seed=0)
    assert names(flow)[1:4] == ["BatchNorm", "RandomPermutation", "LULinear"]
    assert names(factory(3, 2, [8], linear="lu", permutation=None, seed=0))[1] == "LULinear"
    assert "LULinear" not in names(factory(3, 2, [8], seed=0))
    assert names(factory(3, 1, [8], linear="lu", seed=0)) == names(factory(3, 1, [8], seed=0))
    with pytest.raises(ValueError, match="linear"):
        factory(3, 2, [8], linear="dense")


def grid(n=600, half_width=10.0):
    h = 2 * half_width / n
    centres = torch.linspace(-half_width + h / 2, half_width - h / 2, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2), h * h


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_maf_with_lu_layers_normalises_on_a_grid(transformer):
    options = {"transformer": "spline", "bins": 4, "bound": 2.5} if transformer == "spline" else {}
    flow = perturbed(MAF(2, 3, [16, 16], linear="lu", permutation="random", seed=0, **options), seed=1)
    points, area = grid()
    with torch.no_grad():
        density = flow.log_prob(points).exp()
    assert density.sum().item() * area == pytest.approx(1.0, abs=1e-3)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(points).sum(-1).exp()
    assert 0.5 * (density - normal).abs().sum().item() * area > 0.2
    lu = [t for t in flow.transform.transforms if isinstance(t, LULinear)]
    assert len(lu) == 2 and all((t.weight() - torch.eye(2, dtype=torch.float64)).abs().max() > 0.3 for t in lu)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_iaf_with_lu_layers_scores_its_samples(transformer):
    options = {"transformer": "spline", "bins": 4, "bound": 2.5} if transformer == "spline" else {}
    flow = perturbed(IAF(3, 3, [16], linear="lu", context_features=2, seed=2, **options), seed=3)
    context = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x, log_p = flow.sample_and_log_prob(50, context, generator=torch.Generator().manual_seed(5))
    assert x.shape == (50, 4, 3)
    torch.testing.assert_close(flow.log_prob(x, context), log_p, rtol=0, atol=1e-8)
    assert log_p.std() > 0.1


def test_spline_maf_with_a_bound_and_lu_layers():
    flow = MAF(3, 3, [16], transformer="spline", bins=5, bound=1.5, linear="lu", seed=6)
    splines = [t.transformer for t in flow.transform.transforms if isinstance(t, MaskedAutoregressive)]
    assert [s.bound for s in splines] == [1.5, 1.5, 1.5]
    flow = perturbed(flow, seed=7)
    x = 3 * torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert (x.abs() > 1.5).any()
    z, logabsdet = flow.transform(x)
    x_back, inverse_logabsdet = flow.transform.inverse(z)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, rtol=0, atol=1e-9)
    samples, log_p = flow.sample_and_log_prob(100, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(flow.log_prob(samples), log_p, rtol=0, atol=1e-8)


def test_lu_layers_start_as_the_identity_inside_a_flow():
    with_lu = MAF(4, 3, [16], linear="lu", seed=10)
    without = MAF(4, 3, [16], seed=10)
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(with_lu.log_prob(x), without.log_prob(x), rtol=0, atol=1e-5)
    extra = sum(p.numel() for p in with_lu.parameters()) - sum(p.numel() for p in without.parameters())
    assert extra == 2 * (4 * 4 + 4 + 4)


def test_reverse_permutation_then_lu_is_a_linear_map_of_the_reversed_features():
    flow = MAF(3, 2, [8], linear="lu", seed=12)
    permutation, lu = flow.transform.transforms[1:3]
    assert isinstance(permutation, ReversePermutation) and not isinstance(permutation, RandomPermutation)
    randomised(lu, seed=13)
    x = torch.randn(6, 3)
    torch.testing.assert_close(lu(permutation(x)[0])[0], x.flip(-1) @ lu.weight().detach().T + lu.bias.detach())
