"""Exact sampling speed: flowkit's incremental engine against the plain D-pass loop, one forward
pass (the floor), and the equivalent samplers of nflows, zuko and Pyro, in one run.

Each figure is the median of several timed runs after a warm-up (9 for flowkit and for every
sampler of the small spline task, 3 for the slow D-pass samplers of the large tasks), with the
same sizes and the same number of threads. Writes ``experiments/results/bench_sampling.json`` and ``bench_sampling.md``.

    python experiments/bench_sampling.py              # about 5 minutes on 2 cores
    python experiments/bench_sampling.py --device cuda

nflows, zuko and pyro-ppl are benchmark-only dependencies (``pip install nflows zuko pyro-ppl``);
a peer that is not installed is reported as missing.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import flowkit
from flowkit.atomic import write_json, write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

warnings.filterwarnings("ignore", category=flowkit.ConnectivityWarning)


def median_seconds(fn, repeats: int, device: str) -> float:
    def run():
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run()  # warm-up: plans, caches, allocator
    return statistics.median(run() for _ in range(repeats))


def plain_loop(made, encode, step, x, context=None):
    """The peers' algorithm: one full network pass per feature."""
    for d in made.order.tolist():
        params = made(encode(x), context)[..., d, :]
        x[..., d] = step(d, params)
    return x


def bench_bernoulli(args, rows):
    D, n = 784, 100
    model = flowkit.BernoulliMADE(D, [500, 500], seed=0).to(args.device).eval()
    noise = model.head.noise((n, D), device=args.device)
    x0 = torch.zeros(n, D, device=args.device)
    with torch.no_grad():
        rows.append(("BernoulliMADE D=784, 2x500, 100 samples", {
            "flowkit engine": median_seconds(lambda: model.sample(n), args.repeats, args.device),
            "plain D-pass loop": median_seconds(
                lambda: plain_loop(model.made, model.head.encode,
                                   lambda d, p: model.head.draw(p, noise[:, d]), x0.clone()),
                max(3, args.repeats // 3), args.device),
            "one forward pass (floor)": median_seconds(lambda: model.log_prob(x0), args.repeats, args.device),
        }))


def peer_maf(features, layers, hidden, transformer, bins=8, bound=3.0):
    """The peers' MAF with the same sizes; None where a peer is not installed."""
    peers = {}
    try:
        import nflows.flows
        from nflows.distributions import StandardNormal
        from nflows.transforms import CompositeTransform, ReversePermutation
        from nflows.transforms.autoregressive import (
            MaskedAffineAutoregressiveTransform,
            MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        )

        steps = []
        for i in range(layers):
            if i:
                steps.append(ReversePermutation(features))
            if transformer == "affine":
                steps.append(MaskedAffineAutoregressiveTransform(features, hidden[0], num_blocks=len(hidden) - 1,
                                                                 use_residual_blocks=False))
            else:
                steps.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    features, hidden[0], num_bins=bins, tails="linear", tail_bound=bound,
                    num_blocks=len(hidden) - 1, use_residual_blocks=False))
        peers["nflows"] = nflows.flows.Flow(CompositeTransform(steps), StandardNormal([features]))
    except ImportError:
        peers["nflows"] = None
    try:
        import zuko

        cls = zuko.flows.MAF if transformer == "affine" else zuko.flows.NSF
        options = {} if transformer == "affine" else {"bins": bins}
        peers["zuko"] = cls(features, transforms=layers, hidden_features=hidden, **options)
    except ImportError:
        peers["zuko"] = None
    try:
        import pyro.distributions as dist
        import pyro.distributions.transforms as T
        from pyro.nn import AutoRegressiveNN

        transforms = []
        for i in range(layers):
            if i:
                transforms.append(T.Permute(torch.arange(features - 1, -1, -1)))
            if transformer == "affine":
                t = T.AffineAutoregressive(AutoRegressiveNN(features, hidden))
            else:
                t = T.SplineAutoregressive(features,
                                           AutoRegressiveNN(features, hidden, param_dims=[bins, bins, bins - 1, bins]),
                                           count_bins=bins, bound=bound, order="linear")
            transforms.append(t.inv)  # a MAF layer: sampling runs the sequential direction
        base = dist.Normal(torch.zeros(features), torch.ones(features)).to_event(1)
        peers["pyro"] = (dist.TransformedDistribution(base, transforms), torch.nn.ModuleList(
            [t._inv if hasattr(t, "_inv") else t for t in transforms]))
    except ImportError:
        peers["pyro"] = None
    return peers


def bench_maf(args, rows, name, features, layers, hidden, transformer, n=1000, peer_repeats=3):
    flow = flowkit.MAF(features, layers, hidden, transformer=transformer, bins=8 if transformer == "spline" else None,
                       seed=0).to(args.device).eval()
    x = torch.randn(n, features, device=args.device)
    layer = flow.transform.transforms[0]
    z = torch.randn(n, features, device=args.device)
    figures = {}
    with torch.no_grad():
        figures["flowkit engine"] = median_seconds(lambda: flow.sample(n), args.repeats, args.device)
        step = lambda d, p: layer.transformer.inverse(z[:, d], p)[0]  # noqa: E731
        one_layer = median_seconds(lambda: plain_loop(layer.made, lambda v: v, step, z.clone()),
                                   peer_repeats, args.device)
        figures["plain D-pass loop"] = one_layer * layers
        figures["one forward pass (floor)"] = median_seconds(lambda: flow.log_prob(x), args.repeats, args.device)
        for peer, model in peer_maf(features, layers, hidden, transformer).items():
            if model is None:
                figures[peer] = None
                continue
            if peer == "nflows":
                model = model.to(args.device)
                figures[peer] = median_seconds(lambda: model.sample(n), peer_repeats, args.device)
            elif peer == "zuko":
                model = model.to(args.device)
                figures[peer] = median_seconds(lambda: model().sample((n,)), peer_repeats, args.device)
            else:
                distribution, modules = model
                if args.device != "cpu":
                    figures[peer] = None  # the Pyro base above is built on the CPU
                    continue
                figures[peer] = median_seconds(lambda: distribution.sample((n,)), peer_repeats, args.device)
    rows.append((name, figures))


def table(rows: list) -> str:
    """The table of ``bench_sampling.md``: per task and sampler, the median time and its ratio to the engine's."""
    cells = [[name, sampler, "not installed", ""] if seconds is None else
             [name, sampler, f"{seconds * 1e3:.1f} ms", f"{seconds / figures['flowkit engine']:.1f}x"]
             for name, figures in rows for sampler, seconds in figures.items()]
    return markdown_table(["task", "sampler", "median time", "ratio to the flowkit engine"], cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows: list = []
    bench_bernoulli(args, rows)
    bench_maf(args, rows, "MAF D=63, 5 affine layers, 2x512, 1000 samples", 63, 5, [512, 512], "affine")
    bench_maf(args, rows, "spline MAF D=8, 5 layers, 2x100, 8 bins, 1000 samples", 8, 5, [100, 100], "spline",
              peer_repeats=args.repeats)  # cheap: as many repeats as flowkit's

    machine = (torch.cuda.get_device_name() if args.device == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads") + f", torch {torch.__version__}"
    lines = [f"Sampling, median seconds (ratio = other / flowkit engine); {machine}.", "", table(rows)]
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    command = "python experiments/bench_sampling.py" + ("" if args.device == "cpu" else f" --device {args.device}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"bench_sampling{suffix}.json",
               {"command": command, "machine": machine, "rows": [{"task": n, "seconds": f} for n, f in rows]})
    text = "\n".join(lines) + f"\n\nCommand: `{command}`.\n"
    write_text(out / f"bench_sampling{suffix}.md", text)
    print(text)


if __name__ == "__main__":
    main()
