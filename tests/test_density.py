"""Tests of the autoregressive densities: exact normalisation, ensembles, sampling, completion."""

import copy
import io
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

import flowkit
import flowkit.density as density_module
from flowkit import MADE, AutoregressiveDensity, BernoulliMADE, CategoricalMADE, ConnectivityWarning
from flowkit.heads import Bernoulli, Categorical

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")

N = 20000


def scaled(model, factor=3.0):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def redrawn(model, weights):
    """The same masks (seed 0) with weights drawn afresh from seed ``weights`` (0: as built)."""
    if weights:
        generator = torch.Generator().manual_seed(weights)
        for layer in [*model.made.layers, *([model.made.direct] if model.made.direct is not None else [])]:
            layer.reset_parameters_masked(generator=generator)
    return model


def bernoulli(features, hidden=(32, 32), weights=0, dtype=torch.float64, **options):
    return scaled(redrawn(BernoulliMADE(features, list(hidden), seed=0, **options), weights)).to(dtype)


def categorical(features, categories, hidden=(32, 32), weights=0, **options):
    return scaled(redrawn(CategoricalMADE(features, categories, list(hidden), seed=0, **options), weights))


def grid(features, categories=2):
    return torch.tensor(list(itertools.product(range(categories), repeat=features)))


def codes(x, categories=2):
    D = x.shape[-1]
    weights = categories ** torch.arange(D - 1, -1, -1)
    return (x.long() * weights).sum(-1)


def chisquare_pvalue(cells, probs):
    """Goodness of fit of integer ``cells`` to ``probs``; cells expecting fewer than 5 are pooled."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    counts = np.bincount(np.asarray(cells), minlength=len(probs))
    assert len(counts) == len(probs)
    expected = probs * counts.sum()
    big = expected >= 5
    observed, expect = list(counts[big]), list(expected[big])
    if not big.all():
        if expected[~big].sum() == 0:
            if counts[~big].sum() > 0:
                return 0.0
        else:
            observed.append(counts[~big].sum())
            expect.append(expected[~big].sum())
    return stats.chisquare(observed, expect).pvalue


def probabilities(model, x, context=None, **kwargs):
    with torch.no_grad():
        return model.log_prob(x, context, **kwargs).double().exp()


def prefix_run(order, observed):
    run = 0
    for feature in order:
        if not observed[feature]:
            break
        run += 1
    return run


def expected_mask(orders, observed, current):
    runs = [prefix_run(order, observed) for order in orders]
    best = [r for r, run in enumerate(runs) if run == max(runs)]
    return current if current in best else best[0]


class TestNormalisation:
    @pytest.mark.parametrize("features", [1, 3, 7, 10])
    def test_bernoulli_one_mask(self, features):
        model = bernoulli(features)
        total = probabilities(model, grid(features).double()).sum()
        assert abs(total.item() - 1) < 1e-5

    @pytest.mark.parametrize("features", [3, 6])
    def test_bernoulli_every_mask_set(self, features):
        model = bernoulli(features, num_masks=4, order_agnostic=True)
        x = grid(features).double()
        for r in range(4):
            model.made.use_mask(r)
            assert abs(probabilities(model, x).sum().item() - 1) < 1e-5

    @pytest.mark.parametrize("ensemble", [1, 2, 4])
    def test_bernoulli_ensemble(self, ensemble):
        model = bernoulli(6, num_masks=4, order_agnostic=True)
        total = probabilities(model, grid(6).double(), ensemble=ensemble).sum()
        assert abs(total.item() - 1) < 1e-5

    @pytest.mark.parametrize("ensemble", [None, 3])
    def test_bernoulli_with_context(self, ensemble):
        model = bernoulli(5, context_features=3, num_masks=3, order_agnostic=True)
        context = 2 * torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        p = probabilities(model, grid(5).double()[:, None, :], context, ensemble=ensemble)
        assert p.shape == (32, 4)
        torch.testing.assert_close(p.sum(0), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-5)
        assert (p[:, 0] - p[:, 1]).abs().max() > 1e-2

    def test_bernoulli_direct(self):
        model = bernoulli(6, direct=True, num_masks=2, order_agnostic=True)
        x = grid(6).double()
        assert abs(probabilities(model, x).sum().item() - 1) < 1e-5
        assert abs(probabilities(model, x, ensemble=2).sum().item() - 1) < 1e-5

    def test_bernoulli_narrow_layers(self):
        with pytest.warns(ConnectivityWarning):
            model = bernoulli(7, hidden=(2, 2))
        assert abs(probabilities(model, grid(7).double()).sum().item() - 1) < 1e-5

    @pytest.mark.parametrize("features, categories", [(4, 3), (3, 4)])
    @pytest.mark.parametrize("ensemble", [None, 1, 3])
    def test_categorical(self, features, categories, ensemble):
        model = categorical(features, categories, num_masks=3, order_agnostic=True)
        total = probabilities(model, grid(features, categories), ensemble=ensemble).sum()
        assert abs(total.item() - 1) < 1e-5

    def test_categorical_with_context(self):
        model = categorical(3, 3, context_features=2)
        context = 2 * torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
        p = probabilities(model, grid(3, 3)[:, None, :], context)
        torch.testing.assert_close(p.sum(0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5)

    def test_categorical_double(self):
        model = categorical(3, 3).double()
        total = probabilities(model, grid(3, 3)).sum()
        assert abs(total.item() - 1) < 1e-10
        assert model.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 3)

    def test_bernoulli_double_integer_input(self):
        model = bernoulli(3)
        x = grid(3)
        torch.testing.assert_close(model.log_prob(x), model.log_prob(x.double()))
        torch.testing.assert_close(model.log_prob(x.bool()), model.log_prob(x.double()))


class TestEnsemble:
    def test_equals_mixture_of_mask_sets(self):
        model = bernoulli(5, num_masks=5, order_agnostic=True)
        x = grid(5).double()
        singles = []
        for r in range(5):
            model.made.use_mask(r)
            singles.append(probabilities(model, x))
        model.made.use_mask(3)
        for R in range(1, 6):
            mixture = torch.stack(singles[:R]).mean(0)
            torch.testing.assert_close(probabilities(model, x, ensemble=R), mixture)
        assert model.made.current_mask == 3
        assert (probabilities(model, x, ensemble=5) - singles[0]).abs().max() > 1e-2

    def test_averaging_logits_is_not_a_density(self):
        model = bernoulli(5, num_masks=4, order_agnostic=True)
        x = grid(5).double()
        with torch.no_grad():
            logits = torch.stack([model.made(x, mask=r)[..., 0] for r in range(4)]).mean(0)
        averaged = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1).exp().sum()
        assert abs(averaged.item() - 1) > 1e-6  # a density would sum to 1 within 1e-12 in float64
        assert abs(probabilities(model, x, ensemble=4).sum().item() - 1) < 1e-5

    def test_categorical_equals_mixture(self):
        model = categorical(3, 3, num_masks=3, order_agnostic=True)
        x = grid(3, 3)
        singles = []
        for r in range(3):
            model.made.use_mask(r)
            singles.append(probabilities(model, x))
        model.made.use_mask(0)
        torch.testing.assert_close(probabilities(model, x, ensemble=3), torch.stack(singles).mean(0))


class TestSampling:
    def test_bernoulli_matches_enumeration(self):
        model = bernoulli(4, num_masks=2, order_agnostic=True)
        x = model.sample(N, generator=torch.Generator().manual_seed(0))
        p = probabilities(model, grid(4).double())
        assert chisquare_pvalue(codes(x), p) > 1e-3
        model.made.use_mask(1)
        assert chisquare_pvalue(codes(x), probabilities(model, grid(4).double())) < 1e-6

    def test_bernoulli_other_mask_set(self):
        model = bernoulli(4, num_masks=3, order_agnostic=True)
        model.made.use_mask(2)
        x = model.sample(N, generator=torch.Generator().manual_seed(1))
        assert chisquare_pvalue(codes(x), probabilities(model, grid(4).double())) > 1e-3

    def test_categorical_matches_enumeration(self):
        model = categorical(3, 3)
        x = model.sample(N, generator=torch.Generator().manual_seed(0))
        assert chisquare_pvalue(codes(x, 3), probabilities(model, grid(3, 3))) > 1e-3
        other = categorical(3, 3, weights=1)
        assert chisquare_pvalue(codes(x, 3), probabilities(other, grid(3, 3))) < 1e-6

    def test_ensemble_matches_mixture(self):
        model = bernoulli(4, num_masks=3, order_agnostic=True)
        x = model.sample(N, ensemble=3, generator=torch.Generator().manual_seed(0))
        cells = codes(x)
        assert chisquare_pvalue(cells, probabilities(model, grid(4).double(), ensemble=3)) > 1e-3
        assert chisquare_pvalue(cells, probabilities(model, grid(4).double())) < 1e-6

    def test_categorical_ensemble_matches_mixture(self):
        model = categorical(3, 3, num_masks=2, order_agnostic=True)
        x = model.sample(N, ensemble=2, generator=torch.Generator().manual_seed(0))
        assert chisquare_pvalue(codes(x, 3), probabilities(model, grid(3, 3), ensemble=2)) > 1e-3

    def test_conditional_matches_enumeration(self):
        model = bernoulli(4, context_features=2)
        context = torch.tensor([[1.0, -1.0], [-2.0, 0.5], [0.0, 2.0]], dtype=torch.float64)
        x = model.sample(N, context, generator=torch.Generator().manual_seed(0))
        assert x.shape == (N, 3, 4)
        for j in range(3):
            p = probabilities(model, grid(4).double(), context[j])
            assert chisquare_pvalue(codes(x[:, j]), p) > 1e-3
        wrong = probabilities(model, grid(4).double(), context[1])
        assert chisquare_pvalue(codes(x[:, 0]), wrong) < 1e-6

    def test_single_context_row(self):
        model = bernoulli(4, context_features=2)
        context = torch.tensor([-2.0, 0.5], dtype=torch.float64)
        x = model.sample(N, context, generator=torch.Generator().manual_seed(2))
        assert x.shape == (N, 4)
        assert chisquare_pvalue(codes(x), probabilities(model, grid(4).double(), context)) > 1e-3


class TestCompletion:
    def model(self):
        model = bernoulli(5, num_masks=4, order_agnostic=True)
        orders = model.made.orders.tolist()
        assert orders[2][:2] == [2, 3] and orders[3][:2] == [4, 3] and orders[1][:3] == [0, 1, 3]
        return model

    @staticmethod
    def pattern(features):
        observed = torch.zeros(5, dtype=torch.bool)
        observed[list(features)] = True
        return observed

    @staticmethod
    def conditional(model, mask, observed, values):
        model.made.use_mask(mask)
        x = grid(5).double()
        p = probabilities(model, x)
        model.made.use_mask(0)
        consistent = (x[:, observed] == values[observed]).all(-1)
        return torch.where(consistent, p, torch.zeros_like(p))

    def test_matches_exact_conditional(self):
        model = self.model()
        observed = self.pattern([2, 3])
        assert expected_mask(model.made.orders.tolist(), observed.tolist(), 0) == 2
        x = torch.full((5,), float("nan"), dtype=torch.float64)
        x[2], x[3] = 1.0, 0.0
        filled = model.complete(x.expand(N, 5), observed.expand(N, 5), generator=torch.Generator().manual_seed(0))
        assert filled.shape == (N, 5)
        assert torch.isfinite(filled).all()
        assert ((filled == 0) | (filled == 1)).all()
        assert (filled[:, 2] == 1).all() and (filled[:, 3] == 0).all()
        cells = codes(filled)
        assert chisquare_pvalue(cells, self.conditional(model, 2, observed, x)) > 1e-3
        assert chisquare_pvalue(cells, self.conditional(model, 3, observed, x)) < 1e-6

    def test_mixed_patterns_in_one_batch(self):
        model = self.model()
        patterns = [self.pattern([2, 3]), self.pattern([4, 3]), self.pattern([0, 1, 3])]
        values = [torch.tensor(v, dtype=torch.float64) for v in
                  ([0, 0, 1, 1, 0], [0, 0, 0, 1, 1], [1, 0, 0, 1, 0])]
        masks = [expected_mask(model.made.orders.tolist(), p.tolist(), 0) for p in patterns]
        assert masks == [2, 3, 1]
        n = 3 * 8000
        observed = torch.stack(patterns).repeat(n // 3, 1)
        x = torch.where(observed, torch.stack(values).repeat(n // 3, 1), torch.tensor(float("nan")).double())
        filled = model.complete(x, observed, generator=torch.Generator().manual_seed(1))
        assert torch.equal(filled[observed], x[observed])
        for k in range(3):
            part = codes(filled[k::3])
            assert chisquare_pvalue(part, self.conditional(model, masks[k], patterns[k], values[k])) > 1e-3
        assert chisquare_pvalue(codes(filled[0::3]), self.conditional(model, 0, patterns[0], values[0])) < 1e-6

    @pytest.mark.parametrize("current", [0, 2])
    def test_picks_longest_observed_prefix(self, current, monkeypatch):
        model = self.model()
        model.made.use_mask(current)
        orders = model.made.orders.tolist()
        used, visited = [], []
        engine = density_module.autoregressive

        def spy(*args, mask=None, features=None, **kwargs):
            used.append(mask)
            visited.append(len(features))
            return engine(*args, mask=mask, features=features, **kwargs)

        monkeypatch.setattr(density_module, "autoregressive", spy)
        chosen = set()
        for bits in itertools.product([False, True], repeat=5):
            observed = torch.tensor(bits)
            used.clear()
            visited.clear()
            x = torch.where(observed, torch.tensor(1.0, dtype=torch.float64), torch.tensor(float("nan")).double())
            filled = model.complete(x, observed, generator=torch.Generator().manual_seed(0))
            assert (filled[observed] == 1).all()
            if all(bits):
                assert used == []
                continue
            expected = expected_mask(orders, list(bits), current)
            assert used == [expected], bits
            assert visited == [5 - sum(bits)]
            chosen.add(expected)
        assert chosen == {0, 1, 2, 3}

    def test_categorical_with_nan_placeholders(self):
        model = categorical(3, 3, num_masks=3, order_agnostic=True)
        first = 1
        observed = torch.zeros(3, dtype=torch.bool)
        observed[first] = True
        mask = expected_mask(model.made.orders.tolist(), observed.tolist(), 0)
        assert mask != 0 and model.made.orders[mask][0] == first
        x = torch.full((3,), float("nan"))
        x[first] = 2.0
        filled = model.complete(x.expand(N, 3), observed.expand(N, 3), generator=torch.Generator().manual_seed(0))
        assert filled.dtype == torch.long
        assert (filled[:, first] == 2).all()
        assert ((filled >= 0) & (filled < 3)).all()
        model.made.use_mask(mask)
        p = probabilities(model, grid(3, 3))
        model.made.use_mask(0)
        p = torch.where(grid(3, 3)[:, first] == 2, p, torch.zeros_like(p))
        assert chisquare_pvalue(codes(filled, 3), p) > 1e-3

    def test_nothing_observed_is_sampling(self):
        model = bernoulli(4, num_masks=2, order_agnostic=True)
        model.made.use_mask(1)
        x = torch.full((N, 4), float("nan"), dtype=torch.float64)
        filled = model.complete(x, torch.zeros(N, 4, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
        assert chisquare_pvalue(codes(filled), probabilities(model, grid(4).double())) > 1e-3

    def test_everything_observed_is_unchanged(self):
        model = bernoulli(4)
        x = grid(4).double()
        filled = model.complete(x, torch.ones_like(x, dtype=torch.bool))
        assert torch.equal(filled, x)

    def test_context_shapes(self):
        model = bernoulli(4, context_features=2)
        context = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x = torch.tensor([1.0, float("nan"), 0.0, float("nan")], dtype=torch.float64)
        observed = torch.tensor([True, False, True, False])
        g = torch.Generator().manual_seed(0)
        filled = model.complete(x, observed, context, generator=g)
        assert filled.shape == (3, 4)
        assert (filled[:, 0] == 1).all() and (filled[:, 2] == 0).all()
        batch = model.complete(x.expand(5, 1, 4), observed.expand(5, 1, 4), context, generator=g)
        assert batch.shape == (5, 3, 4)
        assert torch.isfinite(batch).all()

    def test_conditional_completion_matches_enumeration(self):
        model = bernoulli(4, context_features=2)
        context = torch.tensor([[1.5, -1.0], [-2.0, 0.5]], dtype=torch.float64)
        x = torch.tensor([0.0, float("nan"), float("nan"), float("nan")], dtype=torch.float64)
        observed = torch.tensor([True, False, False, False])
        filled = model.complete(x.expand(N, 1, 4), observed.expand(N, 1, 4), context,
                                generator=torch.Generator().manual_seed(0))
        assert filled.shape == (N, 2, 4)
        for j in range(2):
            p = probabilities(model, grid(4).double(), context[j])
            p = torch.where(grid(4)[:, 0] == 0, p, torch.zeros_like(p))
            assert chisquare_pvalue(codes(filled[:, j]), p) > 1e-3

    def test_generator_reproducible(self):
        model = bernoulli(5, num_masks=4, order_agnostic=True)
        x = grid(5).double()
        observed = torch.tensor([True, False, False, False, False]).expand(32, 5)
        a = model.complete(x, observed, generator=torch.Generator().manual_seed(5))
        b = model.complete(x, observed, generator=torch.Generator().manual_seed(5))
        c = model.complete(x, observed, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


class TestShapes:
    @pytest.mark.parametrize("shape, expected", [((), (4,)), (5, (5, 4)), ((2, 3), (2, 3, 4)), ([0], (0, 4))])
    def test_sample_shape(self, shape, expected):
        model = bernoulli(4)
        assert model.sample(shape).shape == expected

    def test_sample_shape_with_context(self):
        model = bernoulli(4, context_features=2)
        context = torch.randn(3, 2, dtype=torch.float64)
        assert model.sample(4, context).shape == (4, 3, 4)
        assert model.sample((), context).shape == (3, 4)
        assert model.sample((2, 5), context.expand(6, 3, 2)).shape == (2, 5, 6, 3, 4)

    def test_log_prob_shapes(self):
        model = bernoulli(4, context_features=2)
        context = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        x = grid(4).double()[:6]
        assert model.log_prob(x.view(2, 3, 4), context).shape == (2, 3)
        broadcast = model.log_prob(x[5], context)
        assert broadcast.shape == (3,)
        rows = torch.stack([model.log_prob(x[5], context[j]) for j in range(3)])
        torch.testing.assert_close(broadcast, rows)
        unconditional = bernoulli(4)
        assert unconditional.log_prob(x[0]).shape == ()
        assert unconditional.log_prob(x.view(3, 2, 4)).shape == (3, 2)
        assert unconditional.log_prob(x.view(3, 2, 4), ensemble=1).shape == (3, 2)

    def test_bernoulli_samples_are_binary_floats(self):
        model = bernoulli(6)
        x = model.sample(200, generator=torch.Generator().manual_seed(0))
        assert x.dtype == torch.float64
        assert ((x == 0) | (x == 1)).all()
        assert bernoulli(6, dtype=torch.float32).sample(3).dtype == torch.float32

    def test_categorical_samples_are_long_in_range(self):
        model = categorical(6, 5)
        x = model.sample(500, generator=torch.Generator().manual_seed(0))
        assert x.dtype == torch.long
        assert x.min() >= 0 and x.max() <= 4
        assert len(x.unique()) == 5


class TestModule:
    def test_state_dict_round_trip(self):
        source = bernoulli(5, context_features=2, num_masks=3, order_agnostic=True)
        source.made.next_mask()
        source.made.next_mask()
        torch.manual_seed(7)
        target = scaled(BernoulliMADE(5, [32, 32], context_features=2, num_masks=3,
                                      order_agnostic=True, seed=11)).double()
        assert not torch.equal(target.made.orders, source.made.orders)
        x = grid(5).double()
        context = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer))
        assert target.made.current_mask == 2
        assert torch.equal(target.made.order, source.made.order)
        assert torch.equal(target.log_prob(x, context), source.log_prob(x, context))
        assert torch.equal(target.log_prob(x, context, ensemble=3), source.log_prob(x, context, ensemble=3))
        a = source.sample(10, context[:1], generator=torch.Generator().manual_seed(0))
        b = target.sample(10, context[:1], generator=torch.Generator().manual_seed(0))
        assert torch.equal(a, b)

    def test_categorical_state_dict_round_trip(self):
        source = categorical(3, 3, num_masks=2, order_agnostic=True)
        source.made.next_mask()
        target = categorical(3, 3, num_masks=2, order_agnostic=True, weights=5)
        target.load_state_dict(source.state_dict())
        x = grid(3, 3)
        assert torch.equal(target.log_prob(x), source.log_prob(x))

    @pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
    def test_gradients_finite(self, kind):
        if kind == "bernoulli":
            model = bernoulli(5, context_features=2, direct=True)
            x = grid(5).double()
            context = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        else:
            model = categorical(3, 3, context_features=2, direct=True)
            x = grid(3, 3)
            context = torch.randn(27, 2, generator=torch.Generator().manual_seed(0))
        model.log_prob(x, context).mean().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name

    def test_ensemble_gradients_finite(self):
        model = bernoulli(5, num_masks=3, order_agnostic=True)
        model.log_prob(grid(5).double(), ensemble=3).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    @pytest.mark.parametrize("ensemble", [None, 3])
    def test_generator_reproducible(self, ensemble):
        model = bernoulli(6, num_masks=3, order_agnostic=True)
        a = model.sample(100, ensemble=ensemble, generator=torch.Generator().manual_seed(1))
        b = model.sample(100, ensemble=ensemble, generator=torch.Generator().manual_seed(1))
        c = model.sample(100, ensemble=ensemble, generator=torch.Generator().manual_seed(2))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        cat = categorical(4, 3)
        assert torch.equal(cat.sample(50, generator=torch.Generator().manual_seed(1)),
                           cat.sample(50, generator=torch.Generator().manual_seed(1)))

    def test_head_must_match_made(self):
        with pytest.raises(ValueError, match="params=3"):
            AutoregressiveDensity(MADE(3, [8], seed=0), Categorical(3))
        with pytest.raises(ValueError, match="columns_per_feature=3"):
            AutoregressiveDensity(MADE(3, [8], num_params=3, seed=0), Categorical(3))
        AutoregressiveDensity(MADE(3, [8], num_params=1, seed=0), Bernoulli())

    def test_eval_mode_sees_weight_changes(self):
        model = bernoulli(4)
        reference = copy.deepcopy(model).train()  # training mode never keeps masked weights
        x = grid(4).double()
        model.eval()

        def agree():
            with torch.no_grad():
                torch.testing.assert_close(model.log_prob(x), reference.log_prob(x), rtol=0, atol=0)

        agree()
        with torch.no_grad():
            for m in (model, reference):
                for p in m.parameters():
                    p.mul_(2)
        agree()
        for m in (model, reference):
            for p in m.parameters():
                p.data.mul_(0.5)  # bypasses the version counter: seen after eval(), as documented
        model.eval()
        agree()
        new = torch.randn_like(model.made.layers[0].weight)
        for m in (model, reference):
            m.made.layers[0].weight = torch.nn.Parameter(new.clone())
        agree()


class TestBadInput:
    def test_wrong_feature_count(self):
        with pytest.raises(ValueError, match=r"expected x of shape \(\*, 4\), got \(2, 3\)"):
            bernoulli(4).log_prob(torch.zeros(2, 3))
        with pytest.raises(ValueError, match=r"expected x of shape \(\*, 4\), got \(\)"):
            bernoulli(4).log_prob(torch.tensor(0.0))
        with pytest.raises(ValueError, match=r"expected x of shape \(\*, 3\), got \(5,\)"):
            categorical(3, 3).complete(torch.zeros(5), torch.zeros(5, dtype=torch.bool))

    def test_not_a_tensor(self):
        with pytest.raises(TypeError, match="torch.Tensor"):
            bernoulli(2).log_prob([[0.0, 1.0]])

    @pytest.mark.parametrize(
        "x, match",
        [
            (torch.tensor([[0.0, 0.5, 1.0]]), "binary values"),
            (torch.tensor([[0.0, 2.0, 1.0]]), "binary values"),
            (torch.tensor([[0.0, float("nan"), 1.0]]), "NaN"),
        ],
    )
    def test_bernoulli_values(self, x, match):
        model = bernoulli(3)
        with pytest.raises(ValueError, match=match):
            model.log_prob(x.double())
        observed = torch.ones(1, 3, dtype=torch.bool)
        with pytest.raises(ValueError, match=match):
            model.complete(x.double(), observed)

    @pytest.mark.parametrize(
        "x, error, match",
        [
            (torch.tensor([[0, 3, 1]]), ValueError, r"categories in 0\.\.2"),
            (torch.tensor([[0, -1, 1]]), ValueError, r"categories in 0\.\.2"),
            (torch.tensor([[0.0, 1.5, 1.0]]), ValueError, "non-integer"),
            (torch.tensor([[0.0, float("nan"), 1.0]]), ValueError, "NaN"),
            (torch.tensor([[False, True, True]]), TypeError, "bool"),
        ],
    )
    def test_categorical_values(self, x, error, match):
        with pytest.raises(error, match=match):
            categorical(3, 3).log_prob(x)

    def test_context(self):
        conditional = bernoulli(3, context_features=2)
        x = torch.zeros(4, 3, dtype=torch.float64)
        with pytest.raises(ValueError, match=r"conditional: expected a context of shape \(\*, 2\), got None"):
            conditional.log_prob(x)
        with pytest.raises(ValueError, match="conditional"):
            conditional.sample(3)
        with pytest.raises(ValueError, match=r"expected context of shape \(\*, 2\), got \(4, 5\)"):
            conditional.log_prob(x, torch.zeros(4, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"expected context of shape \(\*, 2\), got \(4, 5\)"):
            conditional.sample(3, torch.zeros(4, 5, dtype=torch.float64))
        with pytest.raises(ValueError, match="do not broadcast"):
            conditional.log_prob(x, torch.zeros(5, 2, dtype=torch.float64))
        with pytest.raises(ValueError, match="context contains NaN"):
            conditional.log_prob(x, torch.full((4, 2), float("nan"), dtype=torch.float64))
        unconditional = bernoulli(3)
        with pytest.raises(ValueError, match="unconditional"):
            unconditional.log_prob(x, torch.zeros(4, 2, dtype=torch.float64))
        with pytest.raises(ValueError, match="unconditional"):
            unconditional.sample(3, torch.zeros(4, 2, dtype=torch.float64))
        with pytest.raises(ValueError, match="unconditional"):
            unconditional.complete(x, torch.ones(4, 3, dtype=torch.bool), torch.zeros(4, 2))

    @pytest.mark.parametrize("ensemble, error", [(0, ValueError), (4, ValueError), (-1, ValueError),
                                                 (True, TypeError), (2.0, TypeError)])
    def test_ensemble(self, ensemble, error):
        model = bernoulli(3, num_masks=3, order_agnostic=True)
        with pytest.raises(error, match=r"expected ensemble in 1\.\.3"):
            model.log_prob(torch.zeros(3, dtype=torch.float64), ensemble=ensemble)
        with pytest.raises(error, match=r"expected ensemble in 1\.\.3"):
            model.sample(2, ensemble=ensemble)

    def test_observed(self):
        model = bernoulli(3)
        x = torch.zeros(4, 3, dtype=torch.float64)
        with pytest.raises(TypeError, match="observed to be a boolean tensor"):
            model.complete(x, torch.ones(4, 3))
        with pytest.raises(TypeError, match="observed to be a boolean tensor"):
            model.complete(x, [[True] * 3] * 4)
        with pytest.raises(ValueError, match=r"observed of the shape of x \(4, 3\), got \(3,\)"):
            model.complete(x, torch.ones(3, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCUDA:
    options = dict(context_features=2, num_masks=2, order_agnostic=True)

    def models(self, weights=0):
        cpu = [bernoulli(4, dtype=torch.float32, weights=weights, **self.options),
               categorical(3, 3, weights=weights, **self.options)]
        return cpu, [grid(4).float(), grid(3, 3)]

    def test_log_prob_matches_cpu(self):
        cpu, grids = self.models()
        for model, x in zip(cpu, grids):
            context = torch.randn(len(x), 2, generator=torch.Generator().manual_seed(0))
            expected = model.log_prob(x, context, ensemble=2)
            gpu = model.to("cuda")
            got = gpu.log_prob(x.cuda(), context.cuda(), ensemble=2)
            assert got.device.type == "cuda"
            torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)

    def test_sample_and_complete_on_cuda(self):
        cpu, grids = self.models()
        for model, x in zip(cpu, grids):
            model = model.to("cuda")
            context = torch.randn(3, 2, device="cuda")
            g = torch.Generator(device="cuda").manual_seed(0)
            samples = model.sample(5, context, ensemble=2, generator=g)
            assert samples.device.type == "cuda" and samples.shape == (5, 3, x.shape[-1])
            observed = torch.zeros(5, 3, x.shape[-1], dtype=torch.bool, device="cuda")
            observed[..., 0] = True
            filled = model.complete(samples, observed, context, generator=g)
            assert filled.device.type == "cuda"
            assert torch.equal(filled[..., 0], samples[..., 0])
            assert torch.isfinite(model.log_prob(filled, context)).all()

    def test_state_dict_from_cuda_loads_on_cpu(self):
        cpu, grids = self.models()
        for model, restored, x in zip(cpu, self.models(weights=9)[0], grids):
            model = model.to("cuda")
            model.made.next_mask()
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            buffer.seek(0)
            state = torch.load(buffer, map_location="cpu")
            restored.load_state_dict(state)
            assert restored.made.current_mask == 1
            context = torch.randn(len(x), 2, generator=torch.Generator().manual_seed(0))
            torch.testing.assert_close(restored.log_prob(x, context),
                                       model.log_prob(x.cuda(), context.cuda()).cpu(), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
@pytest.mark.parametrize("make", [
    lambda: flowkit.BernoulliMADE(5, [16], num_masks=3, order_agnostic=True, seed=0),
    lambda: flowkit.CategoricalMADE(4, 3, [16], num_masks=2, seed=1),
    lambda: flowkit.MADEMoG(3, 2, [16], context_features=2, seed=2),
    lambda: flowkit.BernoulliMADE(5, [16], residual_blocks=1, direct=True, seed=3),
])
@pytest.mark.parametrize("grad", [False, True])
def test_sample_and_log_prob_is_sample_with_the_exact_log_prob(make, grad):
    model = make().eval()
    context = torch.randn(4, model.context_features) if model.context_features else None
    shape = (3,) if context is None else (2,)
    with torch.set_grad_enabled(grad):
        x, log_p = model.sample_and_log_prob(shape, context, generator=torch.Generator().manual_seed(0))
        expected = model.sample(shape, context, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(x, expected, atol=1e-6)  # equal, up to rounding for a continuous head
        assert log_p.shape == x.shape[:-1]
        assert torch.allclose(log_p, model.log_prob(x, context), atol=1e-5)
        if model.made.num_masks > 1:
            x, log_p = model.sample_and_log_prob(6, ensemble=2, generator=torch.Generator().manual_seed(1))
            assert torch.allclose(log_p, model.log_prob(x, ensemble=2), atol=1e-5)
    if grad and isinstance(model, flowkit.MADEMoG):
        log_p.sum().backward()  # the log-probabilities carry gradients to the network
        assert model.made.layers[-1].weight.grad is not None


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
def test_categorical_made_with_a_count_per_feature_is_exactly_normalised():
    counts = [2, 3, 2, 4]
    model = flowkit.CategoricalMADE(4, counts, [24], num_masks=3, order_agnostic=True, direct=True, seed=0)
    every = torch.tensor(list(itertools.product(*(range(k) for k in counts))))
    with torch.no_grad():
        for ensemble in (None, 3):
            total = model.log_prob(every, ensemble=ensemble).double().exp().sum()
            assert abs(float(total) - 1.0) < 1e-5
        x = model.sample(20000, generator=torch.Generator().manual_seed(1))
    assert all(int(x[:, d].max()) == k - 1 and int(x[:, d].min()) == 0 for d, k in enumerate(counts))
    index = torch.tensor([24, 8, 4, 1])  # mixed-radix code of a configuration, for the chi-square test
    observed = torch.bincount((x * index).sum(-1), minlength=48).double()
    with torch.no_grad():
        expected = model.log_prob(every).double().exp() * len(x)
    assert stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
    grad_draws = model.sample(5, generator=torch.Generator().manual_seed(2))  # the plain loop (gradients on)
    with torch.no_grad():
        engine_draws = model.sample(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(grad_draws, engine_draws)
    observed_mask = torch.tensor([[True, False, True, False]]).expand(6, 4)
    filled = model.complete(x[:6], observed_mask)
    assert torch.equal(filled[observed_mask], x[:6][observed_mask])
    assert (filled < torch.tensor(counts)).all()
    draws, log_p = model.sample_and_log_prob(6)
    assert torch.allclose(log_p, model.log_prob(draws), atol=1e-5)


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
def test_many_categories_build_without_the_direct_connection_and_are_refused_with_it():
    # 784 features of 256 categories: 200,704 input columns and output rows. The layers' masks are small,
    # the direct connection's (200,704 x 200,704) would not be: it was computed even with direct=False,
    # and so was a (rows x columns) product in the connectivity audit, and both failed in torch's allocator
    model = CategoricalMADE(784, 256, [4], seed=0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # every conditional uniform over its 256 categories
        x = torch.randint(0, 256, (3, 784), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(model.log_prob(x), torch.full((3,), -784 * np.log(256.0)))
    with pytest.raises(flowkit.FlowkitValueError, match=r"direct connection alone needs .*pass direct=False"):
        CategoricalMADE(3000, 256, [4], direct=True, seed=0)  # 2.7 TiB: refused before allocating


def test_categorical_counts_are_checked():
    model = flowkit.CategoricalMADE(3, [2, 3, 2], [8], seed=0)
    with pytest.raises(flowkit.FlowkitValueError, match=r"categories of feature 2 in 0\.\.1, got values \[2\]"):
        model.log_prob(torch.tensor([[1, 2, 2]]))
    with pytest.raises(flowkit.FlowkitValueError, match="one count of categories per feature"):
        flowkit.CategoricalMADE(3, [2, 3], [8])
    with pytest.raises(flowkit.FlowkitValueError, match="every count of categories"):
        flowkit.CategoricalMADE(2, [2, 1], [8])
    assert model.sample(3).shape == (3, 3) and "categories=[2, 3, 2]" in repr(model.head)
