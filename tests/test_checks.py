"""Tests of flowkit.checks.check_autoregressive: the dependencies it reports, the models it
accepts, and the corrupted masks it must catch."""

import re

import pytest
import torch
from torch import nn

import flowkit
from flowkit import MADE, check_autoregressive
from flowkit import masks as M
from flowkit.checks import AutoregressiveError


def allowed_by_position(order: torch.Tensor) -> torch.Tensor:
    """[i, j] is true when feature j comes before feature i in ``order``."""
    position = {feature: k for k, feature in enumerate(order.tolist())}
    D = len(position)
    return torch.tensor([[position[j] < position[i] for j in range(D)] for i in range(D)]).view(D, D)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def wide(features: int = 6, **options) -> MADE:
    return MADE(features, [24, 24], hidden_degrees="even", activation=nn.Tanh, seed=0, **options)


class TestDependencies:
    @pytest.mark.parametrize(
        "options",
        [dict(), dict(order="reverse"), dict(order=[4, 1, 5, 0, 3, 2], num_params=3),
         dict(order="random", context_features=2), dict(columns_per_feature=3, direct=True)],
        ids=["natural", "reverse", "explicit", "context", "columns"],
    )
    def test_wide_even_made_has_every_allowed_dependency(self, options):
        made = wide(**options)
        found = check_autoregressive(made)
        assert found.dtype == torch.bool and found.shape == (6, 6)
        assert torch.equal(found, M.allowed_connectivity(made.order))
        assert torch.equal(found, allowed_by_position(made.order))

    def test_reports_the_current_mask_set(self):
        made = wide(num_masks=3, order_agnostic=True)
        made.use_mask(2)
        found = check_autoregressive(made)
        assert made.current_mask == 2
        assert not torch.equal(made.orders[2], made.orders[0])
        assert torch.equal(found, allowed_by_position(made.orders[2]))

    @pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
    @pytest.mark.parametrize("hidden", [[1], [2, 3], [3]])
    def test_narrow_made_reports_what_the_masks_allow(self, hidden):
        made = MADE(6, hidden, activation=nn.Tanh, order="random", seed=2)
        found = check_autoregressive(made)
        paths = made.layers[0].masks[0].long()
        for layer in made.layers[1:]:
            paths = layer.masks[0].long() @ paths
        assert torch.equal(found, paths > 0)
        assert int(found.sum()) < 15

    def test_double_and_frozen_eval_model(self):
        made = wide(context_features=1).double().eval().requires_grad_(False)
        with torch.no_grad():
            made(torch.randn(2, 6, dtype=torch.float64), torch.randn(2, 1, dtype=torch.float64))
        assert torch.equal(check_autoregressive(made), allowed_by_position(made.order))


class TestModels:
    def test_accepts_a_density(self):
        model = flowkit.BernoulliMADE(5, [20], hidden_degrees="even", activation=nn.Tanh,
                                      order="reverse", seed=0)
        assert torch.equal(check_autoregressive(model), allowed_by_position(model.made.order))

    def test_accepts_a_categorical_density(self):
        model = flowkit.CategoricalMADE(4, 3, [16], hidden_degrees="even", activation=nn.Tanh, seed=0)
        assert torch.equal(check_autoregressive(model), allowed_by_position(model.made.order))

    @pytest.mark.parametrize("model", [nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3))])
    def test_rejects_other_modules(self, model):
        with pytest.raises(TypeError, match="MADE.*" + type(model).__name__):
            check_autoregressive(model)


class TestCorruption:
    def test_error_is_an_assertion_error(self):
        assert issubclass(AutoregressiveError, AssertionError)

    def test_open_output_mask(self):
        made = wide()
        made.layers[-1].masks[0] = True
        with pytest.raises(AutoregressiveError, match=r"mask set 0 \(order \[0, 1, 2, 3, 4, 5\]\)"):
            check_autoregressive(made)

    def test_all_masks_open(self):
        made = wide(context_features=1)
        for layer in made.layers:
            layer.masks.fill_(True)
        with pytest.raises(AutoregressiveError, match="mask set 0"):
            check_autoregressive(made)

    @pytest.mark.parametrize("params, columns", [(1, 1), (2, 3)])
    def test_names_the_offending_pair(self, params, columns):
        made = MADE(3, [16], num_params=params, columns_per_feature=columns, direct=True,
                    hidden_degrees="even", seed=0)
        made.direct.masks[0, params - 1, 2 * columns + columns - 1] = True
        with pytest.raises(AutoregressiveError) as caught:
            check_autoregressive(made)
        message = str(caught.value)
        assert "output 0 <- input 2" in message
        assert message.count("<-") == 1

    def test_corrupt_second_mask_set_is_caught(self):
        made = wide(num_masks=2, order_agnostic=True)
        made.layers[-1].masks[1] = True
        assert made.current_mask == 0
        order = made.orders[1].tolist()
        with pytest.raises(AutoregressiveError, match=re.escape(f"mask set 1 (order {order})")):
            check_autoregressive(made)

    def test_corrupt_first_layer_is_caught(self):
        made = wide(order="reverse")
        made.layers[0].masks[0] = True
        with pytest.raises(AutoregressiveError, match="mask set 0"):
            check_autoregressive(made)
