"""Tests of the heads: log-probabilities, encodings, sampling and validation of the conditionals."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import flowkit
from flowkit.heads import Bernoulli, Categorical


class TestBernoulli:
    def test_log_prob_matches_torch(self):
        torch.manual_seed(0)
        logits = 3 * torch.randn(6, 5, 1, dtype=torch.float64)
        x = torch.randint(2, (6, 5)).double()
        expected = torch.distributions.Bernoulli(logits=logits[..., 0]).log_prob(x)
        got = Bernoulli().log_prob(logits, x)
        assert got.shape == (6, 5)
        torch.testing.assert_close(got, expected)

    def test_log_prob_closed_form(self):
        logits = torch.tensor([-2.0, 0.0, 0.5, 4.0], dtype=torch.float64)
        head = Bernoulli()
        ones = head.log_prob(logits[:, None], torch.ones(4, dtype=torch.float64))
        zeros = head.log_prob(logits[:, None], torch.zeros(4, dtype=torch.float64))
        sigmoid = [1 / (1 + math.exp(-logit)) for logit in logits.tolist()]
        torch.testing.assert_close(ones, torch.tensor([math.log(s) for s in sigmoid], dtype=torch.float64))
        torch.testing.assert_close(zeros, torch.tensor([math.log(1 - s) for s in sigmoid], dtype=torch.float64))

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_log_prob_stable_at_extreme_logits(self, dtype):
        logits = torch.tensor([[100.0], [100.0], [-100.0], [-100.0]], dtype=dtype)
        x = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=dtype)
        got = Bernoulli().log_prob(logits, x)
        assert torch.isfinite(got).all()
        tiny = -math.log1p(math.exp(-100.0))
        expected = torch.tensor([tiny, -100.0, -100.0, tiny], dtype=dtype)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got, torch.distributions.Bernoulli(logits=logits[:, 0]).log_prob(x))

    def test_encode_is_identity(self):
        x = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        assert torch.equal(Bernoulli().encode(x), x)

    def test_sample_frequencies(self):
        logits = torch.tensor([-2.0, 0.0, 0.7, 3.0])
        n = 20000
        g = torch.Generator().manual_seed(0)
        x = Bernoulli().sample(logits.expand(n, 4).unsqueeze(-1), generator=g)
        assert x.shape == (n, 4)
        assert x.dtype == torch.float32
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        ones = x.sum(0).numpy()
        p = torch.sigmoid(logits).double().numpy()
        for k in range(4):
            observed = [ones[k], n - ones[k]]
            pvalue = stats.chisquare(observed, [n * p[k], n * (1 - p[k])]).pvalue
            assert pvalue > 1e-3, (k, observed, n * p[k])

    def test_sample_extreme_logits_are_deterministic(self):
        g = torch.Generator().manual_seed(0)
        params = torch.tensor([[100.0], [-100.0]]).repeat(500, 1)
        x = Bernoulli().sample(params, generator=g)
        assert torch.equal(x, torch.tensor([1.0, 0.0]).repeat(500))

    def test_sample_follows_params_dtype(self):
        x = Bernoulli().sample(torch.zeros(3, 1, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
        assert x.dtype == torch.float64

    def test_sample_generator_reproducible(self):
        params = torch.zeros(100, 1)
        a = Bernoulli().sample(params, generator=torch.Generator().manual_seed(3))
        b = Bernoulli().sample(params, generator=torch.Generator().manual_seed(3))
        c = Bernoulli().sample(params, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_validate_accepts_binary_and_bool(self):
        head = Bernoulli()
        x = head.check_support(torch.tensor([[True, False], [False, True]]))
        assert x.dtype.is_floating_point
        assert torch.equal(x, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        ints = head.check_support(torch.tensor([0, 1, 1]))
        assert ints.dtype.is_floating_point and ints.tolist() == [0.0, 1.0, 1.0]
        doubles = torch.tensor([0.0, 1.0], dtype=torch.float64)
        assert head.check_support(doubles).dtype == torch.float64

    @pytest.mark.parametrize(
        "x, error, match",
        [
            (torch.tensor([0.0, 0.5, 1.0]), ValueError, r"binary values 0 or 1.*0\.5"),
            (torch.tensor([0, 2, 1]), ValueError, r"binary values 0 or 1.*2"),
            (torch.tensor([-1.0, 0.0]), ValueError, r"binary values 0 or 1.*-1\.0"),
            (torch.tensor([0.0, float("nan")]), ValueError, "NaN"),
            (torch.tensor([1.0, float("inf")]), ValueError, "infinite"),
        ],
    )
    def test_validate_rejects(self, x, error, match):
        with pytest.raises(error, match=match):
            Bernoulli().check_support(x)

    def test_validation_switch(self):
        x = torch.tensor([0.0, 0.5])
        with flowkit.validate(False):
            assert torch.equal(Bernoulli().check_support(x), x)
        with pytest.raises(ValueError, match="binary"):
            Bernoulli().check_support(x)


class TestCategorical:
    def test_log_prob_matches_torch(self):
        torch.manual_seed(0)
        logits = 3 * torch.randn(4, 3, 5, dtype=torch.float64)
        x = torch.randint(5, (4, 3))
        expected = torch.distributions.Categorical(logits=logits).log_prob(x)
        got = Categorical(5).log_prob(logits, x)
        assert got.shape == (4, 3)
        torch.testing.assert_close(got, expected)

    def test_log_prob_closed_form_and_extremes(self):
        logits = torch.tensor([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
        x = torch.tensor([[0, 1, 2], [0, 1, 2]])
        got = Categorical(3).log_prob(logits[:, None, :].expand(2, 3, 3), x)
        assert torch.isfinite(got).all()
        z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
        expected = torch.tensor([[0.0, -1000.0, -2000.0], [1 - z, 2 - z, 3 - z]], dtype=torch.float64)
        torch.testing.assert_close(got, expected)

    def test_encode_one_hot_layout(self):
        K = 4
        x = torch.tensor([[2, 0, 3], [1, 1, 0]])
        h = Categorical(K).encode(x)
        assert h.shape == (2, 3 * K)
        for b in range(2):
            for i in range(3):
                for k in range(K):
                    assert h[b, i * K + k].item() == float(x[b, i].item() == k)

    def test_encode_batch_dims(self):
        x = torch.randint(3, (2, 5, 4), generator=torch.Generator().manual_seed(0))
        h = Categorical(3).encode(x)
        assert h.shape == (2, 5, 12)
        assert torch.equal(h.view(2, 5, 4, 3).argmax(-1), x)
        assert torch.equal(h.sum(-1), torch.full((2, 5), 4.0))

    def test_sample_frequencies(self):
        logits = torch.tensor([-1.0, 0.0, 2.0, 0.5, -3.0, 1.0])
        n = 20000
        g = torch.Generator().manual_seed(0)
        x = Categorical(6).sample(logits.expand(n, 6), generator=g)
        assert x.shape == (n,)
        assert x.dtype == torch.long
        counts = np.bincount(x.numpy(), minlength=6)
        expected = n * torch.softmax(logits.double(), -1).numpy()
        assert stats.chisquare(counts, expected).pvalue > 1e-3

    def test_sample_frequencies_per_row(self):
        logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        n = 20000
        g = torch.Generator().manual_seed(1)
        x = Categorical(3).sample(logits.expand(n, 2, 3), generator=g)
        assert x.shape == (n, 2)
        for row in range(2):
            counts = np.bincount(x[:, row].numpy(), minlength=3)
            expected = n * torch.softmax(logits[row].double(), -1).numpy()
            assert stats.chisquare(counts, expected).pvalue > 1e-3

    def test_sample_never_draws_impossible_category(self):
        logits = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")])
        x = Categorical(4).sample(logits.expand(5000, 4), generator=torch.Generator().manual_seed(0))
        assert set(x.unique().tolist()) == {0, 2}

    def test_sample_generator_reproducible(self):
        params = torch.zeros(100, 5)
        a = Categorical(5).sample(params, generator=torch.Generator().manual_seed(3))
        b = Categorical(5).sample(params, generator=torch.Generator().manual_seed(3))
        c = Categorical(5).sample(params, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_validate_accepts_integers_and_integral_floats(self):
        head = Categorical(3)
        assert head.check_support(torch.tensor([0, 2, 1], dtype=torch.int32)).dtype == torch.long
        x = head.check_support(torch.tensor([0.0, 2.0, 1.0]))
        assert x.dtype == torch.long and x.tolist() == [0, 2, 1]

    @pytest.mark.parametrize(
        "x, error, match",
        [
            (torch.tensor([0, 3]), ValueError, r"categories in 0\.\.2.*3"),
            (torch.tensor([-1, 0]), ValueError, r"categories in 0\.\.2.*-1"),
            (torch.tensor([0.0, 1.5]), ValueError, r"non-integer.*1\.5"),
            (torch.tensor([0.0, float("nan")]), ValueError, "NaN"),
            (torch.tensor([0.0, float("inf")]), ValueError, "infinite"),
            (torch.tensor([True, False]), TypeError, "bool"),
        ],
    )
    def test_validate_rejects(self, x, error, match):
        with pytest.raises(error, match=match):
            Categorical(3).check_support(x)

    @pytest.mark.parametrize("categories, error", [(1, ValueError), (0, ValueError), (-2, ValueError),
                                                   (2.5, TypeError), (3.0, TypeError), (True, TypeError),
                                                   ("3", TypeError)])
    def test_constructor_rejects(self, categories, error):
        with pytest.raises(error, match="categories to be an int >= 2"):
            Categorical(categories)

    def test_sizes(self):
        head = Categorical(7)
        assert head.num_params == 7 and head.columns == 7 and head.categories == 7
        assert Bernoulli.num_params == 1 and Bernoulli.columns == 1
