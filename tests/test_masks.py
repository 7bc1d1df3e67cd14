"""Tests of flowkit.masks: orderings, degrees, masks and their connectivity, checked against
dependency matrices computed independently with plain integer matrix products."""

import random

import numpy as np
import pytest
import torch

from flowkit import masks as M


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def allowed_by_position(order: list[int]) -> torch.Tensor:
    """[i, j] is true when feature j comes before feature i in ``order``."""
    position = {feature: k for k, feature in enumerate(order)}
    D = len(order)
    return torch.tensor([[position[j] < position[i] for j in range(D)] for i in range(D)]).view(D, D)


def feature_paths(masks, features, params, columns_per_feature):
    """Number of paths from each input feature to each output feature, ``(D, D)`` integers."""
    paths = masks[0].long()
    for mask in masks[1:]:
        paths = mask.long() @ paths
    paths = paths[:, : features * columns_per_feature]
    return paths.reshape(features, params, features, columns_per_feature).sum(dim=(1, 3))


def random_config(seed: int) -> dict:
    rng = random.Random(seed)
    D = rng.randint(1, 7)
    order = rng.choice(["natural", "reverse", "random", "explicit"])
    return dict(
        features=D,
        hidden=[rng.randint(1, 2 * D + 2) for _ in range(rng.randint(1, 3))],
        num_params=rng.randint(1, 3),
        columns_per_feature=rng.randint(1, 3),
        context_features=rng.randint(0, 2),
        order=rng.sample(range(D), D) if order == "explicit" else order,
        rule=rng.choice(["random", "even"]),
    )


def build(config: dict, seed: int):
    generator = seeded(seed)
    order = M.ordering(config["features"], config["order"], generator=generator)
    masks, direct = M.made_masks(
        order,
        config["hidden"],
        num_params=config["num_params"],
        columns_per_feature=config["columns_per_feature"],
        context_features=config["context_features"],
        rule=config["rule"],
        generator=generator,
    )
    return order, masks, direct


class TestOrdering:
    def test_natural_and_reverse(self):
        assert M.ordering(5).tolist() == [0, 1, 2, 3, 4]
        assert M.ordering(5, "natural").tolist() == [0, 1, 2, 3, 4]
        assert M.ordering(5, "reverse").tolist() == [4, 3, 2, 1, 0]

    @pytest.mark.parametrize("features", [1, 2, 7, 20])
    def test_random_is_a_seeded_permutation(self, features):
        first = M.ordering(features, "random", generator=seeded(3))
        again = M.ordering(features, "random", generator=seeded(3))
        assert first.dtype == torch.long
        assert torch.equal(first, again)
        assert sorted(first.tolist()) == list(range(features))

    def test_random_depends_on_the_seed(self):
        orders = {tuple(M.ordering(10, "random", generator=seeded(s)).tolist()) for s in range(5)}
        assert len(orders) > 1

    @pytest.mark.parametrize(
        "explicit",
        [[2, 0, 3, 1], (2, 0, 3, 1), torch.tensor([2, 0, 3, 1]),
         torch.tensor([2, 0, 3, 1], dtype=torch.int32), np.array([2, 0, 3, 1])],
        ids=["list", "tuple", "long", "int32", "numpy"],
    )
    def test_explicit_permutation_is_kept(self, explicit):
        order = M.ordering(4, explicit)
        assert order.dtype == torch.long
        assert order.tolist() == [2, 0, 3, 1]

    @pytest.mark.parametrize(
        "explicit",
        [[0, 0, 2], [0, 1], [0, 1, 2, 3], [0, 1, 3], [-1, 0, 1]],
        ids=["duplicate", "too-short", "too-long", "out-of-range", "negative"],
    )
    def test_non_permutation_raises(self, explicit):
        with pytest.raises(ValueError, match=r"permutation of 0\.\.2"):
            M.ordering(3, explicit)

    @pytest.mark.parametrize(
        "explicit", [[0.0, 1.0, 2.0], torch.tensor([True, False, True])], ids=["float", "bool"]
    )
    def test_non_integer_dtype_raises(self, explicit):
        with pytest.raises(TypeError, match="dtype"):
            M.ordering(3, explicit)

    def test_unknown_name_raises(self):
        with pytest.raises(ValueError, match="'sideways'"):
            M.ordering(3, "sideways")

    @pytest.mark.parametrize(
        "features, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
    )
    def test_bad_feature_count_raises(self, features, error):
        with pytest.raises(error, match="features"):
            M.ordering(features)


class TestDegrees:
    @pytest.mark.parametrize("seed", range(4))
    @pytest.mark.parametrize("features", [1, 2, 5, 9])
    def test_input_degrees_invert_the_ordering(self, features, seed):
        order = M.ordering(features, "random", generator=seeded(seed))
        degrees = M.input_degrees(order)
        assert [degrees[order[k]].item() for k in range(features)] == list(range(1, features + 1))
        assert torch.equal(degrees.argsort(), order)

    @pytest.mark.parametrize("features, lowest", [(2, 1), (5, 1), (5, 0), (8, 3), (8, 0)])
    def test_random_degrees_lie_in_range(self, features, lowest):
        degrees = M.hidden_degrees(500, features, lowest, "random", generator=seeded(0))
        assert degrees.dtype == torch.long
        assert degrees.min() >= lowest and degrees.max() <= features - 1
        assert set(degrees.tolist()) == set(range(lowest, features))

    def test_random_degrees_are_seeded(self):
        first = M.hidden_degrees(50, 6, 1, "random", generator=seeded(4))
        assert torch.equal(first, M.hidden_degrees(50, 6, 1, "random", generator=seeded(4)))
        assert not torch.equal(first, M.hidden_degrees(50, 6, 1, "random", generator=seeded(5)))

    @pytest.mark.parametrize("rule", ["random", "even"])
    @pytest.mark.parametrize("lowest", [0, 1])
    def test_single_feature_degrees(self, rule, lowest):
        degrees = M.hidden_degrees(7, 1, lowest, rule, generator=seeded(0))
        assert degrees.tolist() == [lowest] * 7

    @pytest.mark.parametrize(
        "width, features, lowest", [(4, 5, 1), (5, 5, 1), (6, 4, 1), (13, 5, 0), (5, 5, 0), (3, 4, 2)]
    )
    def test_even_degrees_cover_the_range(self, width, features, lowest):
        degrees = M.hidden_degrees(width, features, lowest, "even")
        assert degrees.numel() == width
        assert set(degrees.tolist()) == set(range(lowest, features))
        counts = torch.bincount(degrees - lowest)
        assert counts.max() - counts.min() <= 1

    def test_even_degrees_are_deterministic(self):
        first = M.hidden_degrees(11, 6, 1, "even", generator=seeded(0))
        assert torch.equal(first, M.hidden_degrees(11, 6, 1, "even", generator=seeded(1)))
        assert torch.equal(first, M.hidden_degrees(11, 6, 1, "even"))

    @pytest.mark.parametrize("width, features, lowest", [(2, 6, 1), (3, 9, 0)])
    def test_even_degrees_below_span_stay_in_range(self, width, features, lowest):
        degrees = M.hidden_degrees(width, features, lowest, "even")
        assert degrees.min() >= lowest and degrees.max() <= features - 1
        assert len(set(degrees.tolist())) == width

    def test_unknown_rule_raises(self):
        with pytest.raises(ValueError, match="'uniform'"):
            M.hidden_degrees(4, 3, 1, "uniform")

    @pytest.mark.parametrize("width, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
    def test_bad_width_raises(self, width, error):
        with pytest.raises(error, match="hidden width"):
            M.hidden_degrees(width, 3, 1)


class TestMadeMasks:
    @pytest.mark.parametrize("seed", range(40))
    def test_mask_product_is_autoregressive(self, seed):
        config = random_config(seed)
        order, masks, direct = build(config, seed)
        D, P, C = config["features"], config["num_params"], config["columns_per_feature"]
        allowed = allowed_by_position(order.tolist())
        paths = feature_paths(masks, D, P, C)
        assert (paths[~allowed] == 0).all()
        assert (feature_paths([direct], D, P, C)[~allowed] == 0).all()

    @pytest.mark.parametrize("seed", range(10))
    def test_mask_shapes(self, seed):
        config = random_config(seed)
        _, masks, direct = build(config, seed)
        D, P, C = config["features"], config["num_params"], config["columns_per_feature"]
        in_columns = D * C + config["context_features"]
        widths = config["hidden"]
        assert [tuple(m.shape) for m in masks] == list(
            zip(widths + [D * P], [in_columns] + widths)
        )
        assert tuple(direct.shape) == (D * P, in_columns)
        assert all(m.dtype == torch.bool for m in masks + [direct])

    @pytest.mark.parametrize("seed", range(10))
    def test_direct_mask_is_strictly_lower_triangular_in_order(self, seed):
        config = random_config(seed)
        order, _, direct = build(config, seed)
        P, C, K = config["num_params"], config["columns_per_feature"], config["context_features"]
        allowed = allowed_by_position(order.tolist())
        expected = allowed.repeat_interleave(P, dim=0).repeat_interleave(C, dim=1)
        expected = torch.cat([expected, torch.ones(expected.shape[0], K, dtype=torch.bool)], dim=1)
        assert torch.equal(direct, expected)

    @pytest.mark.parametrize("seed", range(6))
    def test_context_columns_feed_every_first_layer_unit(self, seed):
        order = M.ordering(5, "random", generator=seeded(seed))
        masks, _ = M.made_masks(order, [40, 7], context_features=3, generator=seeded(seed))
        assert masks[0][:, -3:].all()

    def test_context_allows_degree_zero_units(self):
        masks, _ = M.made_masks(M.ordering(4), [12], context_features=2, rule="even")
        sees_no_feature = ~masks[0][:, :4].any(dim=1)
        assert sees_no_feature.any()
        assert masks[0][sees_no_feature, 4:].all()
        # the output of the first feature reads exactly those units, so it sees the context
        assert torch.equal(masks[1][0], sees_no_feature)

    def test_random_rule_draws_degree_zero_with_context(self):
        masks, _ = M.made_masks(M.ordering(3), [60], context_features=1, generator=seeded(0))
        assert (~masks[0][:, :3].any(dim=1)).any()

    def test_without_context_no_unit_is_degree_zero(self):
        masks, _ = M.made_masks(M.ordering(3), [60], generator=seeded(0))
        assert masks[0].any(dim=1).all()

    @pytest.mark.parametrize("name", ["num_params", "columns_per_feature"])
    def test_bad_counts_raise(self, name):
        with pytest.raises(ValueError, match=name):
            M.made_masks(M.ordering(3), [4], **{name: 0})


class TestConnectivity:
    @pytest.mark.parametrize("seed", range(40))
    def test_agrees_with_integer_paths(self, seed):
        config = random_config(seed)
        _, masks, _ = build(config, seed)
        D, P, C = config["features"], config["num_params"], config["columns_per_feature"]
        expected = feature_paths(masks, D, P, C) > 0
        assert torch.equal(M.connectivity(masks, D, C), expected)

    @pytest.mark.parametrize("seed", range(20))
    def test_direct_mask_and_context_agree_with_integer_paths(self, seed):
        config = random_config(seed)
        _, masks, direct = build(config, seed)
        D, P, C = config["features"], config["num_params"], config["columns_per_feature"]
        assert torch.equal(M.connectivity([direct], D, C), feature_paths([direct], D, P, C) > 0)
        paths = masks[0].long()
        for mask in masks[1:]:
            paths = mask.long() @ paths
        from_context = paths[:, D * C:].reshape(D, P, -1).sum(dim=(1, 2)) > 0
        assert torch.equal(M.context_connectivity(masks, D, C), from_context)

    def test_without_the_direct_mask_the_layers_are_the_same(self):
        order = M.ordering(5, "random", generator=seeded(3))
        with_direct = M.made_masks(order, [9, 9], num_params=4, columns_per_feature=3, generator=seeded(0))
        without = M.made_masks(order, [9, 9], num_params=4, columns_per_feature=3, generator=seeded(0), direct=False)
        assert without[1] is None and all(torch.equal(a, b) for a, b in zip(with_direct[0], without[0], strict=True))

    @pytest.mark.parametrize("columns_per_feature", [1, 3])
    @pytest.mark.parametrize("context_features", [0, 2])
    @pytest.mark.parametrize("hidden", [[8], [6, 9], [7, 7, 7]])
    @pytest.mark.parametrize("order", ["natural", "reverse", [3, 1, 4, 0, 5, 2]])
    def test_wide_even_layers_lose_nothing(self, order, hidden, context_features, columns_per_feature):
        order = M.ordering(6, order)
        masks, _ = M.made_masks(order, hidden, num_params=2, rule="even",
                                columns_per_feature=columns_per_feature,
                                context_features=context_features)
        allowed = allowed_by_position(order.tolist())
        assert torch.equal(M.connectivity(masks, 6, columns_per_feature), allowed)

    def test_width_one_even_layer_sees_only_the_first_feature(self):
        masks, _ = M.made_masks(M.ordering(5), [1], rule="even")
        expected = torch.zeros(5, 5, dtype=torch.bool)
        expected[1:, 0] = True
        assert torch.equal(M.connectivity(masks, 5), expected)

    @pytest.mark.parametrize("seed", range(5))
    def test_width_one_random_layer_loses_dependencies(self, seed):
        order = M.ordering(5, "random", generator=seeded(seed))
        masks, _ = M.made_masks(order, [1], generator=seeded(seed))
        has, may = M.connectivity(masks, 5), M.allowed_connectivity(order)
        assert not (has & ~may).any()
        assert int(has.sum()) < int(may.sum())

    def test_context_columns_are_ignored(self):
        masks = [torch.tensor([[0, 0, 1], [1, 0, 1]]).bool(), torch.tensor([[0, 0], [1, 0]]).bool()]
        assert M.connectivity(masks, 2).tolist() == [[False, False], [False, False]]
        masks[1][1, 1] = True
        assert M.connectivity(masks, 2).tolist() == [[False, False], [True, False]]


class TestAllowedConnectivity:
    @pytest.mark.parametrize("features", [1, 2, 5, 8])
    @pytest.mark.parametrize("seed", range(3))
    def test_strictly_lower_triangular_up_to_permutation(self, features, seed):
        order = M.ordering(features, "random", generator=seeded(seed))
        allowed = M.allowed_connectivity(order)
        assert allowed.dtype == torch.bool
        assert int(allowed.sum()) == features * (features - 1) // 2
        in_order = allowed[order][:, order]
        assert torch.equal(in_order, torch.ones(features, features).tril(-1).bool())
        assert torch.equal(allowed, allowed_by_position(order.tolist()))
