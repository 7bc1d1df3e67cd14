"""Round-trip errors of flowkit's autoregressive layers in float32: max |f^-1(f(x)) - x| and
max |f(f^-1(y)) - y| for affine and spline MAF layers with a context, inside the spline's interval
and deep in its tails, through the incremental engine (no gradients) and the differentiable loop.
Far from the origin float32 carries about 7 significant digits, so the relative errors
``|error| / (1 + |x|)`` are given beside the absolute ones.

    python experiments/roundtrip.py        # seconds; writes experiments/results/roundtrip.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flowkit.atomic import write_json  # noqa: E402
from flowkit.transforms import MaskedAutoregressive


def errors(layer, x, context):
    out = {}
    for engine, grad in (("engine", False), ("loop", True)):
        with torch.set_grad_enabled(grad):
            y, _ = layer(x, context)
            back, _ = layer.inverse(y, context)
            forth, _ = layer(layer.inverse(x, context)[0], context)
        back, forth = back.detach(), forth.detach()
        out[engine] = {
            "inverse(forward(x))": float((back - x).abs().max()),
            "forward(inverse(y))": float((forth - x).abs().max()),
            "relative, inverse(forward(x))": float(((back - x).abs() / (1 + x.abs())).max()),
            "relative, forward(inverse(y))": float(((forth - x).abs() / (1 + x.abs())).max()),
        }
    return out


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    results = {"command": "python experiments/roundtrip.py", "dtype": "float32", "points": 2000}
    for transformer in ("affine", "spline"):
        layer = MaskedAutoregressive(6, [64, 64], transformer, context_features=3, seed=0,
                                     transformer_options={"bins": 8, "bound": 3.0} if transformer == "spline" else None)
        context = torch.randn(2000, 3, generator=generator)
        inside = torch.randn(2000, 6, generator=generator)
        tails = (torch.sign(torch.randn(2000, 6, generator=generator))
                 * torch.empty(2000, 6).uniform_(10, 1000, generator=generator))
        results[transformer] = {"inside": errors(layer, inside, context),
                                "tails |x| in [10, 1000]": errors(layer, tails, context)}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    write_json(out / "roundtrip.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
