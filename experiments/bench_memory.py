"""Peak resident memory and throughput of ``flowkit fit``, ``eval`` and ``sample`` on data larger than memory.

Generates a 20M x 8 float32 ``.npy`` (640 MB) under ``~/.cache/flowkit-runs/bench_memory/`` (not in the
repository; kept for the next run), then, each command a subprocess limited to one thread whose
resident memory (``VmRSS`` of it and its children, from ``/proc``) is sampled every 0.1 s:

1. ``flowkit fit`` on it through the memory-mapped path (the default for a file this large), from the
   start of the command through ``--train-seconds`` of training (training starts when ``config.json``
   appears; the process is then stopped, its first epoch being far longer);
2. the same command on the in-memory path (``FLOWKIT_MEMMAP_BYTES`` above the file's size), for
   comparison;
3. throughput, rows per second of :func:`flowkit.train.fit` (the loop ``flowkit fit`` runs) over the
   same rows of the file's training split, once as memory-mapped views and once as one tensor,
   alternating, in a subprocess of one thread (the two give the same weights: same batch order);
   and the same for POWER's training rows (``flowkit.data.load_power(memmap=True)``, the path
   ``flowkit fit --data power`` takes below ``FLOWKIT_MEMMAP_BYTES``) with the MAF(5) of
   ``experiments/maf_power.py``;
4. ``flowkit fit --epochs 0`` (the streaming pass, the split, and scoring the 2M validation and 2M test
   rows) and ``flowkit eval`` of that run (its test file scored chunk by chunk);
5. ``flowkit sample -n 10000000`` from a run fitted on the first 20,000 rows, written chunk by chunk.

Writes ``experiments/results/bench_memory.json`` and ``.md``.

    python experiments/bench_memory.py          # about 8 minutes on 2 shared cores

``flowkit fit`` runs with its defaults for continuous data (a MAF of 5 layers of 128 x 128, batches of
100). Throughput is measured for that model and for a small MAF (``--layers 2 --hidden 32 32``), whose
cheap step is the hardest test of the data path's share of the time; ``eval`` and ``sample`` use the
small one (10M samples of the default MAF would take about 4 minutes on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flowkit.atomic import save_npy_chunks, write_json, write_text

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

CACHE = Path.home() / ".cache" / "flowkit-runs" / "bench_memory"
MODEL = ["--model", "maf", "--batch-size", "100"]
SMALL = ["--model", "maf", "--layers", "2", "--hidden", "32", "32", "--batch-size", "100"]
SHAPES = {"default": (5, [128, 128]), "small": (2, [32, 32])}
POWER_SHAPE = (5, [100, 100])  # MAF(5) of experiments/maf_power.py: batch norm, batches of 512
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def generate(path: Path, rows: int, features: int = 8, chunk: int = 1 << 20) -> Path:
    """A seeded, correlated, non-Gaussian ``(rows, features)`` float32 file, written chunk by chunk."""
    if path.is_file():
        header = np.load(path, mmap_mode="r")
        if header.shape == (rows, features) and header.dtype == np.float32:
            return path
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(features, features)) / np.sqrt(features)

    def chunks():
        for start in range(0, rows, chunk):
            z = rng.standard_normal((min(chunk, rows - start), features))
            yield (z @ mixing + 0.5 * np.sin(2 * z[:, ::-1])).astype(np.float32)

    return save_npy_chunks(path, chunks(), rows)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def _status(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` that count memory."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields


def monitored(argv: list[str], env: dict[str, str], *, started: Path | None = None, seconds: float | None = None,
              interval: float = 0.1) -> dict:
    """Runs ``argv``, sampling the resident memory of its process tree; stops it ``seconds`` after
    ``started`` appears (or lets it finish). Returns peaks in MB and the times."""
    begin = time.perf_counter()
    process = subprocess.Popen(argv, env={**os.environ, **ONE_THREAD, **env}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,  # Ctrl-C even when started in the background
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    peak, peak_at, hwm, anon_at_peak, file_at_peak, train_start = 0, 0.0, 0, 0, 0, None
    while process.poll() is None:
        now = time.perf_counter() - begin
        statuses = [_status(pid) for pid in _tree(process.pid)]
        total = sum(s.get("VmRSS", 0) for s in statuses)
        if total > peak:
            peak, peak_at = total, now
            anon_at_peak = sum(s.get("RssAnon", 0) for s in statuses)
            file_at_peak = sum(s.get("RssFile", 0) for s in statuses)
        hwm = max(hwm, statuses[0].get("VmHWM", 0) if statuses else 0)
        if started is not None and train_start is None and started.exists():
            train_start = now
        if seconds is not None and train_start is not None and now - train_start >= seconds:
            process.send_signal(signal.SIGINT)
            break
        time.sleep(interval)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return {"peak_rss_mb": round(peak / 1024, 1), "peak_at_s": round(peak_at, 1), "vmhwm_mb": round(hwm / 1024, 1),
            "anon_mb_at_peak": round(anon_at_peak / 1024, 1), "file_mb_at_peak": round(file_at_peak / 1024, 1),
            "training_started_s": None if train_start is None else round(train_start, 1),
            "seconds": round(time.perf_counter() - begin, 1), "returncode": process.returncode,
            "output": output.strip().splitlines()[-6:]}


THROUGHPUT = r"""
import json, sys, time, warnings
import torch
import flowkit
import flowkit.data
from flowkit.data import load_memmap, split_memmap
from flowkit.train import fit
warnings.simplefilter("ignore")
torch.set_num_threads(1)
path, rows, rounds, layers, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
batch_size, batch_norm = int(sys.argv[6]), sys.argv[7] == "1"
if path == "power":  # POWER's cached file, memory-mapped (flowkit.data.load_power(memmap=True))
    view = flowkit.data.load_power(memmap=True).train.view(range(0, rows))
else:
    data, _, _ = load_memmap(path)
    view = split_memmap(data).train.view(range(0, rows))
tensor = view.tensor()
build = lambda: flowkit.MAF(view.features, layers, [hidden, hidden], batch_norm=batch_norm, seed=0)
fit(build(), tensor[:2000], epochs=1, batch_size=batch_size)  # warm up
times = {"memmap": [], "tensor": []}
cpu = {"memmap": [], "tensor": []}
weights = {}
for _ in range(rounds):
    for name, train in (("memmap", view), ("tensor", tensor)):
        model = build()
        began, began_cpu = time.perf_counter(), time.process_time()
        fit(model, train, epochs=1, batch_size=batch_size, seed=0)
        times[name].append(time.perf_counter() - began)
        cpu[name].append(time.process_time() - began_cpu)
        weights[name] = model.state_dict()
same = all(torch.equal(weights["memmap"][k], weights["tensor"][k]) for k in weights["tensor"])
print(json.dumps({"times": times, "cpu": cpu, "same_weights": same}))
"""


def throughput(path: Path | str, rows: int, rounds: int, shape: str) -> dict:
    """Rows per second of one epoch of ``fit`` over ``rows`` training rows, memory-mapped and in memory
    (``path="power"``: POWER's training rows and the MAF(5) of the MAF paper's Table 1)."""
    power = str(path) == "power"
    layers, hidden = POWER_SHAPE if power else SHAPES[shape]
    batch_size = 512 if power else 100
    done = subprocess.run([sys.executable, "-c", THROUGHPUT, str(path), str(rows), str(rounds), str(layers),
                           str(hidden[0]), str(batch_size), "1" if power else "0"], check=True,
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    model = f"MAF, {layers} layers of {hidden}"
    model = f"POWER, {model} with batch norm, batch 512" if power else model
    summary = {"model": model, "rows": rows, "rounds": rounds, "same_weights": result["same_weights"]}
    for clock in ("cpu", "times"):  # process CPU time (what a shared machine leaves alone) and wall time
        rates = {name: [rows / t for t in times] for name, times in result[clock].items()}
        ratios = sorted(a / b for a, b in zip(rates["memmap"], rates["tensor"]))  # within each round
        key = "cpu" if clock == "cpu" else "wall"
        summary[key] = {"rows_per_s": {k: [round(v) for v in vs] for k, vs in rates.items()},
                        "median_rows_per_s": {k: round(sorted(vs)[len(vs) // 2]) for k, vs in rates.items()},
                        "median_ratio": round(ratios[len(ratios) // 2], 3)}
    return summary


def markdown(results: dict) -> str:
    """The results as the Markdown table of ``bench_memory.md``."""
    fit_m, fit_t = results["fit_memmap"], results["fit_in_memory"]
    lines = [
        "# Data larger than memory", "",
        f"{results['rows']:,} x {results['features']} float32 `.npy` ({results['file_mb']:.0f} MB); one thread per "
        f"process; {results['machine']}. Peak resident memory of each command's process tree (VmRSS sampled every "
        "0.1 s, with its anonymous and file-backed parts at the peak; the file-backed part is mostly torch's "
        "shared libraries).", "",
    ]

    def row(name: str, entry: dict, note: str) -> list:
        return [name, entry["peak_rss_mb"], f"{entry['anon_mb_at_peak']} / {entry['file_mb_at_peak']}",
                entry.get("seconds", ""), note]

    bare = results["bare_torch"]
    lines += [
        markdown_table(["command", "peak RSS, MB", "anon / file, MB", "seconds", "notes"], [
            ["`python -c 'import torch'`", bare["peak_rss_mb"],
             f"{bare['anon_mb_at_peak']} / {bare['file_mb_at_peak']}", "", "the floor"],
            row(f"`flowkit fit {' '.join(MODEL)}` (read from the file)", fit_m,
                f"training from {fit_m['training_started_s']} s, stopped {results['train_seconds']:g} s later"),
            row("the same, in memory (`FLOWKIT_MEMMAP_BYTES` above the size)", fit_t,
                f"training from {fit_t['training_started_s']} s, stopped {results['train_seconds_in_memory']:g} s "
                "later"),
            row(f"`flowkit fit {' '.join(SMALL)} --epochs 0`", results["fit_epochs0"],
                "streaming pass, split, scoring the validation and test parts"),
            row("`flowkit eval` of that run", results["eval"], " ".join(results["eval"]["output"][-1:])),
            row(f"`flowkit sample -n {results['sample_n']}` (small MAF)", results["sample"],
                f"{results['sample_rows_per_s']:,} samples/s, shape {results['sample_shape']}"),
        ]),
        "",
        "Throughput of `flowkit.train.fit` (the loop `flowkit fit` runs) over the same rows of the training "
        "split, read from the file and as one tensor, alternating (one epoch each); medians of rows per second "
        "of process CPU time (user and system: the reads' system calls count) and of wall time, and the median "
        "of the ratios within each round:", "",
    ]
    rows = []
    for speed in results["throughput"]:
        cpu, wall = speed["cpu"], speed["wall"]
        rows.append([speed["model"], f"{speed['rows']:,} x {speed['rounds']}",
                     f"{cpu['median_rows_per_s']['memmap']:,} / {cpu['median_rows_per_s']['tensor']:,}",
                     cpu["median_ratio"], f"{wall['median_rows_per_s']['memmap']:,} / "
                     f"{wall['median_rows_per_s']['tensor']:,}", wall["median_ratio"], speed["same_weights"]])
    lines.append(markdown_table(["model", "rows x rounds", "CPU: from the file / in memory, rows/s", "ratio",
                                 "wall: from the file / in memory, rows/s", "ratio", "same weights"], rows))
    lines += ["", f"Command: `{results['command']}` ({results['total_seconds']:.0f} s).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--train-seconds", type=float, default=120.0, help="training measured, from the file")
    parser.add_argument("--train-seconds-in-memory", type=float, default=30.0)
    parser.add_argument("--throughput-rows", type=int, nargs=2, default=[30_000, 60_000], metavar=("DEFAULT", "SMALL"))
    parser.add_argument("--power-rows", type=int, default=200_000, help="POWER training rows per throughput epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-n", type=int, default=10_000_000)
    parser.add_argument("--cache", default=str(CACHE))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    path = generate(cache / f"data-{args.rows}x8.npy", args.rows)
    flowkit = [sys.executable, "-m", "flowkit"]
    results = {"command": " ".join(["python experiments/bench_memory.py", *sys.argv[1:]]), "rows": args.rows,
               "features": 8, "file_mb": round(path.stat().st_size / 1e6, 1),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}",
               "train_seconds": args.train_seconds, "train_seconds_in_memory": args.train_seconds_in_memory,
               "sample_n": args.sample_n}
    results["bare_torch"] = monitored([sys.executable, "-c", "import torch, time; time.sleep(1)"], {})
    with tempfile.TemporaryDirectory(dir=cache) as work:
        work = Path(work)
        for name, env, seconds in (("fit_memmap", {}, args.train_seconds),
                                   ("fit_in_memory", {"FLOWKIT_MEMMAP_BYTES": str(1 << 60)},
                                    args.train_seconds_in_memory)):
            out = work / name
            results[name] = monitored([*flowkit, "fit", "--data", str(path), "--out", str(out), *MODEL], env,
                                      started=out / "config.json", seconds=seconds)
            print(name, json.dumps(results[name]), flush=True)
        results["throughput"] = [throughput(path, rows, args.rounds, shape)
                                 for rows, shape in zip(args.throughput_rows, ("default", "small"))]
        results["throughput"].append(throughput("power", args.power_rows, args.rounds, "power"))
        print("throughput", json.dumps(results["throughput"]), flush=True)
        run = work / "epochs0"
        results["fit_epochs0"] = monitored([*flowkit, "fit", "--data", str(path), "--out", str(run), *SMALL,
                                            "--epochs", "0"], {})
        results["eval"] = monitored([*flowkit, "eval", "--run", str(run)], {})
        print("eval", json.dumps(results["eval"]), flush=True)
        small = work / "small.npy"
        np.save(small, np.load(path, mmap_mode="r")[:20_000])
        sampled = work / "sampled"
        subprocess.run([*flowkit, "fit", "--data", str(small), "--out", str(sampled), *SMALL, "--epochs", "1"],
                       check=True, capture_output=True, env={**os.environ, **ONE_THREAD})
        drawn = work / "samples.npy"
        results["sample"] = monitored([*flowkit, "sample", "--run", str(sampled), "-n", str(args.sample_n), "--out",
                                       str(drawn)], {})
        samples = np.load(drawn, mmap_mode="r")
        results["sample_shape"] = list(samples.shape)
        results["sample_finite"] = bool(np.isfinite(samples[:100_000]).all())
        results["sample_rows_per_s"] = round(args.sample_n / results["sample"]["seconds"])
        del samples
        print("sample", json.dumps(results["sample"]), flush=True)
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    out = Path(args.out)
    write_json(out / "bench_memory.json", results)
    write_text(out / "bench_memory.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
