"""flowkit's sbi builders against sbi's own estimators, trained by sbi on the same simulations and seeds.

Three tasks, each estimator trained by sbi's trainer with its defaults (Adam at 5e-4, minibatches of
200, early stopping after 20 epochs without improvement on a 10 % validation split):

* Gaussian-linear (NPE): theta ~ N(0, I_3), x = theta + 0.5 eps; the posterior is
  N(x / 1.25, 0.2 I), so each fit gets KL(p || q) (2000 draws of p) and C2ST (sbi's random-forest
  c2st, 1000 draws each) at three observations.
* Two moons (NPE): the standard simulator (theta ~ U(-1, 1)^2, a crescent of radius 0.1 +- 0.01
  shifted by theta); no closed-form posterior, so it reports held-out log q(theta | x).
* Choices and reaction times (MNLE, as in sbi's MNLE tutorial): beta ~ Gamma(2, 2), p ~ Beta(2, 2),
  time ~ InverseGamma(3, beta), choice ~ Bernoulli(p); the likelihood is closed-form, so it reports
  the held-out gap E[log p(x | theta) - log q(x | theta)] (a KL, >= 0).

Every fit reports training time, epochs, held-out log-probability (2000 fresh pairs) and the time to
draw 100k posterior samples at one observation (NPE: ``posterior.sample``, which rejects draws outside
the prior; MNLE: 100k draws of x from the likelihood estimator, since its posterior needs MCMC), the
median of three calls. Scores are reported as means over the seeds, timings as medians.
Writes ``experiments/results/sbi_benchmark.json`` and ``.md``. The default run took 36 minutes of
wall time on our shared 2-core machine while three trainings ran beside it (one torch thread).

    python experiments/sbi_benchmark.py             # 6 seeds, 2000 simulations a task: 36 min
    python experiments/sbi_benchmark.py --seeds 1   # a sixth of it
    python experiments/sbi_benchmark.py --quick     # a smoke run, seconds
    python experiments/sbi_benchmark.py --report    # only rewrite the .md from the .json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import statistics
import sys  # noqa: E402
import tempfile
import time
import warnings
from pathlib import Path

import torch
from sbi.inference import MNLE, NPE
from sbi.neural_nets import likelihood_nn
from sbi.utils import BoxUniform, MultipleIndependent
from sbi.utils.metrics import c2st
from torch.distributions import Bernoulli, Beta, Gamma, InverseGamma, MultivariateNormal

import flowkit.sbi as fs
from flowkit.atomic import read_json, write_json, write_text

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

NOISE = 0.5
OBSERVATIONS = [[0.5, -0.3, 1.0], [0.0, 0.0, 0.0], [-1.5, 1.0, 0.2]]


def gaussian_linear():
    prior = MultivariateNormal(torch.zeros(3), torch.eye(3))
    return prior, lambda theta: theta + NOISE * torch.randn_like(theta)


def true_posterior(x_o):
    return MultivariateNormal(x_o / (1 + NOISE**2), NOISE**2 / (1 + NOISE**2) * torch.eye(3))


def two_moons():
    """The two-moons simulator of Greenberg et al. (2019), as in sbibm."""
    def simulate(theta):
        a = (torch.rand(len(theta)) - 0.5) * math.pi
        r = 0.1 + 0.01 * torch.randn(len(theta))
        crescent = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], 1)
        shift = torch.stack([-(theta[:, 0] + theta[:, 1]).abs(), theta[:, 1] - theta[:, 0]], 1) / math.sqrt(2)
        return crescent + shift
    return BoxUniform(-torch.ones(2), torch.ones(2)), simulate


def choices_and_times():
    prior = MultipleIndependent([Gamma(torch.tensor([2.0]), torch.tensor([2.0])),
                                 Beta(torch.tensor([2.0]), torch.tensor([2.0]))], validate_args=False)

    def simulate(theta):
        beta, p = theta[:, :1], theta[:, 1:]
        return torch.cat([InverseGamma(torch.full_like(beta, 3.0), beta).sample(), Bernoulli(p).sample()], 1)
    return prior, simulate


def log_likelihood(x, theta):
    beta, p = theta[:, :1], theta[:, 1:]
    return (InverseGamma(torch.full_like(beta, 3.0), beta).log_prob(x[:, :1]) + Bernoulli(p).log_prob(x[:, 1:])).sum(1)


def npe_estimators(seed):
    return {
        "flowkit build_maf (affine)": functools.partial(fs.build_maf, seed=seed),
        "flowkit build_maf (spline)": functools.partial(fs.build_maf, transformer="spline", seed=seed),
        "flowkit build_made (MADE MoG)": functools.partial(fs.build_made, seed=seed),
        "sbi maf": "maf",
        "sbi nsf": "nsf",
    }


def mnle_estimators(seed):
    return {
        "flowkit build_mnle (MixedMADE)": fs.likelihood(fs.build_mnle, log_transform_x=True, seed=seed),
        "sbi mnle": likelihood_nn("mnle", log_transform_x=True),
    }


def train(trainer, prior, build, theta, x, seed, max_epochs):
    torch.manual_seed(seed)
    with (contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), tempfile.TemporaryDirectory() as logs,
          contextlib.chdir(logs)):  # sbi's trainers open their tensorboard logs in ./sbi-logs
        warnings.simplefilter("ignore")
        inference = trainer(prior, density_estimator=build, show_progress_bars=False)
        start = time.perf_counter()
        estimator = inference.append_simulations(theta, x).train(max_num_epochs=max_epochs)
    return inference, estimator, time.perf_counter() - start


def timed(function, repeats=3):
    """The value of ``function()`` and the median of ``repeats`` timings of it (seconds)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        seconds.append(time.perf_counter() - start)
    return value, statistics.median(seconds)


def npe_scores(task, inference, estimator, test, x_o, draws):
    posterior = inference.build_posterior()
    theta, x = test
    scores = {"held_out_log_prob": float(estimator.log_prob(theta[None], x).mean().detach())}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, scores["sample_seconds"] = timed(lambda: posterior.sample((draws,), x=x_o[:1], show_progress_bars=False))
        if task == "gaussian_linear":
            kls, accuracies = [], []
            for observation in x_o:
                true = true_posterior(observation)
                exact = true.sample((2000,))
                kls.append(float((true.log_prob(exact) - posterior.log_prob(exact, x=observation[None])).mean()))
                fitted = posterior.sample((1000,), x=observation[None], show_progress_bars=False)
                accuracies.append(float(c2st(fitted, exact[:1000], seed=0)))
            scores["kl"], scores["c2st"] = statistics.mean(kls), statistics.mean(accuracies)
    return scores


def mnle_scores(estimator, test, draws):
    theta, x = test
    with torch.no_grad():
        log_q = estimator.log_prob(x[None], theta)[0]
        _, seconds = timed(lambda: estimator.sample((draws,), theta[:1]))
    gap = float((log_likelihood(x, theta) - log_q).mean())
    return {"held_out_log_prob": float(log_q.mean()), "likelihood_gap": gap, "sample_seconds": seconds}


def run_task(task, args, results):
    make, trainer, estimators = {"gaussian_linear": (gaussian_linear, NPE, npe_estimators),
                                 "two_moons": (two_moons, NPE, npe_estimators),
                                 "choices_and_times": (choices_and_times, MNLE, mnle_estimators)}[task]
    prior, simulate = make()
    entry = results["tasks"].setdefault(task, {"simulations": args.simulations[task], "runs": {}})
    for seed in range(args.seeds):
        torch.manual_seed(1000 + seed)
        theta = prior.sample((args.simulations[task],))
        x = simulate(theta)
        test_theta = prior.sample((2000,))
        test = (test_theta, simulate(test_theta))
        x_o = torch.tensor(OBSERVATIONS) if task == "gaussian_linear" else test[1][:1]
        for name, build in estimators(seed).items():
            inference, estimator, seconds = train(trainer, prior, build, theta, x, seed, args.max_epochs)
            torch.manual_seed(seed)
            if trainer is NPE:
                scores = npe_scores(task, inference, estimator, test, x_o, args.draws)
            else:
                scores = mnle_scores(estimator, test, args.draws)
            scores |= {"train_seconds": seconds, "epochs": inference.summary["epochs_trained"][-1]}
            entry["runs"].setdefault(name, []).append(scores)
            print(f"{task} seed {seed} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()), flush=True)


COLUMNS = [("train_seconds", "train s", "{:.1f}"), ("epochs", "epochs", "{:.0f}"),
           ("epoch_seconds", "s / epoch", "{:.2f}"), ("held_out_log_prob", "held-out log q", "{:.3f}"),
           ("kl", "KL(p‖q)", "{:.4f}"), ("c2st", "C2ST", "{:.3f}"), ("likelihood_gap", "likelihood gap", "{:.4f}"),
           ("sample_seconds", "100k samples s", "{:.2f}")]
TIMINGS = ("train_seconds", "epoch_seconds", "sample_seconds")


def report(results) -> str:
    lines = ["# flowkit.sbi against sbi's estimators", "",
             f"`{results['command']}`: {results['seeds']} seed(s), one torch thread, sbi {results['sbi']}, "
             f"torch {results['torch']}. Scores are means over the seeds, timings medians (each sampling time "
             "the median of three calls); the JSON holds every run. sbi's trainer and "
             "defaults for everyone (batch 200, Adam 5e-4, early stopping after 20 epochs, at most "
             f"{results['max_epochs']} epochs); each estimator with its builder's defaults (hidden 50, "
             "5 layers, 10 bins for splines). Timings come from a shared 2-core machine and move between runs.", "",
             "Columns: *held-out log q*, the mean log-density of 2000 fresh pairs (NPE: log q(theta | x), MNLE: "
             "log q(x | theta)); *KL(p‖q)* (2000 draws of the closed-form posterior) and *C2ST* (sbi's c2st, a "
             "random forest on 1000 draws of each; 0.5: indistinguishable), means over three observations; "
             "*likelihood gap*, E[log p(x | theta) - log q(x | theta)] on the held-out pairs; *100k samples s*, "
             "`posterior.sample` of 100k draws at one observation (MNLE: 100k draws of x from the likelihood "
             "estimator).", ""]
    for task, entry in results["tasks"].items():
        shown = [c for c in COLUMNS if c[0] == "epoch_seconds" or any(c[0] in run for runs in entry["runs"].values()
                                                                      for run in runs)]
        rows = []
        for name, runs in entry["runs"].items():
            runs = [run | {"epoch_seconds": run["train_seconds"] / run["epochs"]} for run in runs]
            rows.append([name, *(c[2].format((statistics.median if c[0] in TIMINGS else statistics.mean)(
                run[c[0]] for run in runs)) for c in shown)])
        lines += [f"## {task.replace('_', ' ')} ({entry['simulations']} simulations)", "",
                  markdown_table(["estimator", *(c[1] for c in shown)], rows), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="tiny runs, to check that the script works")
    parser.add_argument("--tasks", nargs="+", default=["gaussian_linear", "two_moons", "choices_and_times"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--report", action="store_true", help="only rewrite the .md from the .json in --out")
    args = parser.parse_args()
    out = Path(args.out)
    if args.report:
        write_text(out / "sbi_benchmark.md", report(read_json(out / "sbi_benchmark.json", "the benchmark's results")))
        return
    torch.set_num_threads(1)
    args.simulations = {"gaussian_linear": 2000, "two_moons": 2000, "choices_and_times": 2000}
    args.draws = 100_000
    if args.quick:
        args.simulations = dict.fromkeys(args.simulations, 300)
        args.seeds, args.max_epochs, args.draws = 1, 3, 1000
    import sbi

    command = "python experiments/sbi_benchmark.py" + (" --quick" if args.quick else "")
    results = {"command": command, "seeds": args.seeds, "max_epochs": args.max_epochs, "sbi": sbi.__version__,
               "torch": torch.__version__, "posterior_draws": args.draws, "tasks": {}}
    for task in args.tasks:
        run_task(task, args, results)
    write_json(out / "sbi_benchmark.json", results)
    write_text(out / "sbi_benchmark.md", report(results))


if __name__ == "__main__":
    main()
