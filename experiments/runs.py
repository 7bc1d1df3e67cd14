"""Resumable reproduction runs: one folder per run, holding ``checkpoint.pt`` (the whole training
state, see :func:`flowkit.train.fit`), ``log.jsonl`` (one row per epoch) and, once the run has
finished, ``result.json`` (its test figures). A script calls :func:`advance` for each of its runs
with a common deadline; calling it again later, in the same session or the next, continues exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from flowkit.train import fit


def advance(model, train, valid, folder: Path, deadline: float, *, epochs: int, **options: Any) -> bool:
    """Trains the run in ``folder`` until early stopping, ``epochs`` epochs or ``deadline`` (a
    ``time.time()``), whichever comes first; returns whether the run has finished."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint.pt"
    if time.time() < deadline:
        fit(model, train, valid, epochs=epochs, log=folder / "log.jsonl", checkpoint=checkpoint, resume=True,
            time_limit=deadline - time.time(), **options)
    if not checkpoint.exists():
        return False
    state = torch.load(checkpoint, weights_only=True)
    return state["stopped"] or state["epoch"] >= epochs


def restore_best(model, folder: Path) -> dict[str, Any]:
    """Loads the best validation epoch's weights into ``model``; returns the run's summary."""
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    model.load_state_dict(state["best_state"])
    model.eval()
    return {"epochs": state["epoch"], "best_epoch": state["history"]["best_epoch"] + 1,
            "best_valid_nll": state["history"]["best_valid_nll"],
            "seconds": round(sum(r["seconds"] for r in curve(folder)))}


def curve(folder: Path) -> list[dict[str, Any]]:
    """The run's log rows, oldest first (empty before its first epoch)."""
    log = folder / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def unfinished(folder: Path) -> dict[str, Any]:
    """The summary of a run still training: its epochs and best validation NLL so far."""
    rows = curve(folder)
    return {"finished": False, "epochs": len(rows), "best_valid_nll": min(r["valid_nll"] for r in rows),
            "seconds": round(sum(r["seconds"] for r in rows))}


def committed(results: Path) -> dict[str, dict[str, Any]]:
    """The runs of a results JSON written by an earlier report (``{"runs": {name: entry}}``), by
    name: what a report keeps for a run whose folder is not on this machine (a later session on a new
    machine). An unfinished run keeps its learning curve and how far it got, marked
    ``"stopped": True``: its checkpoint stayed on the earlier machine, and training it here would
    start again."""
    if not results.exists():
        return {}
    runs = json.loads(results.read_text())["runs"]
    return {name: entry if entry.get("finished", True) else {**entry, "stopped": True} for name, entry in runs.items()}


def still(entry: dict[str, Any]) -> str:
    """What a results table says in place of an unfinished run's test figure: it trains on from its
    checkpoint on this machine, or it was stopped with an earlier machine (see :func:`committed`)."""
    return "stopped, checkpoint lost" if entry.get("stopped") else "still training"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table: the ``header`` cells, then one line per row of cells (each written with
    ``str``, an empty one as ``| |``); the one helper behind every results table of ``experiments/``."""
    def line(cells: Sequence[Any]) -> str:
        return "|" + "".join(f" {cell} |" if str(cell) else " |" for cell in cells)

    return "\n".join([line(header), "|" + " --- |" * len(header), *(line(row) for row in rows)])
