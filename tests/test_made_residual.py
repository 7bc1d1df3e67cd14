"""Tests of the residual MADE (ResMADE), dropout and the initialisation of flowkit.MADE: the
autoregressive property by autograd, exact sampling and inversion through the engine, exact
normalisation, dropout only where it belongs, state, errors and the initial scale."""

import itertools
import warnings

import pytest
import torch
from torch import nn

import flowkit
from flowkit import MADE, ConnectivityWarning, check_autoregressive
from flowkit import masks as M
from flowkit.checks import AutoregressiveError
from flowkit.engine import autoregressive
from flowkit.made import MaskedLinear
from flowkit.transforms import MaskedAutoregressive

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")


def loud(module: nn.Module, seed: int = 0, gain: float = 1.5) -> nn.Module:
    """Redraws every masked layer at full scale with random biases, so that the residual blocks
    (whose second layers start near zero) weigh as much as the skip: a wrong block shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, MaskedLinear):
                m.reset_parameters_masked(generator=generator, gain=gain)
                if m.bias is not None:
                    m.bias.uniform_(-1.0, 1.0, generator=generator)
    return module


def chain_connectivity(made: MADE, r: int) -> torch.Tensor:
    """The dependencies the masks of mask set ``r`` allow, skips included: ``(D, D)``."""
    eye = torch.eye(made.hidden_features[0], dtype=torch.bool)
    masks = [made.layers[0].masks[r]]
    for first, second in made.blocks:  # a block reaches what its layers reach, or the skip does
        masks.append(((second.masks[r].long() @ first.masks[r].long()) > 0) | eye)
    masks.append(made.layers[-1].masks[r])
    found = M.connectivity(masks, made.features, made.columns_per_feature)
    if made.direct is not None:
        found |= M.connectivity([made.direct.masks[r]], made.features, made.columns_per_feature)
    return found


def reference(made, x, step, encode=lambda v: v, context=None, mask=0):
    """One full network pass per feature, in the ordering of ``mask``."""
    x = x.clone()
    for d in made.orders[mask].tolist():
        params = made(encode(x), context, mask=mask)[..., d, :]
        x[..., d] = step(d, params, x[..., d])
    return x


CONFIGS = {
    "plain": dict(),
    "masks": dict(num_masks=3, hidden_degrees="random"),
    "agnostic": dict(num_masks=3, order_agnostic=True, order="random"),
    "context": dict(context_features=2, num_masks=2, order_agnostic=True),
    "direct": dict(direct=True, order="reverse"),
    "columns": dict(columns_per_feature=3, num_params=2, num_masks=2, order_agnostic=True),
}


class TestAutoregressive:
    @pytest.mark.parametrize("blocks", [1, 3])
    @pytest.mark.parametrize("name", CONFIGS)
    def test_check_passes_and_finds_every_allowed_dependency(self, name, blocks):
        options = {"hidden_degrees": "even", **CONFIGS[name]}
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConnectivityWarning)
            made = MADE(6, 24, residual_blocks=blocks, activation=nn.Tanh, seed=1, **options)
        made = loud(made.double())
        for r in range(made.num_masks):
            made.use_mask(r)
            found = check_autoregressive(made)
            assert torch.equal(found, M.allowed_connectivity(made.orders[r]))
            assert torch.equal(found, chain_connectivity(made, r))

    @pytest.mark.parametrize("seed", range(6))
    def test_narrow_random_degrees_find_what_the_masks_allow(self, seed):
        made = loud(MADE(7, 5, residual_blocks=2, num_masks=2, order_agnostic=True, context_features=seed % 2,
                         direct=seed == 3, activation=nn.Tanh, seed=seed).double(), seed)
        for r in range(2):
            made.use_mask(r)
            assert torch.equal(check_autoregressive(made), chain_connectivity(made, r))

    def test_blocks_matter(self):
        made = loud(MADE(5, 16, residual_blocks=2, seed=0).double())
        x = torch.randn(8, 5, dtype=torch.float64)
        before = made(x)
        with torch.no_grad():
            made.blocks[1][1].weight.zero_()
        assert (made(x) - before).abs().max() > 0.1

    def test_a_leaking_block_is_caught(self):
        made = MADE(5, 16, residual_blocks=2, hidden_degrees="even", seed=0)
        with torch.no_grad():
            made.blocks[0][0].masks.fill_(True)
        with pytest.raises(AutoregressiveError, match="mask set 0"):
            check_autoregressive(loud(made))
        with pytest.raises(RuntimeError, match="not autoregressive"), torch.no_grad():
            autoregressive(made, torch.zeros(2, 5), lambda d, p, c: c)

    def test_audit_counts_what_the_plain_network_of_the_same_degrees_loses(self):
        with pytest.warns(ConnectivityWarning) as plain:
            reference_made = MADE(8, [3], seed=4)
        with pytest.warns(ConnectivityWarning) as residual:
            made = MADE(8, [3], residual_blocks=2, seed=4)
        assert torch.equal(made.layers[0].masks, reference_made.layers[0].masks)
        assert str(residual[0].message) == str(plain[0].message)


SAMPLING = {
    "bernoulli": lambda: flowkit.BernoulliMADE(6, 20, residual_blocks=2, num_masks=2, order_agnostic=True, seed=0),
    "bernoulli-elu-context": lambda: flowkit.BernoulliMADE(
        5, [12], residual_blocks=2, context_features=3, direct=True, activation=nn.ELU, seed=1),
    "categorical": lambda: flowkit.CategoricalMADE(5, 3, 18, residual_blocks=2, num_masks=2, order_agnostic=True,
                                                   seed=2),
    "categorical-narrow": lambda: flowkit.CategoricalMADE(6, 4, 4, residual_blocks=1, context_features=2, seed=3),
}


@pytest.mark.parametrize("name", SAMPLING)
def test_engine_samples_draw_for_draw_like_the_plain_loop(name):
    model = loud(SAMPLING[name]().double())
    C = model.made.context_features
    context = torch.randn(7, C, generator=torch.Generator().manual_seed(5), dtype=torch.float64) if C else None
    for r in range(model.made.num_masks):
        noise = model.head.noise((7, model.features), generator=torch.Generator().manual_seed(r), dtype=torch.float64)
        start = model._zeros(torch.Size([7]))
        step = lambda d, params, current: model.head.draw(params, noise[:, d])  # noqa: E731
        with torch.no_grad():
            fast = autoregressive(model.made, start, step, encode=model.head.encode, context=context, mask=r)
            slow = reference(model.made, start, step, model.head.encode, context, r)
        assert torch.equal(fast, slow)
        plain = autoregressive(model.made, start, step, encode=model.head.encode, context=context, mask=r)
        assert torch.equal(plain, slow)
        assert len({tuple(row) for row in fast.tolist()}) > 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", [dict(), dict(context_features=2, num_masks=2, order_agnostic=True)],
                         ids=["plain", "context"])
def test_maf_inversion(options, dtype):
    layer = MaskedAutoregressive(5, 24, residual_blocks=2, seed=0, **options)
    layer = loud(layer, gain=0.5).to(dtype)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=generator, dtype=dtype)
    context = torch.randn(9, 2, generator=generator, dtype=dtype) if options else None
    for r in range(layer.made.num_masks):
        layer.made.use_mask(r)
        with torch.no_grad():
            y, forward_logdet = layer(x, context)
            back, inverse_logdet = layer.inverse(y, context)
        assert (y - x).abs().max() > 0.1
        tolerance = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(back, x, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(inverse_logdet, -forward_logdet, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("options", [dict(), dict(num_masks=3, order_agnostic=True, direct=True)],
                         ids=["one", "ensemble"])
def test_residual_bernoulli_made_is_normalised(options):
    model = loud(flowkit.BernoulliMADE(6, 16, residual_blocks=3, seed=0, **options).double(), gain=2.0)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    log_p = model.log_prob(every)
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-10
    assert log_p.max() - log_p.min() > 1.0  # far from uniform: the check has teeth
    R = model.made.num_masks
    if R > 1:
        assert abs(model.log_prob(every, ensemble=R).exp().sum().item() - 1.0) < 1e-10


class TestDropout:
    def made(self, blocks: int, p: float = 0.3, **options) -> MADE:
        return loud(MADE(6, 32, num_params=2, residual_blocks=blocks, dropout=p, activation=nn.Tanh, seed=0,
                         **options).double())

    @pytest.mark.parametrize("blocks", [0, 2])
    def test_train_mode_drops_eval_mode_does_not(self, blocks):
        made = self.made(blocks)
        x = torch.randn(16, 6, dtype=torch.float64)
        made.train()
        first, second = made(x), made(x)
        assert not torch.allclose(first, second)
        calm = made(x, deterministic=True)
        assert torch.equal(calm, made(x, deterministic=True))
        made.eval()
        assert torch.equal(made(x), made(x))
        torch.testing.assert_close(made(x), calm, rtol=0, atol=1e-12)

    @pytest.mark.parametrize("blocks", [0, 2])
    def test_drops_a_fraction_p_of_hidden_activations_and_rescales_the_rest(self, blocks):
        made = self.made(blocks, p=0.3)
        h = made.inputs(torch.randn(400, 6, dtype=torch.float64), None)
        calm = made.eval().hidden(h, 0)
        torch.manual_seed(0)
        noisy = made.train().hidden(h, 0)
        kept = noisy != 0
        assert (calm != 0).all()
        assert abs((~kept).double().mean().item() - 0.3) < 0.03
        if blocks == 0:  # the last layer's own drop is the only one: kept units are exactly rescaled
            torch.testing.assert_close(noisy[kept], calm[kept] / 0.7)

    @pytest.mark.parametrize("blocks", [0, 2])
    def test_never_drops_the_input_or_the_output(self, blocks):
        made = self.made(blocks, p=0.5, direct=True)
        with torch.no_grad():
            made.layers[-1].weight.zero_()  # only the bias and the direct path reach the outputs
        x = torch.randn(32, 6, dtype=torch.float64)
        made.train()
        assert torch.equal(made(x), made.eval()(x))

    @pytest.mark.parametrize("blocks", [0, 2])
    def test_engine_evaluates_without_dropout(self, blocks):
        model = loud(flowkit.BernoulliMADE(6, 24, residual_blocks=blocks, dropout=0.5, seed=0).double())
        noise = model.head.noise((10, 6), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        step = lambda d, params, current: model.head.draw(params, noise[:, d])  # noqa: E731
        start = model._zeros(torch.Size([10]))
        with torch.no_grad():
            expected = reference(model.eval().made, start, step)
        model.train()
        with torch.no_grad():
            fast = autoregressive(model.made, start, step)
        plain = autoregressive(model.made, start, step)  # parameters require grad: the plain loop
        assert torch.equal(fast, expected)
        assert torch.equal(plain, expected)
        assert model.training

    def test_check_autoregressive_ignores_dropout(self):
        made = self.made(2, p=0.9, hidden_degrees="even").train()
        assert torch.equal(check_autoregressive(made), M.allowed_connectivity(made.order))


def test_state_dict_round_trip():
    options = dict(num_params=2, context_features=2, num_masks=3, order_agnostic=True, direct=True,
                   residual_blocks=2, dropout=0.2)
    saved = loud(MADE(5, 16, seed=0, **options))
    saved.next_mask()
    loaded = MADE(5, 16, seed=1, **options).eval()
    x, context = torch.randn(4, 5), torch.randn(4, 2)
    assert not torch.equal(loaded(x, context), saved.eval()(x, context))
    loaded.load_state_dict(saved.state_dict())
    assert loaded.current_mask == 1
    assert any(key.startswith("blocks.1.1.") for key in saved.state_dict())
    for r in range(3):
        assert torch.equal(loaded(x, context, mask=r), saved(x, context, mask=r))


def test_plain_made_keeps_its_state_dict_keys():
    made = MADE(4, [8, 8], seed=0)
    assert len(made.blocks) == 0 and len(made.layers) == 3
    assert set(made.state_dict()) == {"orders", "mask_index", "mask_seed"} | {
        f"layers.{i}.{name}" for i in range(3) for name in ("weight", "bias", "masks")}


def test_one_element_list_is_one_width():
    made = MADE(5, [16], residual_blocks=2, seed=0)
    assert made.hidden_features == (16,)
    assert len(made.layers) == 2 and len(made.blocks) == 2
    assert tuple(made.blocks[0][0].weight.shape) == (16, 16)
    assert tuple(made.layers[-1].weight.shape) == (5, 16)
    assert "residual_blocks=2" in repr(made)


@pytest.mark.parametrize(
    "hidden, kwargs, match",
    [([16, 16], dict(residual_blocks=2), r"hidden_features.*one width.*residual_blocks=2.*\[16, 16\]"),
     ([], dict(residual_blocks=1), "hidden_features.*one width"),
     (16, dict(residual_blocks=-1), r"residual_blocks to be an int >= 0, got -1"),
     (16, dict(residual_blocks=1.5), "residual_blocks"),
     (16, dict(residual_blocks=True), "residual_blocks"),
     (16, dict(dropout=1.0), r"dropout to be a probability in \[0, 1\), got 1.0"),
     (16, dict(dropout=-0.1), "dropout.*-0.1"),
     (16, dict(dropout="0.1"), "dropout"),
     (16, dict(dropout=True), "dropout")],
)
def test_bad_arguments(hidden, kwargs, match):
    wrong_type = any(isinstance(value, (bool, str)) or (isinstance(value, float) and key == "residual_blocks")
                     for key, value in kwargs.items())  # an argument of the wrong type: TypeError
    with pytest.raises(TypeError if wrong_type else ValueError, match=match):
        MADE(5, hidden, **kwargs)


class TestInitialisation:
    def test_residual_blocks_start_near_the_identity(self):
        made = MADE(63, 256, num_params=2, residual_blocks=4, seed=0)
        x = torch.randn(512, 63, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            first = made.layers[0](x)
            stream = first
            for inner, outer in made.blocks:
                stream = stream + outer(made.activation(inner(made.activation(stream))))
            out = made(x)
        assert (stream - first).norm() < 1e-2 * first.norm()
        with torch.no_grad():  # the same network with its blocks skipped
            skipped = made.layers[-1](made.activation(first)).unflatten(-1, (63, 2))
        assert torch.allclose(out, skipped, atol=1e-2 * out.abs().max().item())
        for inner, outer in made.blocks:
            assert outer.weight.abs().max() < 1e-2 * inner.weight.abs().max()
            assert outer.bias.abs().max() < 1e-2 * inner.bias.abs().max()
