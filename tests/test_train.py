"""Training: early stopping, mask cycling, evaluation, and the digits baseline comparison."""

import math

import pytest
import torch

import flowkit
from flowkit.baselines import IndependentBernoulli
from flowkit.data import digits
from flowkit.train import evaluate, fit


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
def test_made_beats_independent_bernoullis_on_held_out_digits():
    train, valid, test = digits()
    torch.manual_seed(0)
    model = flowkit.BernoulliMADE(64, [200], seed=0)
    fit(model, train, valid, epochs=40, patience=10)
    made_nll, made_se = evaluate(model, test)
    independent_nll, _ = evaluate(IndependentBernoulli(train), test)
    assert made_nll < independent_nll - 2.0, (made_nll, independent_nll)
    assert 0 < made_se < 1


def test_independent_bernoulli_is_the_smoothed_frequency():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    model = IndependentBernoulli(train, smoothing=1.0)
    p = torch.tensor([3 / 5, 1 / 5])
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = torch.stack([p.log().sum(), (1 - p).log().sum()])
    assert torch.allclose(model.log_prob(x), expected.float())
    with pytest.raises(ValueError, match="binary"):
        model.log_prob(torch.tensor([[0.5, 1.0]]))


def test_fit_restores_the_best_validation_epoch_and_stops_early():
    generator = torch.Generator().manual_seed(0)
    train = (torch.rand(64, 8, generator=generator) < 0.3).float()
    valid = (torch.rand(64, 8, generator=generator) < 0.7).float()  # another distribution: overfits
    model = flowkit.BernoulliMADE(8, [64], seed=0)
    history = fit(model, train, valid, epochs=200, patience=5, lr=1e-2)
    assert len(history.valid_nll) == history.best_epoch + 6 < 200
    assert history.best_valid_nll == min(history.valid_nll)
    assert math.isclose(evaluate(model, valid)[0], history.best_valid_nll, rel_tol=1e-5)
    assert not model.training


def test_fit_cycles_mask_sets_once_per_minibatch():
    model = flowkit.BernoulliMADE(6, [32], num_masks=5, order_agnostic=True, seed=0)
    data = torch.randint(2, (70, 6)).float()
    fit(model, data, epochs=1, batch_size=10)  # 7 minibatches
    assert model.made._index == 7 % 5


def test_evaluate_matches_log_prob_and_restores_training_mode():
    model = flowkit.BernoulliMADE(5, [16], num_masks=3, seed=0)
    data = torch.randint(2, (40, 5)).float()
    model.train()
    nll, se = evaluate(model, data, ensemble=3, batch_size=7)
    with torch.no_grad():
        values = -model.log_prob(data, ensemble=3)
    assert math.isclose(nll, float(values.mean()), rel_tol=1e-6)
    assert math.isclose(se, float(values.std() / math.sqrt(40)), rel_tol=1e-5)
    assert model.training
