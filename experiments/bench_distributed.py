"""Data-parallel training speed: samples per second of :func:`flowkit.train.fit` in 1 and 2 gloo
processes on this machine (one thread each), and the scaling efficiency.

Each case trains a Bernoulli MADE on the digits training rows (1197 x 64, repeated ``--copies``
times), with a global minibatch ``B`` that the processes split between them. The processes are
started as ``torchrun`` starts them (its environment: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), so ``fit`` runs unchanged. Each process first trains one epoch (the process group,
the DDP wrapper and the caches warm up), then ``--epochs`` timed epochs; a figure is the best of
``--repeats`` such launches: samples per second = epochs x rows / seconds of rank 0. The scaling
efficiency is (samples/s with W processes) / (W x samples/s with one).

    python experiments/bench_distributed.py            # about 3 minutes on 2 cores
    python experiments/bench_distributed.py --quick    # a smoke test: prints, writes nothing

Writes ``experiments/results/bench_distributed.json`` and ``bench_distributed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import flowkit
from flowkit.atomic import write_json, write_text
from flowkit.data.digits import digits

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CASES = [  # (hidden widths, global minibatch)
    ([500], 100),
    ([500], 1000),
    ([1000, 1000], 500),
]


def worker(hidden: list[int], batch_size: int, copies: int, epochs: int) -> None:
    """One rank: a warm-up epoch, then ``epochs`` timed epochs; rank 0 prints the seconds as JSON."""
    from flowkit import distributed
    from flowkit.train import fit

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    train = digits().train.repeat(copies, 1)
    model = flowkit.BernoulliMADE(64, hidden, direct=True, seed=0)
    fit(model, train, epochs=1, batch_size=batch_size)
    distributed.barrier()
    began = time.perf_counter()
    fit(model, train, epochs=epochs, batch_size=batch_size, seed=1)
    distributed.barrier()
    seconds = time.perf_counter() - began
    steps = epochs * len(distributed.MinibatchSampler(len(train), batch_size, torch.Generator()))
    report = {"seconds": seconds, "rows": len(train), "epochs": epochs, "steps": steps,
              "parameters": sum(p.numel() for p in model.parameters())}
    if distributed.active():  # what one step's gradient average costs alone
        import torch.distributed as dist

        flat = torch.zeros(report["parameters"])
        dist.all_reduce(flat)
        began = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(flat)
        report["all_reduce_ms"] = (time.perf_counter() - began) / 20 * 1e3
    if distributed.is_main():
        print(json.dumps(report))


def launch(world: int, hidden: list[int], batch_size: int, copies: int, epochs: int) -> dict:
    """Runs :func:`worker` in ``world`` processes; returns rank 0's report."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, __file__, "--worker", json.dumps([hidden, batch_size, copies, epochs])]
    processes = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        if world == 1:
            env = {key: value for key, value in env.items() if key not in ("RANK", "WORLD_SIZE")}
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = [process.communicate() for process in processes]
    for process, (_, error) in zip(processes, outputs):
        if process.returncode:
            raise RuntimeError(f"a worker failed:\n{error}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=5, help="times the digits training rows are repeated")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per launch")
    parser.add_argument("--repeats", type=int, default=3, help="launches per case; the best is kept")
    parser.add_argument("--quick", action="store_true", help="one small launch per case (a smoke test)")
    args = parser.parse_args()
    if args.worker is not None:
        worker(*json.loads(args.worker))
        return
    if args.quick:
        args.copies, args.epochs, args.repeats = 1, 1, 1
    rows, load_before = [], os.getloadavg()
    for hidden, batch_size in CASES:
        rates, steps = {}, {}
        for world in (1, 2):
            runs = [launch(world, hidden, batch_size, args.copies, args.epochs) for _ in range(args.repeats)]
            best = min(runs, key=lambda run: run["seconds"])
            rates[world] = best["epochs"] * best["rows"] / best["seconds"]
            steps[world] = best["seconds"] / best["steps"] * 1e3
        row = dict(hidden=hidden, batch_size=batch_size, rows=best["rows"], parameters=best["parameters"],
                   samples_per_second_1=rates[1], samples_per_second_2=rates[2],
                   efficiency=rates[2] / (2 * rates[1]), step_ms_1=steps[1], step_ms_2=steps[2],
                   all_reduce_ms_2=min(run["all_reduce_ms"] for run in runs))
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                   python=platform.python_version(), threads_per_process=1, backend="gloo",
                   load_average_before=load_before[0], load_average_after=os.getloadavg()[0])
    result = dict(machine=machine, copies=args.copies, epochs=args.epochs, repeats=args.repeats, quick=args.quick,
                  cases=rows)
    if args.quick:  # a smoke test writes nothing
        return
    write_json(RESULTS / "bench_distributed.json", result)
    write_text(RESULTS / "bench_distributed.md", markdown(result))


def markdown(result: dict) -> str:
    """The results as ``bench_distributed.md``."""
    machine, rows = result["machine"], result["cases"]
    lines = [
        f"Data-parallel training of a Bernoulli MADE (D = 64, direct connection) on the digits training rows "
        f"repeated {result['copies']} times, gloo on one machine ({machine['cores']} cores), one thread per process, "
        f"torch {machine['torch']}; best of {result['repeats']} launches of {result['epochs']} timed epochs. "
        "Efficiency = samples/s with 2 processes / (2 x samples/s with 1). A step is one global minibatch; "
        "all-reduce is one gloo all-reduce of a float32 tensor the size of the parameters, timed alone. "
        f"The machine's 1-minute load average was {machine['load_average_before']:.1f} before and "
        f"{machine['load_average_after']:.1f} after (on {machine['cores']} cores: other work shared them).",
        "",
        markdown_table(["hidden", "parameters", "global batch", "1 process", "2 processes", "efficiency",
                        "step, 1 / 2 processes", "all-reduce"],
                       [[row["hidden"], f"{row['parameters']:,}", row["batch_size"],
                         f"{row['samples_per_second_1']:,.0f}/s", f"{row['samples_per_second_2']:,.0f}/s",
                         f"{row['efficiency']:.0%}", f"{row['step_ms_1']:.1f} / {row['step_ms_2']:.1f} ms",
                         f"{row['all_reduce_ms_2']:.1f} ms"] for row in rows]),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
