"""The two walkthroughs of the documentation, end to end: the numbers and figures that
docs/walkthrough-shapes.md and docs/walkthrough-mnist.md show.

``shapes``: a MADE with 2 hidden layers of 512 units on 20x20 binary images of geometric shapes
(:func:`flowkit.data.shapes`), 20 epochs; figures of the data, samples and learning curves.

``mnist``: a MADE with one hidden layer of 500 units and the direct connection on binarized MNIST
(:func:`flowkit.data.binarized_mnist`, each pixel drawn once as Bernoulli(intensity) with seed 0, not
the fixed binarization of the MADE paper), a few epochs; the autoregressive property verified by
autograd twice (:func:`flowkit.check_autoregressive` and a direct Jacobian of the 784 logits with
respect to the 784 pixels), completions of hidden bottom halves, samples and learning curves.

    python experiments/walkthroughs.py shapes --threads 1
    python experiments/walkthroughs.py mnist --threads 1 --epochs 10

Figures go to ``--out`` (default ``docs/figures``), numbers to ``walkthrough-<name>.json`` there;
every line the pages quote is printed.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import torch

import flowkit
from flowkit.atomic import write_json
from flowkit.data import SHAPE_KINDS, binarized_mnist, bits_per_dim, draw_shapes, shapes
from flowkit.plot import save_completions, save_curves, save_image_grid
from flowkit.train import evaluate, fit

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def machine(threads: int) -> str:
    return f"{platform.machine()}, {threads} thread(s), torch {torch.__version__}"


def run_shapes(args: argparse.Namespace, out: Path) -> dict:
    began = time.perf_counter()
    train, valid, test = shapes(args.train, args.valid, args.test, seed=0)
    print(f"shapes: train {tuple(train.shape)}, valid {tuple(valid.shape)}, test {tuple(test.shape)}, "
          f"mean pixel {train.mean():.3f}")
    examples, labels = draw_shapes(len(SHAPE_KINDS) * 10, seed=1)
    order = labels.argsort(stable=True)
    save_image_grid(examples[order], out / "shapes-data.png", (20, 20), columns=10,
                    title="training-style images, sorted by kind: " + ", ".join(SHAPE_KINDS))

    torch.manual_seed(0)
    model = flowkit.BernoulliMADE(400, args.hidden, seed=0)
    before, _ = evaluate(model, test)
    fitted = time.perf_counter()
    history = fit(model, train, valid, epochs=args.epochs, patience=args.epochs, batch_size=128, lr=1e-3, seed=0)
    seconds = time.perf_counter() - fitted
    nll, se = evaluate(model, test)
    print(f"MADE {'x'.join(map(str, args.hidden))} on shapes: {len(history.train_nll)} epochs in {seconds:.1f} s "
          f"(best epoch {history.best_epoch + 1})")
    print(f"test NLL before training {before:.2f} nats; after {nll:.2f} ± {se:.2f} nats "
          f"({bits_per_dim(nll, 400):.4f} bits/pixel)")
    save_curves(history.train_nll, history.valid_nll, out / "shapes-curves.png", history.best_epoch)
    samples = model.sample(100, generator=torch.Generator().manual_seed(0))
    save_image_grid(samples, out / "shapes-samples.png", (20, 20), columns=10, title="100 samples of the MADE")
    result = dict(command=f"python experiments/walkthroughs.py shapes --threads {args.threads}",
                  machine=machine(args.threads), hidden=args.hidden, epochs=len(history.train_nll),
                  best_epoch=history.best_epoch + 1, train_nll=history.train_nll, valid_nll=history.valid_nll,
                  test_nll_before=before, test_nll=nll, test_nll_se=se, fit_seconds=round(seconds, 1),
                  total_seconds=round(time.perf_counter() - began, 1))
    write_json(out / "walkthrough-shapes.json", result)
    return result


def jacobian_check(model: flowkit.BernoulliMADE, x: torch.Tensor) -> dict:
    """The Jacobian of the 784 logits with respect to the 784 pixels at one image, by autograd:
    entry ``[d, j]`` may be non-zero only where pixel ``j`` comes before pixel ``d`` in the order."""
    made = model.made

    def logits(pixels: torch.Tensor) -> torch.Tensor:
        return made(pixels[None])[0, :, 0]

    jacobian = torch.autograd.functional.jacobian(logits, x, vectorize=True)
    position = torch.empty_like(made.order)
    position[made.order] = torch.arange(len(made.order))
    allowed = position[None, :] < position[:, None]  # [d, j]: j precedes d
    nonzero = jacobian != 0
    return dict(shape=list(jacobian.shape), largest_forbidden=float(jacobian[~allowed].abs().max()),
                nonzero_allowed=int((nonzero & allowed).sum()), allowed=int(allowed.sum()),
                violations=int((nonzero & ~allowed).sum()))


def run_mnist(args: argparse.Namespace, out: Path) -> dict:
    began = time.perf_counter()
    train, valid, test = binarized_mnist(seed=0)
    if args.train_subset:
        train = train[: args.train_subset]
    print(f"binarized MNIST: train {tuple(train.shape)}, valid {tuple(valid.shape)}, test {tuple(test.shape)}")
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", flowkit.ConnectivityWarning)
        model = flowkit.BernoulliMADE(784, args.hidden, direct=True, seed=0)
    for warning in caught:
        print(f"ConnectivityWarning: {warning.message}")
    fitted = time.perf_counter()
    history = fit(model, train, valid, epochs=args.epochs, patience=args.epochs, batch_size=100, lr=1e-3, seed=0)
    seconds = time.perf_counter() - fitted
    nll, se = evaluate(model, test)
    print(f"MADE {'x'.join(map(str, args.hidden))} (direct) on binarized MNIST: {len(history.train_nll)} epochs "
          f"in {seconds:.1f} s (best epoch {history.best_epoch + 1}, valid NLL {history.best_valid_nll:.2f})")
    print(f"test NLL {nll:.2f} ± {se:.2f} nats")

    checked = time.perf_counter()
    depends = flowkit.check_autoregressive(model)
    order_position = torch.empty_like(model.made.order)
    order_position[model.made.order] = torch.arange(784)
    allowed = order_position[None, :] < order_position[:, None]
    print(f"check_autoregressive: {int(depends.sum())} of {int(allowed.sum())} allowed dependencies observed, "
          f"none forbidden ({time.perf_counter() - checked:.1f} s)")
    checked = time.perf_counter()
    jacobian = jacobian_check(model, test[0])
    print(f"autograd Jacobian {tuple(jacobian['shape'])}: {jacobian['violations']} non-zero entries at or above "
          f"the diagonal (largest |entry| there {jacobian['largest_forbidden']:.1f}), {jacobian['nonzero_allowed']} "
          f"of {jacobian['allowed']} below it non-zero ({time.perf_counter() - checked:.1f} s)")

    observed = torch.zeros(8, 784, dtype=torch.bool)
    observed[:, : 14 * 28] = True  # the top 14 rows; the bottom halves are hidden
    originals = test[:8]
    generator = torch.Generator().manual_seed(0)
    completions = torch.stack([model.complete(originals, observed, generator=generator) for _ in range(5)], 1)
    assert torch.equal(completions[:, :, : 14 * 28], originals[:, None, : 14 * 28].expand(-1, 5, -1))
    save_completions(originals, observed, completions, out / "mnist-completions.png", (28, 28))
    samples = model.sample(100, generator=torch.Generator().manual_seed(0))
    save_image_grid(samples, out / "mnist-samples.png", (28, 28), columns=10, title="100 samples of the MADE")
    save_curves(history.train_nll, history.valid_nll, out / "mnist-curves.png", history.best_epoch)
    result = dict(command=f"python experiments/walkthroughs.py mnist --threads {args.threads} --epochs {args.epochs}",
                  machine=machine(args.threads), hidden=args.hidden, epochs=len(history.train_nll),
                  best_epoch=history.best_epoch + 1, train_nll=history.train_nll, valid_nll=history.valid_nll,
                  test_nll=nll, test_nll_se=se, fit_seconds=round(seconds, 1),
                  dependencies_observed=int(depends.sum()), dependencies_allowed=int(allowed.sum()),
                  jacobian=jacobian, total_seconds=round(time.perf_counter() - began, 1))
    write_json(out / "walkthrough-mnist.json", result)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("walkthrough", choices=["shapes", "mnist"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="default: 20 (shapes), 10 (mnist)")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="default: 512 512 (shapes), 500 (mnist)")
    parser.add_argument("--train", type=int, default=50000, help="shapes: training images")
    parser.add_argument("--valid", type=int, default=2000, help="shapes: validation images")
    parser.add_argument("--test", type=int, default=2000, help="shapes: test images")
    parser.add_argument("--train-subset", type=int, default=None, help="mnist: the first N training images only")
    parser.add_argument("--out", default=str(FIGURES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.walkthrough == "shapes":
        args.epochs, args.hidden = args.epochs or 20, args.hidden or [512, 512]
        return run_shapes(args, out)
    args.epochs, args.hidden = args.epochs or 10, args.hidden or [500]
    return run_mnist(args, out)


if __name__ == "__main__":
    main()
