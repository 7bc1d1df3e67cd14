"""Tests of the dimension-by-dimension loop :func:`flowkit.engine.autoregressive`."""

import pytest
import torch

from flowkit import MADE
from flowkit.engine import autoregressive
from flowkit.heads import Categorical

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


def made(features=5, **options):
    torch.manual_seed(0)
    network = MADE(features, [16, 16], seed=3, **options)
    with torch.no_grad():
        for p in network.parameters():
            p.mul_(3)
    return network


class Recorder:
    """A step that records what it is given and writes a value depending on the parameters."""

    def __init__(self):
        self.visits = []
        self.params = {}
        self.current = {}
        self.written = {}

    def __call__(self, d, params, current):
        self.visits.append(d)
        self.params[d] = params.clone()
        self.current[d] = current.clone()
        self.written[d] = torch.tanh(params[..., 0]) + d
        return self.written[d]


@pytest.mark.parametrize("mask", [0, 1, 2])
def test_visits_in_the_order_of_the_mask_set(mask):
    network = made(num_params=2, num_masks=3, order_agnostic=True)
    assert len({tuple(o) for o in network.orders.tolist()}) == 3
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    step = Recorder()
    out = autoregressive(network, x, step, mask=mask)
    assert step.visits == network.orders[mask].tolist()
    for d in range(5):
        assert torch.equal(out[:, d], step.written[d])


def test_default_mask_is_the_current_one():
    network = made(num_masks=3, order_agnostic=True)
    network.use_mask(2)
    step = Recorder()
    autoregressive(network, torch.zeros(2, 5), step)
    assert step.visits == network.orders[2].tolist()
    assert step.visits != network.orders[0].tolist()


@pytest.mark.parametrize("mask", [0, 1, 2])
def test_params_are_those_of_the_final_values(mask):
    network = made(num_params=2, num_masks=3, order_agnostic=True)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    step = Recorder()
    out = autoregressive(network, x, step, mask=mask)
    final = network(out, mask=mask)
    for d in range(5):
        torch.testing.assert_close(step.params[d], final[:, d, :])
    first = network(x, mask=mask)
    later = network.orders[mask][-1].item()
    assert (step.params[later] - first[:, later, :]).abs().max() > 1e-3


def test_current_values_are_the_inputs():
    network = made()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    step = Recorder()
    autoregressive(network, x, step)
    for d in range(5):
        assert torch.equal(step.current[d], x[:, d])


def test_input_not_modified_and_dtype_kept():
    network = made()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    copy = x.clone()
    out = autoregressive(network, x, Recorder())
    assert torch.equal(x, copy)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert not torch.equal(out, x)


@pytest.mark.parametrize("features", [[3, 0], [4], []])
def test_features_restricts_visits(features):
    network = made(num_masks=2, order_agnostic=True)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    step = Recorder()
    out = autoregressive(network, x, step, mask=1, features=features)
    assert step.visits == [d for d in network.orders[1].tolist() if d in features]
    for d in range(5):
        if d in features:
            assert torch.equal(out[:, d], step.written[d])
        else:
            assert torch.equal(out[:, d], x[:, d])
    final = network(out, mask=1)
    for d in features:
        torch.testing.assert_close(step.params[d], final[:, d, :])


@pytest.mark.parametrize("mask", [0, 1])
def test_with_context(mask):
    network = made(num_params=2, context_features=3, num_masks=2, order_agnostic=True)
    context = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(2, 4, 5)
    step = Recorder()
    out = autoregressive(network, x, step, context=context, mask=mask)
    assert out.shape == (2, 4, 5)
    assert step.visits == network.orders[mask].tolist()
    final = network(out, context, mask=mask)
    for d in range(5):
        torch.testing.assert_close(step.params[d], final[..., d, :])
    other = autoregressive(network, x, Recorder(), context=context + 1, mask=mask)
    assert (other - out).abs().max() > 1e-3


@pytest.mark.parametrize("mask", [0, 1])
def test_categorical_encoding(mask):
    K = 3
    network = made(4, num_params=K, columns_per_feature=K, num_masks=2, order_agnostic=True)
    encode = Categorical(K).encode
    x = torch.zeros(8, 4, dtype=torch.long)
    visits, seen = [], {}

    def step(d, params, current):
        visits.append(d)
        seen[d] = params.clone()
        return params.argmax(-1)

    out = autoregressive(network, x, step, encode=encode, mask=mask)
    assert out.dtype == torch.long
    assert visits == network.orders[mask].tolist()
    final = network(encode(out), mask=mask)
    for d in range(4):
        torch.testing.assert_close(seen[d], final[:, d, :])
        assert torch.equal(out[:, d], final[:, d, :].argmax(-1))


def test_features_as_a_tensor():
    network = made()
    step = Recorder()
    autoregressive(network, torch.zeros(2, 5), step, features=torch.tensor([3, 0]))
    assert sorted(step.visits) == [0, 3]
    assert step.visits == [d for d in network.order.tolist() if d in (0, 3)]


def test_features_out_of_range_are_refused():
    with pytest.raises(ValueError, match=r"expected features in 0\.\.4, got \[5\]"):
        autoregressive(made(), torch.zeros(2, 5), Recorder(), features=[5])
