"""flowkit.sbi: flowkit's densities as sbi estimators, trained by sbi's own NPE, NLE and MNLE."""

import contextlib
import functools
import io
import math
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Beta, Gamma, InverseGamma, MultivariateNormal

pytest.importorskip("sbi")

from sbi.inference import MNLE, MNPE, NLE, NPE  # noqa: E402
from sbi.inference.posteriors.posterior_parameters import MCMCPosteriorParameters  # noqa: E402
from sbi.neural_nets.estimators import ConditionalDensityEstimator, MixedDensityEstimator  # noqa: E402
from sbi.utils import MultipleIndependent  # noqa: E402

import flowkit  # noqa: E402
import flowkit.sbi as fs  # noqa: E402

NOISE = 0.5  # x = theta + NOISE * eps: the posterior is N(x / (1 + s^2), s^2 / (1 + s^2) I)
SMALL = {
    "maf": functools.partial(fs.build_maf, hidden_features=16, num_transforms=2, seed=0),
    "spline": functools.partial(fs.build_maf, transformer="spline", hidden_features=16, num_transforms=2, seed=0),
    "made": functools.partial(fs.build_made, hidden_features=16, num_mixture_components=3, seed=0),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings(), contextlib.chdir(tmp_path_factory.mktemp("sbi")):  # sbi logs to ./sbi-logs
        warnings.simplefilter("ignore")  # sbi's notes (progress, z-scoring, device) and the ConnectivityWarning
        yield
    torch.set_num_threads(threads)


def _gaussian_linear(n, seed, dim=3):
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, dim, generator=generator)
    return theta, theta + NOISE * torch.randn(n, dim, generator=generator)


def _true_posterior(x_o):
    return MultivariateNormal(x_o / (1 + NOISE**2), NOISE**2 / (1 + NOISE**2) * torch.eye(x_o.shape[-1]))


def _kl_true_to(posterior, x_o, n=2000):
    """KL(p || q) = E_p[log p - log q] from n draws of the closed-form posterior p."""
    true = _true_posterior(x_o)
    theta = true.sample((n,))
    return float((true.log_prob(theta) - posterior.log_prob(theta, x=x_o[None])).mean())


def test_import_flowkit_does_not_import_sbi():
    code = "import sys, flowkit; assert 'sbi' not in sys.modules, 'flowkit imported sbi'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", SMALL)
def test_estimator_shapes_in_every_layout(name):
    theta, x = _gaussian_linear(100, 0, dim=2)
    x = torch.cat([x, x[:, :1]], 1)  # a 3-wide condition, a 2-wide input
    estimator = SMALL[name](theta, x)
    assert isinstance(estimator, ConditionalDensityEstimator)
    assert estimator.input_shape == (2,) and estimator.condition_shape == (3,)
    S, B = 3, 4
    u, c = torch.randn(S, B, 2), torch.randn(B, 3)
    per_sample = estimator.log_prob(u, c)
    assert per_sample.shape == (S, B)
    assert estimator.log_prob(u[0], c).shape == (1, B)
    torch.testing.assert_close(estimator.log_prob(u[0], c)[0], per_sample[0])
    torch.testing.assert_close(estimator.log_prob(u, c.expand(S, B, 3)), per_sample)
    assert estimator.log_prob(u[:, :1], c).shape == (S, B)              # batch sizes broadcast
    assert estimator.log_prob(u, c[:1]).shape == (S, B)
    assert estimator.log_prob(u[0], c.expand(S, B, 3)).shape == (S, B)  # the sample size from the condition
    torch.testing.assert_close(estimator.loss(u[0], c), -per_sample[0])
    assert estimator.sample((5,), c).shape == (5, B, 2)
    assert estimator.sample((2, 5), c).shape == (2, 5, B, 2)
    draws, log_q = estimator.sample_and_log_prob((5,), c)
    assert draws.shape == (5, B, 2) and log_q.shape == (5, B)
    torch.testing.assert_close(log_q, estimator.log_prob(draws, c), atol=1e-4, rtol=1e-4)


def test_event_shapes_of_any_rank_with_an_embedding():
    theta, x = torch.randn(50, 2, 2), torch.randn(50, 3, 5)
    summary = nn.Sequential(nn.Flatten(), nn.Linear(15, 4))
    estimator = fs.build_maf(theta, x, hidden_features=32, num_transforms=2, embedding_net=summary, seed=0)
    assert estimator.input_shape == (2, 2) and estimator.condition_shape == (3, 5)
    assert estimator.embedding_net[1] is summary  # after the condition's z-scoring
    draws = estimator.sample((6,), x[:4])
    assert draws.shape == (6, 4, 2, 2) and estimator.log_prob(draws, x[:4]).shape == (6, 4)


def test_bad_input_raises_named_flowkit_errors():
    theta, x = _gaussian_linear(100, 0)
    estimator = SMALL["maf"](theta, x)
    with pytest.raises(flowkit.FlowkitValueError, match=r"expected condition of shape .*condition_shape = \(3,\)"):
        estimator.log_prob(theta[:5], torch.randn(5, 4))
    with pytest.raises(flowkit.FlowkitValueError, match=r"expected input of shape .*input_shape = \(3,\)"):
        estimator.loss(torch.randn(5, 2), x[:5])
    with pytest.raises(flowkit.FlowkitValueError, match="input contains NaN"):
        estimator.log_prob(torch.full((5, 3), math.nan), x[:5])
    with pytest.raises(flowkit.FlowkitValueError, match="condition contains NaN"):
        estimator.sample((2,), torch.full((5, 3), math.nan))
    with pytest.raises(flowkit.FlowkitValueError, match="do not broadcast"):
        estimator.log_prob(theta[:5], x[:4])
    with pytest.raises(flowkit.FlowkitValueError, match="z_score_x"):
        fs.build_maf(theta, x, z_score_x="yes")
    with pytest.raises(flowkit.FlowkitValueError, match="num_bins"):
        fs.build_maf(theta, x, num_bins=4)
    with pytest.raises(flowkit.FlowkitTypeError, match="unexpected option"):
        fs.build_maf(theta, x, colour="red")
    with pytest.raises(flowkit.FlowkitValueError, match="batch_input"):
        fs.build_made(theta[:, 0], x)
    with pytest.raises(flowkit.FlowkitValueError, match="embedding_net"):
        fs.build_maf(theta, x, embedding_net=nn.Flatten(0))


def test_the_loss_reads_nothing_on_the_host():
    # on the meta device every tensor is a shape without data: a check that reads a value (the one
    # host synchronisation of a value check on a GPU) cannot run there, so the loss has none
    theta, x = _gaussian_linear(100, 0)
    for build in (SMALL["spline"], SMALL["made"]):
        estimator = build(theta, x).to("meta")
        loss = estimator.loss(theta.to("meta"), x.to("meta"))
        assert loss.shape == (100,) and loss.device.type == "meta"
        with pytest.raises((NotImplementedError, RuntimeError)):  # log_prob checks its input: a read
            estimator.log_prob(theta.to("meta"), x.to("meta"))
    assert flowkit.validation.validation_enabled()  # the loss turned the checks off for itself only


@pytest.fixture(scope="module")
def npe():
    # 1000 simulations, 3 layers of 2x32, at most 30 epochs of 100 (about 5 s on one thread)
    theta, x = _gaussian_linear(1000, 0)
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    torch.manual_seed(0)  # sbi's split and minibatches
    inference = NPE(prior, density_estimator=functools.partial(fs.build_maf, hidden_features=32, num_transforms=3,
                                                                seed=0), show_progress_bars=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator = inference.append_simulations(theta, x).train(max_num_epochs=30, training_batch_size=100)
    return inference, estimator, inference.build_posterior()


def test_npe_learns_the_gaussian_linear_posterior(npe):
    _, estimator, posterior = npe
    assert isinstance(estimator, fs.FlowkitEstimator)
    # measured KL(p || q) with this configuration (5 seeds of the simulations and the weights, three
    # x_o each, 2000 draws): 0.011 to 0.087 nats
    for x_o in torch.tensor([[0.5, -0.3, 1.0], [-1.5, 1.0, 0.2]]):
        assert _kl_true_to(posterior, x_o) < 0.15


def test_npe_posterior_methods_and_shapes(npe):
    _, _, posterior = npe
    x_o = torch.tensor([[0.5, -0.3, 1.0]])
    samples = posterior.sample((200,), x=x_o, show_progress_bars=False)
    assert samples.shape == (200, 3) and posterior.log_prob(samples, x=x_o).shape == (200,)
    xs = torch.tensor([[0.5, -0.3, 1.0], [0.0, 2.0, -1.0]])
    batched = posterior.sample_batched((100,), x=xs, show_progress_bars=False)
    assert batched.shape == (100, 2, 3)
    assert posterior.log_prob_batched(batched, x=xs).shape == (100, 2)
    mode = posterior.set_default_x(x_o).map(num_iter=100, num_init_samples=100, show_progress_bars=False)
    assert mode.shape == (1, 3)
    assert torch.linalg.vector_norm(mode[0] - x_o[0] / (1 + NOISE**2)) < 0.3  # the closed-form mode


def test_npe_estimator_and_posterior_survive_torch_save(npe):
    inference, estimator, posterior = npe
    x_o, theta = torch.tensor([[0.5, -0.3, 1.0]]), torch.randn(10, 3)
    buffer = io.BytesIO()
    torch.save(posterior, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False).log_prob(theta, x=x_o),
                               posterior.log_prob(theta, x=x_o))
    buffer = io.BytesIO()
    torch.save(estimator, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded.log_prob(theta, x_o), estimator.log_prob(theta, x_o))
    buffer = io.BytesIO()
    torch.save(estimator.state_dict(), buffer)
    buffer.seek(0)
    fresh = functools.partial(fs.build_maf, hidden_features=32, num_transforms=3, seed=1)(*_gaussian_linear(50, 9))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))   # z-scoring buffers included
    torch.testing.assert_close(fresh.log_prob(theta, x_o), estimator.log_prob(theta, x_o))


def test_sequential_npe_with_the_atomic_loss_sharpens_the_posterior():
    # two rounds of 500 simulations: round 2 draws from round 1's posterior at x_o and sbi trains with
    # NPE-C's atomic loss, which scores every theta against other atoms' x. Measured (3 seeds, 2000
    # draws): KL(p || q) 0.44-0.58 after round 1, 0.015-0.055 after round 2
    x_o = torch.tensor([0.5, -0.3, 1.0])
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    torch.manual_seed(0)
    build = functools.partial(fs.build_maf, hidden_features=32, num_transforms=3, seed=0)
    inference = NPE(prior, density_estimator=build, show_progress_bars=False)
    proposal, kls = prior, []
    for _ in range(2):
        theta = proposal.sample((500,))
        x = theta + NOISE * torch.randn_like(theta)
        with contextlib.redirect_stdout(io.StringIO()):
            inference.append_simulations(theta, x, proposal=proposal).train(max_num_epochs=30,
                                                                              training_batch_size=100)
        proposal = inference.build_posterior().set_default_x(x_o[None])
        kls.append(_kl_true_to(proposal, x_o))
    assert kls[1] < 0.15 and kls[1] < kls[0] / 3, kls


def test_an_embedding_net_trains_and_summarises_a_high_dimensional_condition():
    # x: 20 noisy copies of theta, (20, 3); a linear summary to 3 numbers can learn the mean, a frozen one cannot
    generator = torch.Generator().manual_seed(1)
    theta = torch.randn(1000, 3, generator=generator)
    x = theta[:, None, :] + torch.randn(1000, 20, 3, generator=generator)
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    losses = {}
    for frozen in (False, True):
        torch.manual_seed(0)
        summary = nn.Sequential(nn.Flatten(), nn.Linear(60, 3))
        before = summary[1].weight.detach().clone()
        summary.requires_grad_(not frozen)
        build = functools.partial(fs.build_maf, hidden_features=32, num_transforms=2, embedding_net=summary, seed=0)
        inference = NPE(prior, density_estimator=build, show_progress_bars=False)
        inference.append_simulations(theta, x).train(max_num_epochs=25, training_batch_size=100)
        losses[frozen] = inference.summary["best_validation_loss"][-1]
        assert torch.equal(summary[1].weight, before) == frozen
    # measured (5 seeds of data and weights): best validation loss 0.81 to 2.10 nats trained, 3.33 to 3.76 frozen
    assert losses[False] < losses[True] - 0.5


def test_nle_learns_the_likelihood():
    generator = torch.Generator().manual_seed(2)
    theta = torch.randn(1000, 2, generator=generator)
    mix = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # x = (t1, t2, t1 + t2) + noise: 3-wide x, 2-wide theta
    x = theta @ mix + NOISE * torch.randn(1000, 3, generator=generator)
    prior = MultivariateNormal(torch.zeros(2), torch.eye(2))
    build = fs.likelihood(fs.build_maf, hidden_features=32, num_transforms=2, seed=0)
    torch.manual_seed(0)
    inference = NLE(prior, density_estimator=build, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=30, training_batch_size=100)
    assert estimator.input_shape == (3,) and estimator.condition_shape == (2,)  # q(x | theta)
    test_theta = torch.randn(2000, 2)
    test_x = test_theta @ mix + NOISE * torch.randn(2000, 3)
    true = MultivariateNormal(test_theta @ mix, NOISE**2 * torch.eye(3))
    gap = float((true.log_prob(test_x) - estimator.log_prob(test_x, test_theta)[0]).mean().detach())
    assert gap < 0.3  # E_theta KL(p(x | theta) || q(x | theta)); measured 0.07 to 0.18 nats over 5 seeds
    posterior = inference.build_posterior(sample_with="rejection")
    assert posterior.sample((50,), x=test_x[:1], show_progress_bars=False).shape == (50, 2)


def _choices_and_times(theta):
    """Reaction times ~ InverseGamma(3, beta), choices ~ Bernoulli(p): x = (time, choice), theta = (beta, p)."""
    beta, p = theta[:, :1], theta[:, 1:]
    return torch.cat([InverseGamma(torch.full_like(beta, 3.0), beta).sample(), Bernoulli(p).sample()], 1)


def _log_likelihood(x, theta):
    beta, p = theta[..., :1], theta[..., 1:]
    return (InverseGamma(torch.full_like(beta, 3.0), beta).log_prob(x[..., :1]) + Bernoulli(p).log_prob(x[..., 1:])
            ).sum(-1)


def test_mnle_with_a_mixed_made_end_to_end():
    prior = MultipleIndependent([Gamma(torch.tensor([2.0]), torch.tensor([2.0])),
                                 Beta(torch.tensor([2.0]), torch.tensor([2.0]))], validate_args=False)
    torch.manual_seed(3)
    theta = prior.sample((1000,))
    x = _choices_and_times(theta)
    build = fs.likelihood(fs.build_mnle, hidden_features=32, log_transform_x=True, seed=0)
    inference = MNLE(prior, density_estimator=build, show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=30, training_batch_size=100)
    assert isinstance(estimator, MixedDensityEstimator) and isinstance(estimator, fs.MixedFlowkitEstimator)
    draws = estimator.sample((4,), theta[:3])
    assert draws.shape == (4, 3, 2) and (draws[..., 0] > 0).all() and set(draws[..., 1].unique().tolist()) <= {0, 1}
    test_theta = prior.sample((2000,))
    test_x = _choices_and_times(test_theta)
    gap = float((_log_likelihood(test_x, test_theta) - estimator.log_prob(test_x, test_theta)[0]).mean().detach())
    assert gap < 0.15  # measured 0.064 to 0.072 nats over 5 seeds
    x_o = _choices_and_times(torch.tensor([[1.0, 0.7]]).expand(10, 2))  # 10 iid trials
    mcmc = MCMCPosteriorParameters(method="slice_np_vectorized", num_chains=2, warmup_steps=5, thin=1)
    posterior = inference.build_posterior(posterior_parameters=mcmc)
    assert posterior.sample((10,), x=x_o, show_progress_bars=False).shape == (10, 2)


def test_mnle_layout_and_errors():
    theta = torch.rand(100, 2)
    x = torch.cat([torch.rand(100, 1) + 0.1, torch.randint(0, 3, (100, 1)).float(), torch.bernoulli(theta[:, 1:])], 1)
    estimator = fs.build_mnle(x, theta, hidden_features=16, seed=0)
    head = estimator.net.base.head
    assert [type(head.groups[k]).__name__ for k in head.kinds] == ["GaussianMixture", "Categorical", "Categorical"]
    assert estimator.net.base.made.orders[0].tolist() == [1, 2, 0]  # the discrete columns first
    draws, log_q = estimator.sample_and_log_prob((5,), theta[:2])
    assert draws.shape == (5, 2, 3) and set(draws[..., 1].unique().tolist()) <= {0, 1, 2}
    torch.testing.assert_close(log_q, estimator.log_prob(draws, theta[:2]), atol=1e-4, rtol=1e-4)
    with pytest.raises(flowkit.FlowkitValueError, match="discrete"):
        fs.build_mnle(torch.rand(100, 2), theta)
    with pytest.raises(flowkit.FlowkitValueError, match="positive"):
        fs.build_mnle(x - 1, theta, num_categories_per_variable=[3, 2], log_transform_x=True)


def test_mnpe_takes_build_mnle_as_it_is():
    generator = torch.Generator().manual_seed(4)
    theta = torch.cat([torch.randn(500, 1, generator=generator), torch.randint(0, 2, (500, 1), generator=generator)], 1)
    x = theta + 0.3 * torch.randn(500, 2, generator=generator)   # a continuous and a discrete parameter
    build = functools.partial(fs.build_mnle, hidden_features=16, seed=0)
    torch.manual_seed(0)
    inference = MNPE(density_estimator=build, show_progress_bars=False)
    inference.append_simulations(theta, x).train(max_num_epochs=3)
    samples = inference.build_posterior().sample((20,), x=x[:1], show_progress_bars=False)
    assert samples.shape == (20, 2) and set(samples[:, 1].tolist()) <= {0.0, 1.0}
