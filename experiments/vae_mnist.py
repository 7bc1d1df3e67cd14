"""A VAE on binarized MNIST with a diagonal-Gaussian posterior and with an IAF posterior.

Kingma et al. (2016) report that IAF posteriors tighten the variational bound of a VAE on MNIST
(their Table 1, with a convolutional ResNet VAE). Here the encoder and decoder are the same MLP for
both posteriors, so only q(z | x) differs:

- encoder x (784) -> 2 ELU layers of ``--hidden`` units -> h; decoder z -> 2 ELU layers -> 784
  Bernoulli logits; prior N(0, I) over ``--latent`` dimensions;
- diagonal posterior: ``flowkit.vi.amortized_iaf(latent, 0, context_features=hidden)``, N(mu(h), sigma(h)^2);
- IAF posterior: the same Gaussian followed by ``--iaf-steps`` affine IAF steps, each a MADE with
  ``--iaf-hidden`` units that sees z and h, order reversed between steps.

Both are trained the same way: Adam on the single-sample ELBO (``flowkit.vi.elbo``) through
``flowkit.train.fit`` (early stopping on the validation ELBO), the same seed and minibatches. On the
test set each example gets ``--k`` posterior draws; the ELBO is the mean of their log-weights and
the importance-weighted bound (Burda et al., 2016) their log-mean-exp, the usual estimate of
log p(x). Binarization: each pixel drawn once as Bernoulli(intensity), seed 0 (not the fixed
binarization of Salakhutdinov & Murray, 2008).

Writes experiments/results/vae_mnist.json and vae_mnist.md.

    python experiments/vae_mnist.py --threads 1          # the run quoted in RESULTS.md (~45 min)
    python experiments/vae_mnist.py --epochs 1000 --patience 30 --k 5000    # a full run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flowkit
from flowkit.atomic import write_json, write_text  # noqa: E402
from flowkit.data import binarized_mnist
from flowkit.train import fit
from flowkit.vi import amortized_iaf, elbo, log_weights

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

warnings.filterwarnings("ignore", category=flowkit.ConnectivityWarning)
RESULTS = Path(__file__).resolve().parent / "results"


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ELU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """A Bernoulli-decoder VAE whose posterior is a flowkit flow conditioned on the encoder's output.

    ``log_prob`` is the single-sample ELBO (a lower bound on log p(x)), so that
    :func:`flowkit.train.fit` maximises it.
    """

    def __init__(self, latent: int, hidden: int, iaf_steps: int, iaf_hidden: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.latent = latent
        self.encoder = nn.Sequential(mlp([784, hidden, hidden]), nn.ELU())
        self.decoder = mlp([latent, hidden, hidden, 784])
        options = {"hidden_features": [iaf_hidden, iaf_hidden]} if iaf_steps else {}
        self.posterior = amortized_iaf(latent, iaf_steps, context_features=hidden, seed=seed, **options)

    def log_joint(self, x: Tensor):
        """``z -> log p(z) + log p(x | z)`` for a batch ``x`` of shape ``(B, 784)``; ``z: (K, B, latent)``."""
        def log_p(z: Tensor) -> Tensor:
            logits = self.decoder(z)
            log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
            return log_lik - 0.5 * (z.pow(2).sum(-1) + self.latent * math.log(2 * math.pi))
        return log_p

    def log_prob(self, x: Tensor) -> Tensor:
        return elbo(self.log_joint(x), self.posterior, 1, context=self.encoder(x))


@torch.no_grad()
def bounds(model: VAE, data: Tensor, k: int, batch: int = 100, chunk: int = 100) -> tuple[Tensor, Tensor]:
    """Per-example ELBO (the mean log-weight over ``k`` draws) and IWAE_k over ``data``."""
    model.eval()
    elbos, iwaes = [], []
    for x in data.split(batch):
        h = model.encoder(x)
        w = log_weights(model.log_joint(x), model.posterior, k, context=h, chunk=chunk)
        elbos.append(w.mean(0))
        iwaes.append(torch.logsumexp(w, 0) - math.log(k))
    return torch.cat(elbos), torch.cat(iwaes)


def mean_se(values: Tensor) -> tuple[float, float]:
    """The mean and its standard error."""
    return values.mean().item(), (values.std() / math.sqrt(len(values))).item()


def active_units(model: VAE, data: Tensor, threshold: float = 1e-2) -> int:
    """Latent dimensions whose posterior mean varies across the data (Burda et al., 2016): Cov_x E_q[z] > threshold."""
    with torch.no_grad():
        means = torch.cat([model.posterior.sample(50, model.encoder(x)).mean(0) for x in data.split(500)])
    return int((means.var(0) > threshold).sum())


def table(rows: list[dict], latent: int) -> str:
    """The table of ``vae_mnist.md``: one row per posterior."""
    return markdown_table(
        ["posterior", "test ELBO", "test IWAE (K)", "IWAE - ELBO", "active units", "epochs (best)", "train s"],
        [[r["posterior"], f"{r['elbo']:.2f} ± {r['elbo_se']:.2f}", f"{r['iwae']:.2f} ± {r['iwae_se']:.2f}",
          f"{r['gap']:.2f} ± {r['gap_se']:.2f}", f"{r['active_units']}/{latent}",
          f"{r['epochs_run']} ({r['best_epoch']})", f"{r['train_seconds']:.0f}"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--iaf-steps", type=int, default=2)
    parser.add_argument("--iaf-hidden", type=int, default=320)
    parser.add_argument("--k", type=int, default=1000, help="importance samples per test example")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    splits = binarized_mnist(seed=0)
    test = splits.test[: args.test_size]
    rows, per_example = [], []
    for name, steps in (("diagonal Gaussian", 0), (f"IAF ({args.iaf_steps} steps)", args.iaf_steps)):
        model = VAE(args.latent, args.hidden, steps, args.iaf_hidden, args.seed)
        start = time.perf_counter()
        history = fit(model, splits.train, splits.valid, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, patience=args.patience, seed=args.seed, lr_schedule="cosine", progress=False)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        e, i = bounds(model, test, args.k)
        per_example.append((e, i))
        (elbo_mean, elbo_se), (iwae_mean, iwae_se), (gap, gap_se) = mean_se(e), mean_se(i), mean_se(i - e)
        row = {"posterior": name, "iaf_steps": steps, "elbo": elbo_mean, "elbo_se": elbo_se,
               "iwae": iwae_mean, "iwae_se": iwae_se, "gap": gap, "gap_se": gap_se,
               "active_units": active_units(model, test),
               "parameters": sum(p.numel() for p in model.parameters()),
               "posterior_parameters": sum(p.numel() for p in model.posterior.parameters()),
               "epochs_run": len(history.train_nll), "best_epoch": history.best_epoch + 1,
               "valid_elbo": -history.best_valid_nll, "train_seconds": round(train_seconds, 1),
               "eval_seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    (ea, ia), (eb, ib) = per_example
    (de, de_se), (di, di_se) = mean_se(eb - ea), mean_se(ib - ia)
    paired = {"elbo": de, "elbo_se": de_se, "iwae": di, "iwae_se": di_se}
    args.out.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_json(args.out / "vae_mnist.json", {"config": config, "torch": torch.__version__,
                                             "threads": torch.get_num_threads(), "rows": rows,
                                             "iaf_minus_diagonal": paired})
    lines = [
        "# VAE on binarized MNIST: diagonal-Gaussian vs IAF posterior",
        "",
        f"`python experiments/vae_mnist.py` with epochs={args.epochs}, patience={args.patience}, "
        f"latent={args.latent}, hidden={args.hidden}, IAF {args.iaf_steps} steps x {args.iaf_hidden} units, "
        f"K={args.k} importance samples on {len(test)} test images; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Nats per image, higher is better; ± one standard error over test images.",
        "",
        table(rows, args.latent),
    ]
    lines += ["", f"IAF minus diagonal, paired over the same test images: ELBO {de:+.2f} ± {de_se:.2f} nats, "
              f"IWAE {di:+.2f} ± {di_se:.2f} nats."]
    write_text(args.out / "vae_mnist.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
