"""Tests of the rational-quadratic spline: agreement with nflows, log-determinants, inversion, tails and stability."""

import math

import pytest
import torch
import torch.nn.functional as F
from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline

from flowkit.transforms.spline import RationalQuadraticSpline, rational_quadratic_spline

B = 3.0
K = 8


def draw(shape, bins=K, scale=1.0, low=-B, high=B, dtype=torch.float64, seed=0):
    """Inputs uniform on ``[low, high]`` and Gaussian raw parameters of standard deviation ``scale``."""
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)
    params = scale * torch.randn(*shape, 3 * bins - 1, generator=g, dtype=torch.float64)
    return x.to(dtype), params.to(dtype)


def extreme(shape, bins=K, dtype=torch.float32, seed=0):
    """Raw parameters of +-20: bins at their minimum width or height, derivatives at 1e-3 or 20."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(2, (*shape, 3 * bins - 1), generator=g) * 2 - 1
    return (20.0 * signs).to(dtype)


def reference(x, params, bins, inverse, bound=B, **minimums):
    """nflows' spline with linear tails; it takes the K - 1 interior derivatives and pads the two ends."""
    return unconstrained_rational_quadratic_spline(
        x,
        params[..., :bins],
        params[..., bins : 2 * bins],
        params[..., 2 * bins :],
        inverse=inverse,
        tails="linear",
        tail_bound=bound,
        **minimums,
    )


def knots(params, bins=K, bound=B, minimum=1e-3):
    """The x and y knots and the K + 1 knot derivatives, computed here from the paper's definitions."""

    def cumulative(raw):
        fractions = minimum + (1 - minimum * bins) * torch.softmax(raw, dim=-1)
        return -bound + 2 * bound * F.pad(torch.cumsum(fractions, dim=-1), (1, 0))

    interior = minimum + F.softplus(params[..., 2 * bins :])
    derivatives = F.pad(interior, (1, 1), value=1.0)
    return cumulative(params[..., :bins]), cumulative(params[..., bins : 2 * bins]), derivatives


def backward_error(x, z, ladj):
    """``|z - x|`` scaled by the slope where the map is flat: the error in y that explains the error in x."""
    return ((z - x).abs() * ladj.exp().clamp(max=1)).max().item()


class TestAgainstNflows:
    @pytest.mark.parametrize("inverse", [False, True])
    @pytest.mark.parametrize("bins", [1, 2, 8])
    def test_agrees_inside_and_outside(self, inverse, bins):
        x, params = draw((4000,), bins=bins, scale=2.0, low=-1.5 * B, high=1.5 * B)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=B)
        y_ref, ladj_ref = reference(x, params, bins, inverse)
        assert (y - y_ref).abs().max() <= 1e-6
        assert (ladj - ladj_ref).abs().max() <= 1e-6

    @pytest.mark.parametrize("inverse", [False, True])
    def test_agrees_with_other_bound_and_minimums(self, inverse):
        minimums = dict(min_bin_width=1e-2, min_bin_height=5e-3, min_derivative=1e-2)
        x, params = draw((3, 500), bins=5, scale=3.0, low=-2.5, high=2.5, seed=1)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=1.5, **minimums)
        y_ref, ladj_ref = reference(x, params, 5, inverse, bound=1.5, **minimums)
        assert y.shape == ladj.shape == (3, 500)
        assert (y - y_ref).abs().max() <= 1e-6
        assert (ladj - ladj_ref).abs().max() <= 1e-6

    @pytest.mark.parametrize("inverse", [False, True])
    def test_agrees_at_knots_and_boundaries(self, inverse):
        _, params = draw((200,), seed=2)
        x_knots, y_knots, _ = knots(params)
        points = (y_knots if inverse else x_knots).T
        x = points.reshape(-1)
        params = params.expand(K + 1, -1, -1).reshape(-1, 3 * K - 1)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=B)
        y_ref, ladj_ref = reference(x, params, K, inverse)
        assert (y - y_ref).abs().max() <= 1e-6
        assert (ladj - ladj_ref).abs().max() <= 1e-6


class TestLogDeterminant:
    @pytest.mark.parametrize("inverse", [False, True])
    def test_matches_autograd(self, inverse):
        x, params = draw((3000,), scale=1.5, low=-1.5 * B, high=1.5 * B, seed=3)
        x.requires_grad_(True)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=B)
        (dydx,) = torch.autograd.grad(y.sum(), x)
        assert (dydx > 0).all()
        torch.testing.assert_close(ladj, dydx.log(), rtol=0, atol=1e-8)

    def test_inverse_is_minus_forward_at_the_inverse_point(self):
        x, params = draw((3000,), scale=1.5, seed=4)
        y, ladj = rational_quadratic_spline(x, params, bound=B)
        _, inverse_ladj = rational_quadratic_spline(y, params, inverse=True, bound=B)
        torch.testing.assert_close(inverse_ladj, -ladj, rtol=0, atol=1e-8)


class TestInverse:
    def test_round_trip_float64(self):
        x, params = draw((20000,), seed=5)
        y, _ = rational_quadratic_spline(x, params, bound=B)
        z, _ = rational_quadratic_spline(y, params, inverse=True, bound=B)
        assert (z - x).abs().max() <= 1e-10

    def test_round_trip_float32(self):
        x, params = draw((20000,), scale=0.3, dtype=torch.float32, seed=6)
        y, _ = rational_quadratic_spline(x, params, bound=B)
        z, _ = rational_quadratic_spline(y, params, inverse=True, bound=B)
        assert z.dtype == torch.float32
        assert (z - x).abs().max() <= 1e-5

    @pytest.mark.parametrize("scale", [1.0, 3.0, "extreme"])
    def test_round_trip_float32_is_accurate_up_to_conditioning(self, scale):
        # Where the spline is flat (slopes down to 1e-7), distinct x share one float32 y, and no
        # inverse recovers x to 1e-5; what it can do is return a point whose image is within
        # rounding of y. The error in x, times the slope where that is below 1, measures this.
        x, params = draw((20000,), scale=1.0 if scale == "extreme" else scale, dtype=torch.float32, seed=7)
        if scale == "extreme":
            params = extreme((20000,), seed=7)
        y, ladj = rational_quadratic_spline(x, params, bound=B)
        z, _ = rational_quadratic_spline(y, params, inverse=True, bound=B)
        assert backward_error(x, z, ladj) <= 1e-5

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_round_trip_at_knots(self, dtype):
        _, params = draw((100,), scale=2.0, seed=8)
        x = knots(params)[0].T.reshape(-1)
        params = params.expand(K + 1, -1, -1).reshape(-1, 3 * K - 1)
        x, params = x.to(dtype), params.to(dtype)
        y, ladj = rational_quadratic_spline(x, params, bound=B)
        z, _ = rational_quadratic_spline(y, params, inverse=True, bound=B)
        assert backward_error(x, z, ladj) <= (1e-5 if dtype == torch.float32 else 1e-12)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("magnitude", [50.0, 1e4, 1e6])
    def test_round_trip_in_the_tails_is_exact(self, dtype, magnitude):
        x, _ = draw((1000,), low=B, high=magnitude, dtype=dtype, seed=9)
        x = torch.cat([x, -x])
        _, moderate = draw((1000,), scale=2.0, dtype=dtype, seed=10)
        params = torch.cat([extreme((1000,), dtype=dtype), moderate])
        y, ladj = rational_quadratic_spline(x, params, bound=B)
        z, inverse_ladj = rational_quadratic_spline(y, params, inverse=True, bound=B)
        assert torch.equal(z, x)
        assert (ladj == 0).all() and (inverse_ladj == 0).all()


class TestShape:
    def test_monotonic_increasing(self):
        _, params = draw((5,), scale=2.0, seed=10)
        x = torch.linspace(-2 * B, 2 * B, 4001, dtype=torch.float64)
        params = params[:, None, :].expand(5, 4001, 3 * K - 1)
        y, _ = rational_quadratic_spline(x.expand(5, -1), params, bound=B)
        assert (y.diff(dim=-1) > 0).all()
        z, _ = rational_quadratic_spline(x.expand(5, -1), params, inverse=True, bound=B)
        assert (z.diff(dim=-1) > 0).all()

    @pytest.mark.parametrize("inverse", [False, True])
    def test_identity_outside(self, inverse):
        x = torch.tensor([-1e6, -50.0, -B - 1e-9, B + 1e-9, 7.0, 1e6], dtype=torch.float64)
        params = 5 * torch.randn(6, 3 * K - 1, dtype=torch.float64)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=B)
        assert torch.equal(y, x)
        assert torch.equal(ladj, torch.zeros_like(x))

    @pytest.mark.parametrize("inverse", [False, True])
    def test_continuous_at_the_bounds(self, inverse):
        _, params = draw((7,), scale=2.0, seed=11)
        eps = 1e-7
        points = torch.tensor([-B - eps, -B, -B + eps, B - eps, B, B + eps], dtype=torch.float64)
        x = points[:, None].expand(6, 7).clone().requires_grad_(True)
        y, ladj = rational_quadratic_spline(x, params.expand(6, 7, -1), inverse=inverse, bound=B)
        (dydx,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y, x.detach(), rtol=0, atol=2e-6)
        assert torch.equal(y[[1, 4]], x.detach()[[1, 4]])
        torch.testing.assert_close(dydx, torch.ones_like(dydx), rtol=0, atol=1e-3)
        torch.testing.assert_close(ladj, torch.zeros_like(ladj), rtol=0, atol=1e-3)
        torch.testing.assert_close(ladj[[1, 4]], torch.zeros(2, 7, dtype=torch.float64), rtol=0, atol=1e-14)

    def test_knots_map_to_knots(self):
        _, params = draw((50,), scale=2.0, seed=12)
        x_knots, y_knots, derivatives = knots(params)
        expand = params.expand(K + 1, -1, -1).transpose(0, 1)
        y, ladj = rational_quadratic_spline(x_knots, expand, bound=B)
        torch.testing.assert_close(y, y_knots, rtol=0, atol=1e-12)
        # The reference knots (torch.softmax) and the spline's own differ by rounding, which moves a
        # point "at" a knot by an ulp into a bin where the derivative may change steeply.
        torch.testing.assert_close(ladj, derivatives.log(), rtol=0, atol=1e-8)
        x, inverse_ladj = rational_quadratic_spline(y_knots, expand, inverse=True, bound=B)
        torch.testing.assert_close(x, x_knots, rtol=0, atol=1e-12)
        torch.testing.assert_close(inverse_ladj, -derivatives.log(), rtol=0, atol=1e-8)

    def test_one_bin_is_the_identity(self):
        x, params = draw((100,), bins=1, scale=5.0, low=-2 * B, high=2 * B, seed=13)
        y, ladj = rational_quadratic_spline(x, params, bound=B)
        torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
        torch.testing.assert_close(ladj, torch.zeros_like(x), rtol=0, atol=1e-12)

    @pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_shapes_and_dtypes(self, shape, dtype):
        x, params = draw(shape, scale=1.0, low=-4.0, high=4.0, dtype=dtype, seed=14)
        for inverse in (False, True):
            y, ladj = rational_quadratic_spline(x, params, inverse=inverse)
            assert y.shape == ladj.shape == shape
            assert y.dtype == ladj.dtype == dtype
            flat_params = params.reshape(-1, 3 * K - 1)
            flat, flat_ladj = rational_quadratic_spline(x.reshape(-1), flat_params, inverse=inverse)
            assert torch.equal(y.reshape(-1), flat) and torch.equal(ladj.reshape(-1), flat_ladj)

    def test_creates_no_tensor_on_a_fixed_device(self):
        x = torch.zeros(4, 3, device="meta")
        params = torch.zeros(4, 3, 3 * K - 1, device="meta")
        for inverse in (False, True):
            y, ladj = rational_quadratic_spline(x, params, inverse=inverse)
            assert y.device.type == ladj.device.type == "meta" and y.shape == (4, 3)


class TestStability:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("inverse", [False, True])
    def test_finite_at_extreme_inputs_and_params(self, dtype, inverse):
        _, moderate = draw((1,), seed=15)
        x_knots, y_knots, _ = knots(moderate)
        points = torch.tensor([-3e38, 3e38, -1e6, 1e6, -B, B, 0.0, -1e-30, 1e-30, -50.0, 50.0], dtype=torch.float64)
        bounds = torch.tensor([-B, -B, B, B], dtype=dtype)
        next_to_bounds = torch.nextafter(bounds, torch.tensor([-4.0, 0, 0, 4.0], dtype=dtype))
        x = torch.cat([points, x_knots[0], y_knots[0]]).to(dtype)
        x = torch.cat([x, next_to_bounds])
        n = x.numel()
        params = torch.cat(
            [
                extreme((64, n), dtype=dtype, seed=16),
                (torch.rand(64, n, 3 * K - 1, generator=torch.Generator().manual_seed(17)) * 40 - 20).to(dtype),
                moderate.expand(1, n, -1).to(dtype),
            ]
        ).requires_grad_(True)
        x = x.expand(params.shape[0], n).clone().requires_grad_(True)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=B)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        dx, dparams = torch.autograd.grad((y + ladj).sum(), [x, params])
        assert torch.isfinite(dx).all() and torch.isfinite(dparams).all()
        assert (y.detach().abs() <= B).eq(x.detach().abs() <= B).all()

    @pytest.mark.parametrize("inverse", [False, True])
    def test_gradients_wrt_params(self, inverse):
        x, params = draw((40,), bins=4, scale=1.0, low=-1.2 * B, high=1.2 * B, seed=18)
        params.requires_grad_(True)
        y, ladj = rational_quadratic_spline(x, params, inverse=inverse, bound=B)
        (grad,) = torch.autograd.grad((y + ladj).sum(), params)
        assert torch.isfinite(grad).all()
        inside = x.abs() <= B
        assert (grad[inside].abs().sum(-1) > 0).all() and (grad[~inside] == 0).all()
        some = inside.nonzero()[:4, 0]
        assert torch.autograd.gradcheck(
            lambda p: rational_quadratic_spline(x[some], p, inverse=inverse, bound=B),
            (params[some].detach().requires_grad_(True),),
            fast_mode=True,
        )


class TestModule:
    def test_transformer_matches_function(self):
        spline = RationalQuadraticSpline(bins=5, bound=2.0, min_bin_width=1e-2, min_derivative=1e-2)
        assert spline.num_params == 14
        x, params = draw((3, 4), bins=5, scale=1.5, low=-3.0, high=3.0, seed=19)
        y, ladj = spline(x, params)
        expected = rational_quadratic_spline(x, params, bound=2.0, min_bin_width=1e-2, min_derivative=1e-2)
        assert torch.equal(y, expected[0]) and torch.equal(ladj, expected[1])
        z, inverse_ladj = spline.inverse(y, params)
        torch.testing.assert_close(z, x, rtol=0, atol=1e-10)
        torch.testing.assert_close(inverse_ladj, -ladj, rtol=0, atol=1e-10)

    def test_is_a_well_behaved_module(self):
        flow = torch.nn.Sequential(RationalQuadraticSpline(bins=3)).double().to("cpu")
        assert list(flow.parameters()) == [] and list(flow.buffers()) == []
        x, params = draw((6,), bins=3, seed=20)
        y, _ = flow[0](x, params)
        assert y.dtype == torch.float64

    def test_repr(self):
        assert repr(RationalQuadraticSpline()) == (
            "RationalQuadraticSpline(bins=8, bound=3.0, min_bin_width=0.001, min_bin_height=0.001, "
            "min_derivative=0.001)"
        )


class TestValidation:
    @pytest.mark.parametrize("size", [0, 1, 3, 4, 6, 24])
    def test_params_not_of_the_form_3k_minus_1(self, size):
        with pytest.raises(ValueError, match=rf"3K - 1.*got {size}"):
            rational_quadratic_spline(torch.zeros(2), torch.zeros(2, size))

    def test_params_not_matching_x(self):
        with pytest.raises(ValueError, match=r"expected params of shape.*\(2, 3, 23\).*got \(3, 23\)"):
            rational_quadratic_spline(torch.zeros(2, 3), torch.zeros(3, 23))

    @pytest.mark.parametrize("method", ["forward", "inverse"])
    def test_transformer_with_the_wrong_number_of_bins(self, method):
        spline = RationalQuadraticSpline(bins=4)
        with pytest.raises(ValueError, match=r"expected params of shape \(\*, 11\) for 4 bins, got \(5, 23\)"):
            getattr(spline, method)(torch.zeros(5), torch.zeros(5, 23))

    @pytest.mark.parametrize("bins, error", [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError),
                                             ("8", TypeError)])
    def test_bad_bins(self, bins, error):
        with pytest.raises(error, match="bins"):
            RationalQuadraticSpline(bins=bins)

    @pytest.mark.parametrize("bound, error", [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError),
                                              (math.nan, ValueError), ("3", TypeError)])
    def test_bad_bound(self, bound, error):
        with pytest.raises(error, match="bound"):
            RationalQuadraticSpline(bound=bound)
        with pytest.raises(error, match="bound"):
            rational_quadratic_spline(torch.zeros(2), torch.zeros(2, 23), bound=bound)

    @pytest.mark.parametrize("name", ["min_bin_width", "min_bin_height", "min_derivative"])
    @pytest.mark.parametrize("value", [0.0, -1e-3, math.nan])
    def test_bad_minimums(self, name, value):
        with pytest.raises(ValueError, match=name):
            RationalQuadraticSpline(**{name: value})

    @pytest.mark.parametrize("name", ["min_bin_width", "min_bin_height"])
    def test_minimum_too_large_for_the_bins(self, name):
        with pytest.raises(ValueError, match=rf"{name} \* bins < 1, got 0.125 \* 8"):
            RationalQuadraticSpline(bins=8, **{name: 0.125})
        with pytest.raises(ValueError, match=rf"{name} \* bins < 1"):
            rational_quadratic_spline(torch.zeros(2), torch.zeros(2, 23), **{name: 0.2})
