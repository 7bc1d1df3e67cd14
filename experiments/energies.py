r"""Fits IAFs to the four 2-D energies of Rezende & Mohamed (2015), *Variational Inference with
Normalizing Flows*, Table 1 / Figure 3, by minimising the reverse KL to
:math:`p(z) \propto e^{-U(z)}` (``flowkit.vi.reverse_kl``).

With :math:`w_1 = \sin(2\pi z_1 / 4)`, :math:`w_2 = 3 e^{-\frac12 ((z_1 - 1)/0.6)^2}` and
:math:`w_3 = 3\,\sigma((z_1 - 1)/0.3)`:

- :math:`U_1 = \frac12 ((\|z\| - 2)/0.4)^2 - \log(e^{-\frac12((z_1-2)/0.6)^2} + e^{-\frac12((z_1+2)/0.6)^2})`
- :math:`U_2 = \frac12 ((z_2 - w_1)/0.4)^2`
- :math:`U_3 = -\log(e^{-\frac12((z_2-w_1)/0.35)^2} + e^{-\frac12((z_2-w_1+w_2)/0.35)^2})`
- :math:`U_4 = -\log(e^{-\frac12((z_2-w_1)/0.4)^2} + e^{-\frac12((z_2-w_1+w_3)/0.35)^2})`

:math:`U_2, U_3, U_4` do not grow along :math:`z_1`, so :math:`e^{-U}` is not integrable on
:math:`\mathbb{R}^2` and the KL is undefined. We make them proper with a soft wall outside the box
the paper displays: :math:`\frac12 (\max(|z_1| - 4, 0) / 0.2)^2` is added to :math:`U_2, U_3, U_4`
(it is zero on :math:`[-4, 4]^2`); :math:`U_1` is left as published.

Each energy gets an affine IAF (8 layers) and a rational-quadratic spline IAF (4 layers, 8 bins),
each MADE with 2 hidden layers of 64, trained for 8000 steps with Adam (learning rate 3e-3, cosine
schedule to 0) on 256 fresh samples a step. Reported per fit: :math:`\log Z` of :math:`e^{-U}` by a midpoint rule on a
1000 x 1000 grid (on two boxes, to show the box holds the mass), :math:`\mathrm{KL}(q \| p) =
\mathbb{E}_q[\log q - \log \tilde p] + \log Z` with its standard error from 100k samples, the
effective sample size fraction of the importance weights :math:`\tilde p / q`, the mass of
:math:`q` in the grid box (a check of the flow's density), and the training wall time.

Writes ``experiments/results/energies.png`` (target and both fits, one row per energy),
``energies.json`` and ``energies.md``.

    python experiments/energies.py                        # about 10 minutes on 1 core
    python experiments/energies.py --steps 20000 --samples 512    # longer fits
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import sys  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import flowkit  # noqa: E402
from flowkit.atomic import save_figure, write_json, write_text  # noqa: E402
from flowkit.vi import log_weights, reverse_kl  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from runs import markdown_table  # noqa: E402

Energy = Callable[[Tensor], Tensor]
SHOWN = 4.0  # the paper's figures show [-4, 4]^2
WALL = (4.0, 0.2)  # soft wall on |z1|: starts at 4, width 0.2


def _w1(z1: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def _w2(z1: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)


def _w3(z1: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z1 - 1) / 0.3)


def _wall(z1: Tensor) -> Tensor:
    """Zero on ``|z1| <= 4``, quadratic beyond: makes the energies that are flat in ``z1`` proper."""
    start, width = WALL
    return 0.5 * ((z1.abs() - start).clamp(min=0) / width) ** 2


def _neg_logsumexp(a: Tensor, b: Tensor) -> Tensor:
    """``-log(exp(a) + exp(b))``, stable."""
    return -torch.logaddexp(a, b)


def u1(z: Tensor) -> Tensor:
    """The ring with two lobes."""
    z1, z2 = z[..., 0], z[..., 1]
    ring = 0.5 * ((torch.sqrt(z1**2 + z2**2) - 2) / 0.4) ** 2
    return ring + _neg_logsumexp(-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2)


def u2(z: Tensor) -> Tensor:
    """The sine wave (walled at |z1| = 4)."""
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2 + _wall(z1)


def u3(z: Tensor) -> Tensor:
    """The sine wave with a bump-shaped second branch (walled at |z1| = 4)."""
    z1, z2 = z[..., 0], z[..., 1]
    a = -0.5 * ((z2 - _w1(z1)) / 0.35) ** 2
    b = -0.5 * ((z2 - _w1(z1) + _w2(z1)) / 0.35) ** 2
    return _neg_logsumexp(a, b) + _wall(z1)


def u4(z: Tensor) -> Tensor:
    """The sine wave with a sigmoid-shaped second branch (walled at |z1| = 4)."""
    z1, z2 = z[..., 0], z[..., 1]
    a = -0.5 * ((z2 - _w1(z1)) / 0.4) ** 2
    b = -0.5 * ((z2 - _w1(z1) + _w3(z1)) / 0.35) ** 2
    return _neg_logsumexp(a, b) + _wall(z1)


ENERGIES: dict[str, Energy] = {"U1": u1, "U2": u2, "U3": u3, "U4": u4}


def grid(half_width: float, points: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, float]:
    """Cell centres of a ``points x points`` grid on ``[-h, h]^2``, shape ``(points, points, 2)``
    (row index = z2, column = z1), and the cell area."""
    step = 2 * half_width / points
    axis = -half_width + step * (torch.arange(points, dtype=dtype) + 0.5)
    z2, z1 = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([z1, z2], -1), step * step


def log_z(energy: Energy, half_width: float, points: int) -> float:
    """``log`` of the integral of ``exp(-U)`` over ``[-h, h]^2`` by the midpoint rule, in float64."""
    z, area = grid(half_width, points)
    return float(torch.logsumexp(-energy(z).flatten(), 0)) + math.log(area)


@torch.no_grad()
def flow_log_density(flow: flowkit.Flow, z: Tensor, chunk: int = 100_000) -> Tensor:
    """``flow.log_prob`` on points of any leading shape, float32, in chunks."""
    flat = z.reshape(-1, 2).float()
    return torch.cat([flow.log_prob(part) for part in flat.split(chunk)]).reshape(z.shape[:-1])


def make_flows(bound: float) -> dict[str, Callable[[], flowkit.Flow]]:
    """The two flows fitted to each energy, by name (built fresh, seeded, per energy)."""
    return {
        "affine IAF": lambda: flowkit.IAF(2, transforms=8, hidden_features=[64, 64], seed=0),
        "spline IAF": lambda: flowkit.IAF(2, transforms=4, hidden_features=[64, 64], transformer="spline",
                                          bins=8, bound=bound, seed=0),
    }


def train(flow: flowkit.Flow, energy: Energy, steps: int, samples: int, lr: float, seed: int) -> tuple[float, float]:
    """Minimises ``reverse_kl(-U, flow)`` with Adam and a cosine schedule; returns the wall time in
    seconds and the mean loss over the last 100 steps."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    recent: list[float] = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = reverse_kl(lambda z: -energy(z), flow, samples).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = (recent + [loss.item()])[-100:]
    return time.perf_counter() - start, sum(recent) / len(recent)


@torch.no_grad()
def evaluate(flow: flowkit.Flow, energy: Energy, log_z_value: float, samples: int, seed: int) -> dict[str, float]:
    """KL(q || p) with its standard error and the ESS fraction, from ``samples`` draws of ``q``."""
    torch.manual_seed(seed)
    lw = log_weights(lambda z: -energy(z), flow, samples, chunk=10_000).double()
    n = lw.numel()
    kl = -lw.mean() + log_z_value  # -log w is the per-sample reverse_kl
    se = lw.std() / math.sqrt(n)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)) / n
    return {"kl": float(kl), "kl_se": float(se), "ess_fraction": float(ess),
            "log_z_importance": float(torch.logsumexp(lw, 0) - math.log(n))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000, help="Adam steps per fit")
    parser.add_argument("--samples", type=int, default=256, help="samples of q per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="initial learning rate (cosine to 0)")
    parser.add_argument("--bound", type=float, default=5.0, help="the spline's interval [-B, B]")
    parser.add_argument("--eval-samples", type=int, default=100_000)
    parser.add_argument("--grid", type=int, default=1000, help="points per axis of the integration grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    begin = time.perf_counter()
    boxes = (6.0, 8.0)
    results: dict = {
        "command": "python experiments/energies.py",
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "optimizer": "Adam, cosine schedule to 0",
                   "wall": f"0.5 * (max(|z1| - {WALL[0]}, 0) / {WALL[1]})^2 added to U2, U3, U4",
                   "flows": {"affine IAF": "IAF(2, transforms=8, hidden_features=[64, 64])",
                             "spline IAF": f"IAF(2, transforms=4, hidden_features=[64, 64], transformer='spline', "
                                           f"bins=8, bound={args.bound})"},
                   "integration": f"midpoint rule, {args.grid} x {args.grid} cells, boxes "
                                  + ", ".join(f"[-{b:g}, {b:g}]^2" for b in boxes)},
        "energies": {},
    }
    show, _ = grid(SHOWN, 200)
    extent = (-SHOWN, SHOWN, -SHOWN, SHOWN)
    fig, axes = plt.subplots(len(ENERGIES), 3, figsize=(9, 12))
    for row, (ename, energy) in enumerate(ENERGIES.items()):
        log_zs = {f"[-{b:g},{b:g}]^2": log_z(energy, b, args.grid) for b in boxes}
        lz = log_zs[f"[-{boxes[-1]:g},{boxes[-1]:g}]^2"]
        entry: dict = {"log_z": log_zs, "flows": {}}
        print(f"{ename}: log Z = " + ", ".join(f"{v:.5f} on {k}" for k, v in log_zs.items()), flush=True)
        target = torch.exp(-energy(show) - lz).float()
        densities = [target]
        titles = [f"{ename}: exp(-U) / Z, log Z = {lz:.3f}"]
        for fname, build in make_flows(args.bound).items():
            flow = build()
            seconds, last_loss = train(flow, energy, args.steps, args.samples, args.lr, args.seed)
            scores = evaluate(flow, energy, lz, args.eval_samples, args.seed + 1)
            cells, area = grid(boxes[-1], args.grid)
            scores["flow_mass_in_box"] = float(flow_log_density(flow, cells).double().exp().sum() * area)
            scores["final_loss"] = last_loss
            scores["train_seconds"] = round(seconds, 1)
            entry["flows"][fname] = scores
            print(f"  {fname}: KL {scores['kl']:.4f} ± {scores['kl_se']:.4f}, ESS {scores['ess_fraction']:.3f}, "
                  f"mass in box {scores['flow_mass_in_box']:.4f}, {seconds:.0f} s", flush=True)
            densities.append(flow_log_density(flow, show).exp())
            titles.append(f"{fname}: KL = {scores['kl']:.3f}")
        results["energies"][ename] = entry
        vmax = float(max(d.max() for d in densities))
        for ax, density, title in zip(axes[row], densities, titles):
            ax.imshow(density.numpy(), origin="lower", extent=extent, cmap="viridis", vmin=0.0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    results["total_seconds"] = round(time.perf_counter() - begin, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    save_figure(fig, out / "energies.png", dpi=100, bbox_inches="tight")
    write_json(out / "energies.json", results)
    write_text(out / "energies.md", table(results, args))
    print(f"total {results['total_seconds']:.0f} s", flush=True)


def table(results: dict, args: argparse.Namespace) -> str:
    """The markdown summary: one row per energy and flow."""
    lines = [
        f"Command: `python experiments/energies.py --steps {args.steps} --samples {args.samples}` "
        f"(total {results['total_seconds']:.0f} s on 1 core).",
        "",
        "Reverse-KL fits to the energies of Rezende & Mohamed (2015), Table 1 / Figure 3. U2, U3 and U4 are flat "
        f"in z1, so a soft wall 0.5 * (max(|z1| - {WALL[0]:g}, 0) / {WALL[1]:g})^2 is added to them (zero on the "
        "displayed box [-4, 4]^2) to make exp(-U) integrable; U1 is unchanged. log Z by the midpoint rule on a "
        f"{args.grid} x {args.grid} grid over [-8, 8]^2; KL(q || p) = mean(log q - log p~) + log Z over "
        f"{args.eval_samples:,} samples; ESS = (sum w)^2 / sum w^2 / n for w = p~ / q.",
        "",
    ]
    rows = []
    for ename, entry in results["energies"].items():
        lz = list(entry["log_z"].values())[-1]
        for fname, s in entry["flows"].items():
            rows.append([ename, fname, f"{s['kl']:.4f} ± {s['kl_se']:.4f}", f"{s['ess_fraction']:.3f}", f"{lz:.4f}",
                         f"{s['flow_mass_in_box']:.4f}", args.steps, f"{s['train_seconds']:.0f} s"])
    lines.append(markdown_table(["energy", "flow", "KL(q‖p) ± s.e.", "ESS fraction", "log Z", "q mass in box",
                                 "steps", "wall time"], rows))
    boxes = "; ".join(f"{e}: " + ", ".join(f"{v:.5f} on {k}" for k, v in entry["log_z"].items())
                      for e, entry in results["energies"].items())
    lines += ["", f"log Z does not move when the box grows ({boxes}). \"q mass in box\" is the integral of "
              "exp(flow.log_prob) over the same grid, an independent check of the flow's density.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
