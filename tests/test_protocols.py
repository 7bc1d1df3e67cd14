"""The four protocols between the layers, written as code: the elementwise transformer, the head, the
base of a flow, and the density that fit, evaluate and the command line accept."""

import pytest
import torch

import flowkit
from flowkit.density import Density
from flowkit.flows import FlowBase, StandardNormal
from flowkit.heads import Bernoulli, Categorical, GaussianMixture, Head
from flowkit.train import evaluate, fit
from flowkit.transforms import Affine, MaskedAutoregressive, RationalQuadraticSpline, Transformer


class Shift(Transformer):
    """y = x + t: a transformer of one parameter, written against the protocol."""

    num_params = 1

    def forward(self, x, params):
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y, params):
        return y - params[..., 0], torch.zeros_like(y)

    def identity_params(self):
        return torch.zeros(1, dtype=torch.float64)


def test_affine_and_the_spline_share_the_transformer_base():
    assert isinstance(Affine(), Transformer) and isinstance(RationalQuadraticSpline(), Transformer)
    assert Transformer().identity_params() is None


def test_a_transformer_written_against_the_protocol_drives_a_masked_autoregressive_layer():
    layer = MaskedAutoregressive(3, [16], transformer=Shift(), seed=0)
    x = torch.randn(5, 3, dtype=torch.float32)
    y, logabsdet = layer(x)
    assert torch.allclose(y, x, atol=1e-2)  # started at the identity: the bias holds identity_params
    assert torch.equal(logabsdet, torch.zeros(5))
    assert torch.allclose(layer.inverse(y)[0], x, atol=1e-5)
    flow = flowkit.Flow(layer, StandardNormal(3))
    history = fit(flow, torch.randn(200, 3) + 2.0, epochs=3, batch_size=50)
    assert history.train_nll[-1] < history.train_nll[0]


def test_heads_say_the_dtype_of_their_values():
    assert Bernoulli().value_dtype is None and GaussianMixture(2).value_dtype is None
    assert Categorical(3).value_dtype is torch.long
    assert all(isinstance(head, Head) for head in (Bernoulli(), Categorical(3), GaussianMixture(2)))
    assert flowkit.CategoricalMADE(3, 4, [8], seed=0).sample(5).dtype == torch.long
    assert flowkit.BernoulliMADE(3, [8], seed=0).double().sample(5).dtype == torch.float64


def test_every_base_and_density_satisfies_its_protocol():
    bases = [StandardNormal(2), flowkit.DiagonalNormal(2), flowkit.MADEMoG(2, 2, [8], seed=0)]
    assert all(isinstance(base, FlowBase) for base in bases)
    densities = [flowkit.BernoulliMADE(2, [8]), flowkit.MAF(2, 1, [8]), flowkit.IAF(2, 1, [8]), *bases]
    assert all(isinstance(model, Density) for model in densities)
    assert not isinstance(torch.nn.Linear(2, 2), Density) and not isinstance(torch.nn.Linear(2, 2), FlowBase)


def test_fit_and_evaluate_name_a_model_that_is_not_a_density():
    for call in (lambda: fit(torch.nn.Linear(2, 2), torch.randn(10, 2)),
                 lambda: evaluate(torch.nn.Linear(2, 2), torch.randn(10, 2))):
        with pytest.raises(flowkit.FlowkitTypeError, match="expected model to be a density"):
            call()
