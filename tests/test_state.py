"""Whole-module torch.save / load and copy.deepcopy of every public model in every state, and the one
mechanism that keeps derived values (masked weights, float masks, engine plans, LU factors)."""

import copy
import io

import pytest
import torch

import flowkit
import flowkit.engine as engine
from flowkit.derived import Derived
from flowkit.transforms import LULinear

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")

MODELS = {
    "bernoulli": lambda: flowkit.BernoulliMADE(5, [16], num_masks=2, order_agnostic=True, direct=True, seed=0),
    "categorical": lambda: flowkit.CategoricalMADE(4, 3, [16], num_masks=2, seed=1),
    "mog": lambda: flowkit.MADEMoG(3, 2, [16], context_features=2, seed=2),
    "residual": lambda: flowkit.BernoulliMADE(5, [16], residual_blocks=1, dropout=0.1, seed=3),
    "maf": lambda: flowkit.MAF(3, 2, [16], batch_norm=True, linear="lu", seed=4),
    "spline-iaf": lambda: flowkit.IAF(3, 2, [16], transformer="spline", context_features=2, seed=5),
    "diagonal": lambda: flowkit.DiagonalNormal(3, context_features=2),
}


def context_of(model):
    width = getattr(model, "context_features", 0)
    return None if not width else torch.randn(4, width, generator=torch.Generator().manual_seed(9))


def use(model, state: str) -> None:
    """Brings ``model`` into ``state``: every cache it has is filled."""
    model.train(state.startswith("train"))
    context = context_of(model)
    features = model.features
    x = model.sample(4 if context is None else (), context, generator=torch.Generator().manual_seed(0))
    if state.endswith("scored"):
        with torch.no_grad():
            model.log_prob(x.reshape(-1, features) if context is None else x, context)
        model.log_prob(x if context is None else x, context)


def scores(model) -> torch.Tensor:
    model.eval()
    context = context_of(model)
    with torch.no_grad():
        x = model.sample(() if context is not None else 4, context, generator=torch.Generator().manual_seed(1))
        return model.log_prob(x, context)


@pytest.mark.parametrize("state", ["train", "train-scored", "eval", "eval-scored"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_module_save_load_and_deepcopy_in_every_state(name, state):
    model = MODELS[name]()
    if name == "maf" and state.startswith("train"):
        model.train()  # batch norm in training needs batches of 2 or more: sample in eval, then train
    use(model, state)
    expected = scores(copy.deepcopy(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    copied = copy.deepcopy(model)
    for other in (loaded, copied):
        assert torch.allclose(scores(other), expected, atol=1e-6)
    assert torch.allclose(scores(model), expected, atol=1e-6)


def count_plan_builds(monkeypatch):
    builds = []
    real = engine._build_plan
    monkeypatch.setattr(engine, "_build_plan", lambda made, index: builds.append(index) or real(made, index))
    return builds


def test_engine_plans_are_kept_per_mask_set(monkeypatch):
    builds = count_plan_builds(monkeypatch)
    model = flowkit.BernoulliMADE(10, [32], num_masks=4, order_agnostic=True, seed=0).eval()
    for _ in range(3):
        model.sample(64, ensemble=4)
    assert sorted(builds) == [0, 1, 2, 3]  # one plan per mask set (a single slot rebuilt 12 times)
    for _ in range(3):
        model.sample(64)
    assert len(builds) == 4
    with torch.no_grad():
        model.made.layers[0].bias.add_(0.1)  # any parameter of the MADE, edited in place
    model.sample(8)
    assert len(builds) == 5
    model.train().eval()  # a change of mode drops what is kept
    model.sample(8)
    assert len(builds) == 6
    model.made.draw_masks(3)  # new masks for the current set
    model.sample(8)
    assert len(builds) == 7


def test_a_plan_built_from_stale_biases_is_never_used():
    model = flowkit.BernoulliMADE(6, [16], seed=0).eval()
    reference = flowkit.BernoulliMADE(6, [16], seed=0).eval()
    model.sample(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in ((model.made.layers[-1].bias, reference.made.layers[-1].bias),):
            a.add_(3.0)
            b.add_(3.0)
    drawn = model.sample(50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, reference.sample(50, generator=torch.Generator().manual_seed(1)))


def test_derived_values_follow_their_sources():
    weight = torch.ones(3)
    kept, built = Derived(), []

    def build():
        built.append(1)
        return weight.sum()

    assert kept.get("s", (weight,), build) == 3 and kept.get("s", (weight,), build) == 3 and len(built) == 1
    assert kept.get("s", (weight,), build, context="float64") == 3 and len(built) == 2  # another context
    other = torch.ones(3)
    kept.get("s", (other,), build)  # another tensor, even with the same values and version
    assert len(built) == 3
    kept.drop("s")
    kept.get("s", (other,), build)
    assert len(built) == 4
    assert len(copy.deepcopy(kept)) == 0 and len(kept) == 1


def test_lu_factors_are_kept_in_eval_and_follow_edits():
    layer = LULinear(3).eval()
    with torch.no_grad():
        layer.lower_upper.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3)
    with torch.no_grad():
        first = layer(x)[0]
        assert torch.equal(layer(x)[0], first)
        layer.bias.add_(1.0)
        assert torch.allclose(layer(x)[0], first + 1.0)
