"""Run directories: the files a fit writes, their state, reading a run's config and model back, and
drawing samples and completions from a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowkit.atomic import read_json
from flowkit.cli.errors import CommandError
from flowkit.cli.registry import AUTOREGRESSIVE, MODELS, build_model
from flowkit.errors import FileProblem, FlowkitError

__all__ = ["load_run", "run_state"]

# the settings that, with the data, determine the model's architecture
ARCHITECTURE = ("data", "model", "hidden", "masks", "order_agnostic", "direct", "layers", "components", "bins",
                "seed", "kind", "features", "categories", "fresh_masks", "residual_blocks", "dropout", "linear",
                "bound")
# the files a fit writes into its run directory (and --overwrite removes), and those sample and complete add
RUN_FILES = ("config.json", "model.pt", "checkpoint.pt", "metrics.jsonl", "metrics.json", "curves.png", "samples.png",
             "completions.png", "density.png")
DRAWN_FILES = ("sample-*.npy", "sample-*.png", "complete-*.npy", "complete-*.png", ".*.part")
# architecture settings added after run directories were first written, with the value older runs had
LATER_ARCHITECTURE = {"fresh_masks": False, "residual_blocks": 0, "dropout": 0.0, "linear": None, "bound": None}


def run_state(out: Path) -> str:
    """``"new"`` (missing or empty), ``"run"`` (it holds a flowkit run) or ``"other"`` (other files)."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a directory")
    entries = [entry for entry in out.iterdir() if not (entry.name.startswith(".") and entry.name.endswith(".part"))]
    if not entries:
        return "new"
    if any((out / name).exists() for name in ("config.json", "checkpoint.pt", "model.pt")):
        return "run"
    return "other"


def _remove_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for pattern in DRAWN_FILES:
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _read_config(run: Path) -> dict[str, Any]:
    if not run.is_dir():
        raise CommandError(f"run directory not found: {run}")
    path = run / "config.json"
    if not path.exists():
        raise CommandError(f"not a run directory (no config.json): {run}")
    remedy = "it cannot be repaired: fit the run again (into a new --out, or with --overwrite)"
    config = read_json(path, "the run's config", remedy)
    if not isinstance(config, dict):
        raise FileProblem(f"the run's config {path} is damaged: expected a JSON object; {remedy}")
    config = {**LATER_ARCHITECTURE, **config}
    missing = [key for key in (*ARCHITECTURE, "image_shape", "vmax") if key not in config]
    if missing:
        raise FileProblem(f"the run's config {path} is damaged: it lacks {', '.join(missing)}; {remedy}")
    if config["model"] not in MODELS:
        raise FileProblem(f"the run's config {path} is damaged: unknown model {config['model']!r}; {remedy}")
    return config


def load_run(run: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model of a run directory, on the CPU in evaluation mode, and its config."""
    from flowkit.atomic import load_torch

    run = Path(run)
    config = _read_config(run)
    path = run / "model.pt"
    again = f"run `flowkit fit --resume --out {run}` (with the fit's options) to write it again from checkpoint.pt" \
        if (run / "checkpoint.pt").is_file() else "fit the run again"
    if not path.exists():
        raise CommandError(f"run {run} has no model.pt: its fit did not finish; {again}")
    saved = load_torch(path, "model file", again)
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise FileProblem(f"model file {path} is not a flowkit model (no state_dict); {again}")
    try:
        model = build_model(config)
    except FlowkitError as error:
        raise FileProblem(f"the run's config {run / 'config.json'} is damaged: {error}") from None
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError:
        raise FileProblem(f"model file {path} does not match the run's config.json (another architecture); "
                          f"{again}") from None
    if config["model"] in AUTOREGRESSIVE:
        model.made.use_mask(0)
    return model.eval(), config


def _bits_per_dim(nll: float, config: dict[str, Any]) -> float | None:
    if not config.get("image_shape"):
        return None
    from flowkit.data import bits_per_dim

    return bits_per_dim(nll, config["features"])


def _sample(model, n: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return model.sample(n, generator=generator).cpu()


def _complete(model, originals: torch.Tensor, samples: int, seed: int, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(seed)
    observed = torch.zeros(originals.shape, dtype=torch.bool)
    observed[:, : originals.shape[1] // 2] = True  # the top half; exact under the natural ordering
    x, mask = originals.to(device), observed.to(device)
    completions = torch.stack([model.complete(x, mask, generator=generator).cpu() for _ in range(samples)], 1)
    return observed, completions
