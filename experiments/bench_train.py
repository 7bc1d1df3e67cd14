"""Training speed: one optimiser step (``-log_prob(x).mean()``, backward, Adam) and one evaluation of
``log_prob`` under ``no_grad``, for flowkit and the equivalent models of nflows, zuko, normflows and
Pyro, in one run.

Four cases, each with the same architecture, batch, dtype (float32) and threads for every
implementation:

1. a Bernoulli MADE, D = 784, hidden [500, 500], batch 100 (the MADE paper's MNIST model);
2. an affine MAF, D = 63, 5 layers of MADE [512, 512], reverse permutations, standard normal base,
   batch 512;
3. a rational-quadratic spline MAF, D = 6 (POWER-like), 5 layers of MADE [100, 100], 8 bins, batch 512;
4. a small affine MAF, D = 5, 5 layers of MADE [50, 50], batch 64: the size of a posterior estimator in
   simulation-based inference, where a step is a few milliseconds and the Python work around the
   arithmetic (module calls, checks, kept masked weights) is a large part of it.

flowkit is measured three times: as shipped, with the value checks off
(:func:`flowkit.validation.validate`), which shows what validation costs per step, and trained by
Adam with torch's fused kernel (``fused=True``), the optimiser :func:`flowkit.fit` builds where torch
has one; every other row, flowkit's first included, uses ``torch.optim.Adam``'s default (``foreach``),
which is what the peers' examples use (each of them could pass ``fused=True`` too).

The implementations are timed **interleaved**: every repeat times each of them once, round robin
(starting one further along each repeat), so that load on a shared machine falls on all alike. A
timed block runs as many steps as fill about ``--block`` seconds (fixed after the warm-up, per
implementation); each figure is the median over the repeats of the time per step. The ratio is
peer / flowkit: above 1 means flowkit is faster. Writes ``experiments/results/bench_train.json``
and ``bench_train.md``.

    python experiments/bench_train.py                 # about 4 minutes on 2 cores
    python experiments/bench_train.py --quick         # seconds: a smoke test, not figures

nflows, zuko, normflows and pyro-ppl are benchmark-only dependencies; a peer that is not installed
is reported as not installed, and one that refuses an architecture as not fitting it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import flowkit
from flowkit.atomic import write_json, write_text  # noqa: E402
from flowkit.validation import validate

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

warnings.filterwarnings("ignore", category=flowkit.ConnectivityWarning)

FLOWKIT = "flowkit"
UNCHECKED = "flowkit, validation off"
FUSED = "flowkit, fused Adam (as fit)"
COMPILED = "flowkit, torch.compile"


class PlainMADE(nn.Module):
    """The 40-line baseline: ``nn.Linear`` weights times fixed mask buffers, natural order, hidden
    degrees drawn uniformly in ``1..D-1``, logits of Bernoulli conditionals."""

    def __init__(self, features: int, hidden: list[int], seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        degrees = [torch.arange(1, features + 1)]
        for width in hidden:
            degrees.append(torch.randint(1, features, (width,), generator=generator))
        degrees.append(torch.arange(1, features + 1))
        self.layers = nn.ModuleList()
        for i, (before, after) in enumerate(zip(degrees[:-1], degrees[1:])):
            last = i == len(hidden)
            # an output sees strictly earlier features; a hidden unit those up to its degree
            mask = after[:, None] > before[None] if last else after[:, None] >= before[None]
            layer = nn.Linear(len(before), len(after))
            layer.register_buffer("mask", mask.float())
            self.layers.append(layer)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            h = F.linear(h, layer.weight * layer.mask, layer.bias)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h

    def log_prob(self, x: Tensor) -> Tensor:
        return bernoulli_log_prob(self(x), x)


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def unchecked(log_prob: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        with validate(False):
            return log_prob(x)
    return run


def compiled(log_prob: Callable[[Tensor], Tensor], module: nn.Module):
    """``log_prob`` through ``torch.compile`` (compiled at the warm-up call, outside the timing);
    only with ``--compile``: compiling takes a minute or more per model on a CPU."""
    return torch.compile(log_prob), module


# Each builder returns (log_prob, module), or None where the peer is not installed; it is called
# twice, for a model that trains and for one that only evaluates (in eval mode).


def bernoulli_models(D: int, hidden: list[int]) -> dict[str, tuple[str, Callable]]:
    def flowkit_made(check: bool):
        model = flowkit.BernoulliMADE(D, hidden, seed=0)
        return (model.log_prob if check else unchecked(model.log_prob)), model

    def nflows_made():
        from nflows.transforms.made import MADE
        made = MADE(D, hidden[0], num_blocks=len(hidden) - 1, output_multiplier=1, use_residual_blocks=False)
        return (lambda x: bernoulli_log_prob(made(x), x)), made

    def pyro_made():
        from pyro.nn import AutoRegressiveNN
        made = AutoRegressiveNN(D, hidden, param_dims=[1], permutation=torch.arange(D))
        return (lambda x: bernoulli_log_prob(made(x), x)), made

    def zuko_made():
        from zuko.nn import MaskedMLP
        order = torch.arange(D)
        made = MaskedMLP(order[:, None] > order, hidden)  # output i sees the inputs before i
        return (lambda x: bernoulli_log_prob(made(x), x)), made

    def plain():
        made = PlainMADE(D, hidden)
        return made.log_prob, made

    return {
        FLOWKIT: ("flowkit.BernoulliMADE", lambda: flowkit_made(True)),
        UNCHECKED: ("flowkit.BernoulliMADE under flowkit.validation.validate(False)", lambda: flowkit_made(False)),
        FUSED: ("flowkit.BernoulliMADE, trained by torch.optim.Adam(fused=True)", lambda: flowkit_made(True)),
        **({COMPILED: ("torch.compile(flowkit.BernoulliMADE.log_prob), checks on",
                       lambda: compiled(*flowkit_made(True)))} if COMPILE else {}),
        "plain masked MLP": ("PlainMADE in this script (nn.Linear weight * mask buffer, BCE with logits)", plain),
        "nflows": ("nflows.transforms.made.MADE + BCE with logits", nflows_made),
        "pyro": ("pyro.nn.AutoRegressiveNN(param_dims=[1]) + BCE with logits", pyro_made),
        "zuko": ("zuko.nn.MaskedMLP(strictly lower-triangular adjacency) + BCE with logits", zuko_made),
    }


def maf_models(D: int, layers: int, hidden: list[int], transformer: str, bins: int = 8,
               bound: float = 3.0) -> dict[str, tuple[str, Callable]]:
    spline = transformer == "spline"

    def flowkit_maf(check: bool):
        flow = flowkit.MAF(D, layers, hidden, transformer=transformer, bins=bins if spline else None, seed=0)
        return (flow.log_prob if check else unchecked(flow.log_prob)), flow

    def nflows_maf():
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
                steps.append(ReversePermutation(D))
            options = dict(num_blocks=len(hidden) - 1, use_residual_blocks=False)
            steps.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                D, hidden[0], num_bins=bins, tails="linear", tail_bound=bound, **options) if spline
                else MaskedAffineAutoregressiveTransform(D, hidden[0], **options))
        flow = nflows.flows.Flow(CompositeTransform(steps), StandardNormal([D]))
        return flow.log_prob, flow

    def zuko_maf():
        import zuko
        flow = (zuko.flows.NSF(D, transforms=layers, hidden_features=hidden, bins=bins) if spline
                else zuko.flows.MAF(D, transforms=layers, hidden_features=hidden))
        return (lambda x: flow().log_prob(x)), flow

    def normflows_maf():
        import normflows as nf
        flows = []
        for i in range(layers):
            if i:
                reverse = nf.flows.Permute(D)
                reverse.perm = reverse.inv_perm = torch.arange(D - 1, -1, -1)
                flows.append(reverse)
            # normflows' forward is noise to data; Reverse makes the one-pass direction the density's
            flows.append(nf.flows.Reverse(nf.flows.MaskedAffineAutoregressive(
                D, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False)))
        flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(D, trainable=False), flows)
        return flow.log_prob, flow

    def pyro_maf():
        import pyro.distributions as dist
        import pyro.distributions.transforms as T
        from pyro.nn import AutoRegressiveNN
        transforms, modules = [], nn.ModuleList()
        for i in range(layers):
            if i:
                transforms.append(T.Permute(torch.arange(D - 1, -1, -1)))
            if spline:
                t = T.SplineAutoregressive(D, AutoRegressiveNN(D, hidden, param_dims=[bins, bins, bins - 1]),
                                           count_bins=bins, bound=bound, order="quadratic")
            else:
                t = T.AffineAutoregressive(AutoRegressiveNN(D, hidden))
            modules.append(t)
            transforms.append(t.inv)  # scoring data then runs Pyro's one-pass direction
        base = dist.Normal(torch.zeros(D), torch.ones(D)).to_event(1)
        distribution = dist.TransformedDistribution(base, transforms)
        # Pyro's transforms keep their last input and output and return them when handed the same tensor
        # object again; a fresh view each call stands for a fresh batch, so each call computes
        return (lambda x: distribution.log_prob(x.view(x.shape))), modules

    models = {
        FLOWKIT: (f"flowkit.MAF(transformer={transformer!r})", lambda: flowkit_maf(True)),
        UNCHECKED: (f"flowkit.MAF(transformer={transformer!r}) under flowkit.validation.validate(False)",
                    lambda: flowkit_maf(False)),
        FUSED: (f"flowkit.MAF(transformer={transformer!r}), trained by torch.optim.Adam(fused=True)",
                lambda: flowkit_maf(True)),
        **({COMPILED: (f"torch.compile(flowkit.MAF(transformer={transformer!r}).log_prob), checks on",
                       lambda: compiled(*flowkit_maf(True)))} if COMPILE else {}),
        "nflows": ("nflows Flow of " + ("MaskedPiecewiseRationalQuadraticAutoregressiveTransform" if spline
                                        else "MaskedAffineAutoregressiveTransform")
                   + " + ReversePermutation, StandardNormal", nflows_maf),
        "zuko": ("zuko.flows.NSF" if spline else "zuko.flows.MAF", zuko_maf),
    }
    if not spline:  # normflows' autoregressive spline always has residual blocks: another network
        models["normflows"] = ("normflows NormalizingFlow of Reverse(MaskedAffineAutoregressive) + Permute "
                               "(reversed), DiagGaussian(trainable=False)", normflows_maf)
    models["pyro"] = (("pyro SplineAutoregressive(order='quadratic')" if spline else "pyro AffineAutoregressive")
                      + "(AutoRegressiveNN).inv + Permute (reversed), Normal base", pyro_maf)
    return models


def trainer(log_prob: Callable[[Tensor], Tensor], module: nn.Module, x: Tensor,
            fused: bool = False) -> Callable[[], None]:
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4, **({"fused": True} if fused else {}))

    def step():
        optimizer.zero_grad()
        loss = -log_prob(x).mean()
        loss.backward()
        optimizer.step()
    return step


def evaluator(log_prob: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], None]:
    def run():
        with torch.no_grad():
            log_prob(x)
    return run


CLOCK = time.perf_counter  # --clock cpu: time.process_time, the CPU time of this process
COMPILE = False  # --compile: also time flowkit through torch.compile


def interleaved(tasks: dict[str, Callable[[], None]], repeats: int, block: float) -> dict[str, dict]:
    """Median seconds per call of each task, timed round robin so that noise falls on all alike."""
    calls = {}
    for name, fn in tasks.items():
        fn()  # warm-up: allocator, caches, lazily built modules
        fastest = float("inf")
        for _ in range(3):  # the fastest of three calls: a spike of load must not shrink the blocks
            start = CLOCK()
            fn()
            fastest = min(fastest, CLOCK() - start)
        calls[name] = max(1, round(block / max(fastest, 1e-6)))
    seconds: dict[str, list[float]] = {name: [] for name in tasks}
    names = list(tasks)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = tasks[name], calls[name]
            start = CLOCK()
            for _ in range(n):
                fn()
            seconds[name].append((CLOCK() - start) / n)
    return {name: {"median": statistics.median(s), "min": min(s), "max": max(s), "calls_per_block": calls[name],
                   "blocks": len(s)} for name, s in seconds.items()}


def bench_case(args, name: str, models: dict[str, tuple[str, Callable]], x: Tensor) -> dict:
    classes, train, evaluate, unavailable = {}, {}, {}, {}
    for impl, (what, build) in models.items():
        try:
            log_prob, module = build()
            scored = impl != FUSED  # the optimiser plays no part in evaluation: no second model to score
            eval_log_prob, eval_module = build() if scored else (None, None)
        except ImportError:
            unavailable[impl] = "not installed"
            continue
        except ValueError as error:  # the peer refuses this architecture
            unavailable[impl] = f"does not fit: {error}"
            continue
        classes[impl] = what
        train[impl] = trainer(log_prob, module.train(), x, fused=impl == FUSED)
        if scored:
            evaluate[impl] = evaluator(eval_log_prob, x)
            eval_module.eval()
    figures = {"train step": interleaved(train, args.repeats, args.block),
               "eval log_prob": interleaved(evaluate, args.repeats, args.block)}
    print(f"{name}: done", file=sys.stderr)
    return {"task": name, "batch": x.shape[0], "classes": classes, "unavailable": unavailable, "seconds": figures}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def table(cases: list[dict]) -> str:
    """The table of ``bench_train.md``: per case and implementation, the median and best time of a train
    step and of an eval ``log_prob``, with the ratio to flowkit's median."""
    rows = []
    for case in cases:
        train, evaluate = case["seconds"]["train step"], case["seconds"]["eval log_prob"]
        for impl in train:
            cells = [case["task"], impl]
            for figures in (train, evaluate):
                if impl not in figures:
                    cells += ["", "", ""]
                    continue
                median, best = figures[impl]["median"], figures[impl]["min"]
                ratio = median / figures[FLOWKIT]["median"]
                cells += [f"{median * 1e3:.2f} ms", f"{ratio:.2f}x", f"{best * 1e3:.2f} ms"]
            rows.append(cells)
        rows += [[case["task"], impl, why, "", "", "", "", ""] for impl, why in case["unavailable"].items()]
    return markdown_table(["case", "implementation", "train step", "ratio", "best block", "eval log_prob", "ratio",
                           "best block"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the CPU time of this process (with --threads 1, what a step costs "
                        "whatever else the machine runs: waiting for a core is not counted)")
    parser.add_argument("--compile", action="store_true",
                        help="also time flowkit's log_prob through torch.compile (minutes of compiling)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--block", type=float, default=0.12, help="seconds per timed block (approximately)")
    parser.add_argument("--quick", action="store_true", help="toy sizes and 2 repeats: a smoke test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.block = 2, 0.0
    torch.set_num_threads(args.threads)
    global CLOCK, COMPILE
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    COMPILE = args.compile
    torch.manual_seed(0)
    small = args.quick
    D1, H1, n1 = (8, [16, 16], 8) if small else (784, [500, 500], 100)
    D2, H2, n2 = (5, [16, 16], 8) if small else (63, [512, 512], 512)
    D3, H3, n3 = (3, [8, 8], 8) if small else (6, [100, 100], 512)
    D4, H4, n4 = (3, [8, 8], 8) if small else (5, [50, 50], 64)
    L = 2 if small else 5
    cases = [
        bench_case(args, f"Bernoulli MADE D={D1}, {H1}, batch {n1}", bernoulli_models(D1, H1),
                   (torch.rand(n1, D1) < 0.3).float()),
        bench_case(args, f"affine MAF D={D2}, {L} layers, MADE {H2}, batch {n2}",
                   maf_models(D2, L, H2, "affine"), torch.randn(n2, D2)),
        bench_case(args, f"RQ spline MAF D={D3}, {L} layers, MADE {H3}, 8 bins, batch {n3}",
                   maf_models(D3, L, H3, "spline"), torch.randn(n3, D3)),
        bench_case(args, f"small affine MAF D={D4}, {L} layers, MADE {H4}, batch {n4}",
                   maf_models(D4, L, H4, "affine"), torch.randn(n4, D4)),
    ]

    machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    command = "python experiments/bench_train.py" + (" --quick" if args.quick else "") + (
        f" --threads {args.threads}" if args.threads != 2 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 11 and not args.quick else "") + (
        " --clock cpu" if args.clock == "cpu" else "") + (" --compile" if args.compile else "")
    lines = [
        f"Training speed, median {'CPU' if args.clock == 'cpu' else 'wall'} time per call over {args.repeats} "
        f"interleaved repeats; {machine}, "
        f"torch {torch.__version__}, float32. Ratio = implementation / flowkit: above 1, flowkit is faster.",
        "",
        table(cases),
    ]
    lines += ["", "What each implementation is:", ""]
    for case in cases:
        for impl, what in case["classes"].items():
            lines.append(f"- {case['task']}, {impl}: {what}")
    lines += [
        "",
        "A train step is `zero_grad`, `-log_prob(x).mean()`, `backward` and `Adam.step` on a fixed batch; eval is "
        "`log_prob(x)` under `no_grad` on a model in eval mode. Hidden degrees, initialisations and "
        "squashing of the scale differ between libraries (zuko assigns hidden degrees cyclically, the others "
        "at random; zuko's spline acts on [-5, 5], the others on [-3, 3]); the matrix sizes are the same.",
        "The machine was shared with other work while this ran: figures move between runs, and the "
        "interleaving makes the ratios steadier than the times. The best block (the fastest repeat, per call) "
        "is the figure least touched by load; the JSON also keeps the slowest. With more threads than free "
        "cores, every parallel region waits for its slowest thread: on a loaded machine `--threads 1` "
        "gives steadier figures.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_train.json",
               {"command": command, "machine": machine, "torch": torch.__version__, "threads": torch.get_num_threads(),
                "repeats": args.repeats, "cases": cases})
    text = "\n".join(lines) + f"\n\nCommand: `{command}`.\n"
    write_text(out / "bench_train.md", text)
    print(text)


if __name__ == "__main__":
    main()
