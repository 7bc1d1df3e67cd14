"""Tests of flowkit.made: the autoregressive property by autograd Jacobians over many
configurations, context, connectivity warnings, mask sets, state, caching and input errors."""

import itertools
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

import flowkit
from flowkit import MADE, ConnectivityWarning
from flowkit.made import MaskedLinear

quiet = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


def allowed_by_position(order: torch.Tensor) -> torch.Tensor:
    """[i, j] is true when feature j comes before feature i in ``order``."""
    position = {feature: k for k, feature in enumerate(order.tolist())}
    D = len(position)
    return torch.tensor([[position[j] < position[i] for j in range(D)] for i in range(D)]).view(D, D)


def mask_paths(made: MADE, r: int) -> torch.Tensor:
    """Feature-to-feature dependencies of mask set ``r`` by integer products of its masks."""
    D, P, C = made.features, made.num_params, made.columns_per_feature
    paths = made.layers[0].masks[r].long()
    for layer in made.layers[1:]:
        paths = layer.masks[r].long() @ paths
    if made.direct is not None:
        paths = paths + made.direct.masks[r].long()
    paths = paths[:, : D * C].reshape(D, P, D, C)
    return paths.sum(dim=(1, 3)) > 0


def input_jacobian(made: MADE, x: torch.Tensor, context=None, mask=None) -> torch.Tensor:
    """``|d out[b, d, p] / d x[b, c]|`` summed over points and params: ``(D, D * columns)``.

    Points do not interact, so differentiating the sum over the batch gives every point's own
    Jacobian at the cost of one pass per output.
    """
    J = jacobian(lambda inputs: made(inputs, context, mask=mask).sum(0), x)
    return J.abs().sum(dim=(1, 2))


def dependencies(made: MADE, x: torch.Tensor, context=None, mask=None) -> torch.Tensor:
    """Observed ``(D, D)`` dependencies of the outputs of each feature on each input feature."""
    grouped = input_jacobian(made, x, context, mask).view(made.features, made.features, -1)
    return grouped.sum(-1) != 0


def context_jacobian(made: MADE, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``|d out[b, d, :] / d context[b, :]|`` summed over points, params and columns: ``(D,)``."""
    J = jacobian(lambda c: made(x, c).sum(0), context)
    return J.abs().sum(dim=(1, 2, 3))


def reference_forward(made: MADE, x: torch.Tensor, r: int) -> torch.Tensor:
    """The network by hand, from the raw weights and masks of mask set ``r``."""
    h = x
    for layer in made.layers[:-1]:
        h = made.activation(h @ (layer.weight * layer.masks[r]).T + layer.bias)
    last = made.layers[-1]
    out = h @ (last.weight * last.masks[r]).T + last.bias
    if made.direct is not None:
        out = out + x @ (made.direct.weight * made.direct.masks[r]).T
    return out.view(*x.shape[:-1], made.features, made.num_params)


def random_config(seed: int) -> dict:
    rng = random.Random(seed)
    D = rng.randint(1, 8)
    order = rng.choice(["natural", "reverse", "random", "explicit"])
    return dict(
        features=D,
        hidden_features=[rng.randint(1, 2 * D + 2) for _ in range(rng.randint(1, 3))],
        num_params=rng.randint(1, 3),
        context_features=rng.randint(0, 2),
        order=rng.sample(range(D), D) if order == "explicit" else order,
        num_masks=rng.randint(1, 3),
        order_agnostic=rng.random() < 0.5,
        hidden_degrees=rng.choice(["random", "even"]),
        columns_per_feature=rng.randint(1, 3),
        direct=rng.random() < 0.3,
        activation=rng.choice([nn.Tanh, nn.ReLU]),
        seed=seed,
    )


def inputs_for(made: MADE, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, made.in_features, generator=generator, dtype=torch.float64)
    context = None
    if made.context_features:
        context = torch.randn(batch, made.context_features, generator=generator, dtype=torch.float64)
    return x, context


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class TestShapes:
    @pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
    @pytest.mark.parametrize("params", [1, 3])
    def test_output_shape(self, batch, params):
        made = MADE(4, [16], num_params=params, seed=0)
        assert made(torch.randn(*batch, 4)).shape == (*batch, 4, params)

    def test_output_shape_with_columns_per_feature(self):
        made = MADE(4, [16], num_params=2, columns_per_feature=3, seed=0)
        assert made(torch.randn(5, 12)).shape == (5, 4, 2)

    @pytest.mark.parametrize(
        "x_batch, context_batch, out_batch",
        [((3,), (2, 1), (2, 3)), ((), (4,), (4,)), ((4,), (), (4,)), ((2, 1), (1, 5), (2, 5))],
    )
    def test_context_broadcasts_against_x(self, x_batch, context_batch, out_batch):
        made = MADE(3, [16], num_params=2, context_features=2, seed=0)
        x = torch.randn(*x_batch, 3)
        context = torch.randn(*context_batch, 2)
        out = made(x, context)
        assert out.shape == (*out_batch, 3, 2)
        xs, contexts = x.expand(*out_batch, 3), context.expand(*out_batch, 2)
        for index in itertools.product(*map(range, out_batch)):
            assert torch.allclose(out[index], made(xs[index], contexts[index]))


class TestAutoregressive:
    @quiet
    @pytest.mark.filterwarnings("ignore:with hidden_degrees='even'")
    @pytest.mark.parametrize("seed", range(40))
    def test_jacobian_is_autoregressive_in_every_mask_set(self, seed):
        config = random_config(seed)
        made = MADE(**config).double()
        x, context = inputs_for(made)
        if not config["order_agnostic"]:
            assert all(torch.equal(order, made.orders[0]) for order in made.orders)
        for r in range(made.num_masks):
            depends = dependencies(made, x, context, mask=r)
            allowed = allowed_by_position(made.orders[r])
            assert not (depends & ~allowed).any(), f"mask set {r} leaks"
            if config["activation"] is nn.Tanh:
                assert torch.equal(depends, mask_paths(made, r))

    @pytest.mark.parametrize("hidden", [[10], [12, 9], [8, 8, 8]])
    @pytest.mark.parametrize(
        "options",
        [dict(), dict(order="reverse", num_params=2), dict(order="random", context_features=2),
         dict(columns_per_feature=2, num_masks=3, order_agnostic=True),
         dict(direct=True, context_features=1, num_masks=2, order_agnostic=True)],
        ids=["plain", "reverse", "context", "columns", "direct"],
    )
    def test_wide_even_network_has_every_allowed_dependency(self, hidden, options):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConnectivityWarning)
            made = MADE(7, hidden, hidden_degrees="even", activation=nn.Tanh, seed=1, **options)
        made = made.double()
        x, context = inputs_for(made)
        for r in range(made.num_masks):
            found = dependencies(made, x, context, mask=r)
            assert torch.equal(found, allowed_by_position(made.orders[r]))

    def test_direct_connection_restores_a_width_one_layer(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConnectivityWarning)
            made = MADE(5, [1], direct=True, order="random", seed=0).double()
        x, _ = inputs_for(made)
        assert torch.equal(dependencies(made, x), allowed_by_position(made.order))

    def test_current_mask_is_used_without_mask_argument(self):
        made = MADE(5, [20], num_masks=2, order_agnostic=True, seed=0).double()
        x, _ = inputs_for(made)
        made.use_mask(1)
        assert torch.equal(made(x), made(x, mask=1))
        assert torch.equal(dependencies(made, x) & ~allowed_by_position(made.orders[1]),
                           torch.zeros(5, 5, dtype=torch.bool))


class TestContext:
    @pytest.mark.parametrize("hidden_degrees", ["even", "random"])
    @pytest.mark.parametrize("hidden", [[32], [32, 32]])
    @pytest.mark.parametrize("order", ["natural", "reverse", "random"])
    def test_every_output_depends_on_the_context(self, order, hidden, hidden_degrees):
        made = MADE(5, hidden, num_params=2, context_features=3, order=order,
                    hidden_degrees=hidden_degrees, activation=nn.Tanh, seed=0).double()
        x, context = inputs_for(made)
        sensitivity = context_jacobian(made, x, context)
        assert (sensitivity > 0).all()
        first = made.order[0]
        changed = made(x, context + 1.0)[:, first] - made(x, context)[:, first]
        assert changed.abs().max() > 0

    def test_first_output_sees_context_or_warns(self):
        silent = []
        for seed in range(30):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                made = MADE(3, [4], context_features=2, seed=seed)
            warned = any(issubclass(w.category, ConnectivityWarning) for w in caught)
            paths = made.layers[0].masks[0][:, -2:].long()
            for layer in made.layers[1:]:
                paths = layer.masks[0].long() @ paths
            if not paths[made.order[0]].any() and not warned:
                silent.append(seed)
        assert silent == []

    def test_contrast_with_nflows_first_output(self):
        made_module = pytest.importorskip("nflows.transforms.made")
        torch.manual_seed(0)
        theirs = made_module.MADE(4, 16, context_features=3, output_multiplier=1)
        x, context = torch.randn(6, 4), torch.randn(6, 3)
        with torch.no_grad():
            theirs_changed = theirs(x, context + 1.0)[:, 0] - theirs(x, context)[:, 0]
        if theirs_changed.abs().max() > 0:
            pytest.skip("nflows' first output depends on the context in this version")
        ours = MADE(4, [16], context_features=3, hidden_degrees="even", activation=nn.Tanh, seed=0)
        with torch.no_grad():
            ours_changed = ours(x, context + 1.0)[:, 0] - ours(x, context)[:, 0]
        assert ours_changed.abs().min() > 0


class TestConnectivityWarning:
    @pytest.mark.parametrize(
        "features, hidden, options",
        [(5, [1], dict()), (6, [2, 3], dict(order="random")),
         (5, [2], dict(num_masks=3, order_agnostic=True)),
         (6, [3], dict(context_features=2, columns_per_feature=2, num_params=2)),
         (5, [1], dict(hidden_degrees="even"))],
    )
    def test_warns_once_with_the_lost_count(self, features, hidden, options):
        with pytest.warns(ConnectivityWarning) as record:
            made = MADE(features, hidden, seed=0, **options)
        assert len(record) == 1
        lost = sum(int((allowed_by_position(made.orders[r]) & ~mask_paths(made, r)).sum())
                   for r in range(made.num_masks))
        total = made.num_masks * features * (features - 1) // 2
        if made.context_features:
            for r in range(made.num_masks):
                paths = made.layers[0].masks[r][:, -made.context_features:].long()
                for layer in made.layers[1:]:
                    paths = layer.masks[r].long() @ paths
                lost += int((paths.reshape(features, -1).sum(1) == 0).sum())
            total += made.num_masks * features
        assert lost > 0
        assert f"cannot represent {lost} of the {total} dependencies" in str(record[0].message)

    @pytest.mark.parametrize("build", [lambda: MADE(5, [1], seed=0),
                                       lambda: flowkit.BernoulliMADE(5, [1], seed=0)],
                             ids=["made", "density"])
    def test_warning_points_at_the_caller(self, build):
        with pytest.warns(ConnectivityWarning) as record:
            build()
        assert record[0].filename == __file__

    def test_identical_mask_sets_warn(self):
        with pytest.warns(UserWarning, match="every mask set is the same"):
            made = MADE(5, [16], num_masks=3, hidden_degrees="even", seed=0)
        assert all(torch.equal(layer.masks[0], layer.masks[r]) for layer in made.layers for r in (1, 2))

    def test_strict_raises(self):
        with pytest.raises(ValueError, match=r"cannot represent \d+ of the 10 dependencies"):
            MADE(5, [1], strict=True, seed=0)

    @pytest.mark.parametrize("hidden", [[5], [8, 5, 6]])
    @pytest.mark.parametrize("strict", [False, True])
    def test_wide_layers_do_not_warn(self, hidden, strict):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            MADE(5, hidden, hidden_degrees="even", num_masks=2, order_agnostic=True,
                 context_features=1, seed=0, strict=strict)


class TestMaskSets:
    def test_next_mask_cycles(self):
        made = MADE(4, [16], num_masks=3, order_agnostic=True, seed=0)
        seen = []
        for _ in range(4):
            seen.append(made.next_mask())
            assert int(made.mask_index) == seen[-1]
            assert torch.equal(made.order, made.orders[seen[-1]])
        assert seen == [1, 2, 0, 1]

    @pytest.mark.parametrize("index", [-1, 3, 10])
    def test_use_mask_out_of_range_raises(self, index):
        made = MADE(4, [16], num_masks=3, seed=0)
        with pytest.raises(ValueError, match=r"mask index in 0\.\.2"):
            made.use_mask(index)
        assert made.current_mask == 0

    @pytest.mark.parametrize("index", [-1, 3])
    def test_forward_mask_out_of_range_raises(self, index):
        made = MADE(4, [16], num_masks=3, seed=0)
        with pytest.raises(ValueError, match="mask"):
            made(torch.randn(2, 4), mask=index)

    @pytest.mark.parametrize("order_agnostic", [False, True])
    def test_mask_sets_differ(self, order_agnostic):
        made = MADE(5, [32, 32], num_masks=3, order_agnostic=order_agnostic, seed=0)
        x = torch.randn(8, 5)
        outputs = [made(x, mask=r) for r in range(3)]
        assert not torch.equal(outputs[0], outputs[1])
        assert not torch.equal(outputs[1], outputs[2])
        assert not torch.equal(made.layers[0].masks[0], made.layers[0].masks[1])

    def test_order_agnostic_draws_orders(self):
        made = MADE(6, [64], num_masks=8, order_agnostic=True, seed=0)
        assert made.orders[0].tolist() == list(range(6))
        assert len({tuple(order.tolist()) for order in made.orders}) >= 6
        assert all(sorted(order.tolist()) == list(range(6)) for order in made.orders)

    @pytest.mark.parametrize("order", ["natural", "random", [2, 5, 0, 1, 4, 3]])
    def test_without_order_agnostic_one_order(self, order):
        made = MADE(6, [64], num_masks=8, order=order, seed=0)
        assert all(torch.equal(o, made.orders[0]) for o in made.orders)
        if not isinstance(order, str):
            assert made.orders[0].tolist() == order

    def test_same_seed_same_masks_and_orders(self):
        options = dict(num_masks=4, order_agnostic=True, order="random", context_features=1,
                       direct=True)
        first, second = MADE(6, [64, 64], seed=7, **options), MADE(6, [64, 64], seed=7, **options)
        assert torch.equal(first.orders, second.orders)
        for a, b in zip(first.modules(), second.modules()):
            if isinstance(a, MaskedLinear):
                assert torch.equal(a.masks, b.masks)

    def test_same_seeds_same_outputs(self):
        torch.manual_seed(3)
        first = MADE(6, [64], num_masks=2, order_agnostic=True, seed=7)
        torch.manual_seed(3)
        second = MADE(6, [64], num_masks=2, order_agnostic=True, seed=7)
        x = torch.randn(4, 6)
        for r in range(2):
            assert torch.equal(first(x, mask=r), second(x, mask=r))

    def test_different_seed_different_masks(self):
        first = MADE(6, [32, 32], num_masks=2, seed=0)
        second = MADE(6, [32, 32], num_masks=2, seed=1)
        assert not torch.equal(first.layers[0].masks, second.layers[0].masks)

    def test_unseeded_masks_follow_the_global_generator(self):
        torch.manual_seed(11)
        first = MADE(6, [32], order="random")
        torch.manual_seed(11)
        second = MADE(6, [32], order="random")
        assert torch.equal(first.layers[0].masks, second.layers[0].masks)
        assert torch.equal(first.orders, second.orders)


class TestState:
    options = dict(num_params=2, context_features=2, num_masks=3, order_agnostic=True, direct=True)

    def test_state_dict_round_trip(self):
        saved = MADE(5, [16, 16], seed=0, **self.options)
        saved.next_mask()
        saved.next_mask()
        x, context = torch.randn(4, 5), torch.randn(4, 2)

        loaded = MADE(5, [16, 16], seed=1, **self.options).eval()
        with torch.no_grad():
            before = loaded(x, context)
        assert not torch.equal(before, saved(x, context))

        loaded.load_state_dict(saved.state_dict())
        assert loaded.current_mask == 2
        assert torch.equal(loaded.order, saved.orders[2])
        assert torch.equal(loaded.orders, saved.orders)
        for a, b in zip(loaded.modules(), saved.modules()):
            if isinstance(a, MaskedLinear):
                assert torch.equal(a.masks, b.masks)
        with torch.no_grad():
            assert torch.equal(loaded(x, context), saved(x, context))
            for r in range(3):
                assert torch.equal(loaded(x, context, mask=r), saved(x, context, mask=r))
        assert loaded.next_mask() == 0


class TestEvalCache:
    def model(self) -> MADE:
        return MADE(5, [16, 16], num_masks=2, context_features=1, direct=True, seed=0).double().eval()

    def test_repeated_calls_agree(self):
        made = self.model()
        x, context = inputs_for(made)
        with torch.no_grad():
            first, second = made(x, context), made(x, context)
        assert torch.equal(first, second)
        expected = reference_forward(made, torch.cat([x, context], -1), 0)
        assert torch.allclose(first, expected, atol=1e-12)

    @pytest.mark.parametrize("which", [0, 1, 2, "direct"])
    def test_in_place_weight_change_invalidates(self, which):
        made = self.model()
        x, context = inputs_for(made)
        layer = made.direct if which == "direct" else made.layers[which]
        with torch.no_grad():
            before = made(x, context)
            layer.weight.add_(1.0)
            after = made(x, context)
            expected = reference_forward(made, torch.cat([x, context], -1), 0)
        assert not torch.equal(before, after)
        assert torch.allclose(after, expected, atol=1e-12)

    def test_eval_again_drops_the_kept_product(self):
        made = self.model()
        x, context = inputs_for(made)
        with torch.no_grad():
            before = made(x, context)
            made.layers[0].weight.data.add_(1.0)
            made.eval()
            after = made(x, context)
            expected = reference_forward(made, torch.cat([x, context], -1), 0)
        assert not torch.equal(before, after)
        assert torch.allclose(after, expected, atol=1e-12)

    def test_switching_mask_set_changes_output(self):
        made = self.model()
        x, context = inputs_for(made)
        h = torch.cat([x, context], -1)
        with torch.no_grad():
            first = made(x, context)
            made.use_mask(1)
            second = made(x, context)
            made.use_mask(0)
            third = made(x, context)
            assert torch.allclose(second, reference_forward(made, h, 1), atol=1e-12)
        assert not torch.equal(first, second)
        assert torch.equal(first, third)

    def test_mask_change_invalidates(self):
        made = self.model()
        x, context = inputs_for(made)
        with torch.no_grad():
            before = made(x, context)
            made.layers[1].masks[0].fill_(True)
            after = made(x, context)
            expected = reference_forward(made, torch.cat([x, context], -1), 0)
        assert torch.allclose(after, expected, atol=1e-12)
        assert not torch.equal(before, after)

    def test_inference_mode_cache_does_not_break_autograd(self):
        made = self.model().requires_grad_(False)
        x, context = inputs_for(made)
        with torch.inference_mode():
            made(x, context)
        x.requires_grad_(True)
        made(x, context).sum().backward()
        assert x.grad is not None

    def test_training_gradients_respect_masks(self):
        made = MADE(5, [16, 16], num_masks=2, direct=True, seed=0).train()
        x = torch.randn(8, 5)
        made(x, mask=1).pow(2).sum().backward()
        for layer in [*made.layers, made.direct]:
            grad = layer.weight.grad
            assert grad is not None
            assert (grad[~layer.masks[1]] == 0).all()
            assert (grad[layer.masks[1]] != 0).any()

    def test_eval_with_gradients_flows(self):
        made = self.model()
        x, context = inputs_for(made)
        made(x, context).sum().backward()
        for layer in made.layers:
            assert (layer.weight.grad[~layer.masks[0]] == 0).all()
            assert layer.weight.grad.abs().sum() > 0


class TestDtypes:
    def test_double_model(self):
        made = MADE(4, [16], num_params=2, context_features=1, seed=0).double()
        x, context = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
        out = made(x, context)
        assert out.dtype == torch.float64
        assert torch.allclose(out, reference_forward(made, torch.cat([x, context], -1), 0))

    @pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
    def test_integer_inputs_are_converted(self, dtype):
        made = MADE(4, [16], seed=0)
        x = torch.randint(0, 2, (3, 4))
        out = made(x.to(dtype))
        assert out.dtype == torch.float32
        assert torch.equal(out, made(x.float()))

    def test_integer_inputs_to_double_model(self):
        made = MADE(4, [16], context_features=1, seed=0).double()
        x, context = torch.randint(0, 3, (3, 4)), torch.randint(0, 3, (3, 1))
        out = made(x, context)
        assert out.dtype == torch.float64
        assert torch.equal(out, made(x.double(), context.double()))

    def test_dtype_follows_the_weights(self):
        made = MADE(4, [16], residual_blocks=1, seed=0)
        assert made.dtype == torch.float32
        assert made.double().dtype == torch.float64
        assert made(torch.ones(2, 4)).dtype == torch.float64


class TestErrors:
    @pytest.fixture
    def made(self):
        return MADE(4, [16], context_features=2, seed=0)

    @pytest.fixture
    def unconditional(self):
        return MADE(4, [16], seed=0)

    @pytest.mark.parametrize("shape", [(3, 5), (3,), (), (4, 3)])
    def test_wrong_feature_count(self, made, shape):
        with pytest.raises(ValueError, match=r"expected x of shape \(\*, 4\)"):
            made(torch.randn(shape), torch.randn(2))

    def test_wrong_column_count(self):
        made = MADE(3, [16], columns_per_feature=2, seed=0)
        with pytest.raises(ValueError, match=r"expected x of shape \(\*, 6\), got \(2, 3\)"):
            made(torch.randn(2, 3))

    @pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "infinite"),
                                             (float("-inf"), "infinite")])
    def test_non_finite_x(self, made, value, word):
        x = torch.randn(3, 4)
        x[1, 2] = value
        with pytest.raises(ValueError, match=f"x contains {word}"):
            made(x, torch.randn(3, 2))

    @pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
    def test_non_finite_context(self, made, value, word):
        context = torch.randn(3, 2)
        context[0, 1] = value
        with pytest.raises(ValueError, match=f"context contains {word}"):
            made(torch.randn(3, 4), context)

    def test_validation_can_be_turned_off(self, made):
        x = torch.randn(3, 4)
        x[0, 0] = float("nan")
        with flowkit.validate(False):
            out = made(x, torch.randn(3, 2))
        assert out[0].isnan().any()
        with pytest.raises(ValueError, match="NaN"):
            made(x, torch.randn(3, 2))

    def test_missing_context(self, made):
        with pytest.raises(ValueError, match=r"conditional.*\(\*, 2\)"):
            made(torch.randn(3, 4))

    def test_unexpected_context(self, unconditional):
        with pytest.raises(ValueError, match="unconditional"):
            unconditional(torch.randn(3, 4), torch.randn(3, 2))

    @pytest.mark.parametrize("shape", [(3, 3), (3,), ()])
    def test_wrong_context_width(self, made, shape):
        with pytest.raises(ValueError, match=r"expected context of shape \(\*, 2\)"):
            made(torch.randn(3, 4), torch.randn(shape))

    def test_context_batch_does_not_broadcast(self, made):
        with pytest.raises(ValueError, match=r"\(3,\).*\(5,\).*broadcast"):
            made(torch.randn(3, 4), torch.randn(5, 2))

    def test_context_not_a_tensor(self, made):
        with pytest.raises(TypeError, match="context.*list"):
            made(torch.randn(3, 4), [[0.0, 1.0]] * 3)

    @pytest.mark.parametrize("x", [[[0.0] * 4], None, 1.0], ids=["list", "none", "float"])
    def test_x_not_a_tensor(self, unconditional, x):
        with pytest.raises(TypeError, match="expected x to be a torch.Tensor"):
            unconditional(x)

    @pytest.mark.parametrize(
        "args, kwargs, error, match",
        [((4, [16, 0]), {}, ValueError, "hidden width >= 1, got 0"),
         ((4, 0), {}, ValueError, "hidden width >= 1, got 0"),
         ((4, [16.0]), {}, TypeError, "hidden width to be an int"),
         ((4, [16], 0), {}, ValueError, "params >= 1, got 0"),
         ((0, [16]), {}, ValueError, "features >= 1, got 0"),
         ((4, [16]), dict(num_masks=0), ValueError, "num_masks >= 1, got 0"),
         ((4, [16]), dict(columns_per_feature=0), ValueError, "columns_per_feature >= 1"),
         ((4, [16]), dict(context_features=-1), ValueError, "context_features.*>= 0, got -1"),
         ((4, [16]), dict(context_features=1.5), TypeError, "context_features"),
         ((4, [16]), dict(order=[0, 1, 1, 3]), ValueError, r"permutation of 0\.\.3"),
         ((4, [16]), dict(order=[0, 1, 2]), ValueError, r"permutation of 0\.\.3"),
         ((4, [16]), dict(order="backwards"), ValueError, "'backwards'"),
         ((4, [16]), dict(hidden_degrees="uniform"), ValueError, "'uniform'")],
    )
    def test_bad_construction(self, args, kwargs, error, match):
        with pytest.raises(error, match=match):
            MADE(*args, **kwargs)


class TestMaskedLinear:
    @pytest.mark.parametrize("bias", [True, False])
    def test_matches_functional_linear(self, bias):
        generator = torch.Generator().manual_seed(0)
        masks = torch.rand(2, 6, 5, generator=generator) < 0.5
        layer = MaskedLinear(masks, bias=bias)
        x = torch.randn(4, 5, generator=generator)
        assert tuple(layer.weight.shape) == (6, 5)
        for r in range(2):
            expected = F.linear(x, layer.weight * masks[r], layer.bias)
            assert torch.allclose(layer(x, r), expected)
        assert not torch.allclose(layer(x, 0), layer(x, 1))

    def test_single_mask(self):
        mask = torch.tensor([[1, 0, 0], [1, 1, 0]])
        layer = MaskedLinear(mask)
        assert layer.masks.shape == (1, 2, 3) and layer.masks.dtype == torch.bool
        x = torch.randn(3, 3)
        assert torch.allclose(layer(x), F.linear(x, layer.weight * mask, layer.bias))
        assert not torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias))

    def test_initialisation_scales_with_the_masked_fan_in(self):
        torch.manual_seed(0)
        mask = torch.zeros(2, 400, dtype=torch.bool)
        mask[0, :4] = True
        mask[1, :] = True
        layer = MaskedLinear(mask)
        assert layer.weight[0].abs().max() <= 0.5
        assert layer.weight[0].abs().max() > 0.05
        assert layer.weight[1].abs().max() <= 0.05


class TestKeptTensors:
    """What MaskedLinear and MADE keep between calls is derived: it follows every change of what
    it is derived from, and is not part of a pickled (``torch.save``-d, deep-copied) module."""

    def test_the_float_mask_follows_in_place_edits_dtype_and_a_replaced_buffer(self):
        layer = MaskedLinear(torch.ones(3, 4, dtype=torch.bool))
        x = torch.randn(2, 4)
        layer(x).sum().backward()  # training path, keeps a float mask
        with torch.no_grad():
            layer.masks[0, :, 1] = False  # in place: the version counter moves
        expected = x @ (layer.weight * layer.masks[0]).T + layer.bias
        assert torch.allclose(layer(x), expected)
        layer.masks = torch.zeros(1, 3, 4, dtype=torch.bool)  # replaced
        assert torch.allclose(layer(x), layer.bias.expand(2, 3))
        layer.double()
        assert layer.mask().dtype == torch.float64 and layer(x.double()).dtype == torch.float64

    @pytest.mark.parametrize("build", [
        lambda: flowkit.BernoulliMADE(6, [16], num_masks=2, seed=0),
        lambda: flowkit.MAF(3, 2, [16], batch_norm=True, seed=0),
    ])
    def test_a_whole_module_pickles_after_evaluation_and_sampling(self, build):
        import copy
        import io

        model = build().eval()
        x = model.sample(5, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            before = model.log_prob(x)  # the eval-mode caches and the engine plan are filled
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for loaded in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
            with torch.no_grad():
                assert torch.equal(loaded.log_prob(x), before)
            assert torch.equal(loaded.sample(5, generator=torch.Generator().manual_seed(0)), x)
