"""Training and evaluation of flowkit densities by maximum likelihood."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["History", "fit", "evaluate"]


@dataclass
class History:
    """Per-epoch mean training and validation NLL (nats), and the epoch that was kept."""

    train_nll: list[float] = field(default_factory=list)
    valid_nll: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_nll: float = math.inf


def fit(
    model: nn.Module,
    train: Tensor,
    valid: Tensor | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int = 20,
    ensemble: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> History:
    r"""Fits a density by Adam on the mean negative log-likelihood, with early stopping.

    A MADE with several mask sets moves to the next one after every minibatch
    (connectivity-agnostic training). After each epoch the validation NLL is measured (with the
    ensemble of the first ``ensemble`` mask sets, if given); training stops after ``patience``
    epochs without improvement and the best model is restored.

    Arguments:
        model: a density with ``log_prob(x)``, such as :class:`flowkit.BernoulliMADE`.
        train: training data, ``(N, D)``.
        valid: validation data, ``(M, D)``, or ``None`` (no early stopping).
        epochs, batch_size, lr, weight_decay: the optimisation settings.
        patience: epochs without a better validation NLL before stopping.
        ensemble: the mask sets used to score the validation data.
        seed: the seed of the minibatch shuffling.
        progress: show a tqdm bar.

    Returns:
        The :class:`History` of the run.

    Example:
        >>> model = flowkit.BernoulliMADE(4, [16], seed=0)
        >>> data = torch.randint(2, (200, 4)).float()
        >>> history = fit(model, data, data[:50], epochs=2)
        >>> len(history.train_nll)
        2
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    made = getattr(model, "made", None)
    history = History()
    best_state = copy.deepcopy(model.state_dict())
    epoch_range = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_range = tqdm(epoch_range, desc="fit", unit="epoch")
    for epoch in epoch_range:
        model.train()
        total = 0.0
        for rows in torch.randperm(len(train), generator=generator).split(batch_size):
            loss = -model.log_prob(train[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            if made is not None and made.num_masks > 1:
                made.next_mask()
        history.train_nll.append(total / len(train))
        if valid is None:
            continue
        score, _ = evaluate(model, valid, ensemble=ensemble, batch_size=max(batch_size, 1000))
        history.valid_nll.append(score)
        if score < history.best_valid_nll:
            history.best_valid_nll, history.best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - history.best_epoch >= patience:
            break
        if progress:
            epoch_range.set_postfix(train=f"{history.train_nll[-1]:.3f}", valid=f"{score:.3f}")
    if valid is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Tensor, *, ensemble: int | None = None, batch_size: int = 1000
) -> tuple[float, float]:
    """Mean negative log-likelihood of ``data`` in nats and its standard error.

    Example:
        >>> model = flowkit.BernoulliMADE(3, [8], seed=0)
        >>> nll, se = evaluate(model, torch.ones(10, 3))
        >>> se
        0.0
    """
    was_training = model.training
    model.eval()
    nll = torch.cat([-model.log_prob(chunk, ensemble=ensemble) for chunk in data.split(batch_size)])
    model.train(was_training)
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else math.nan
    return float(nll.mean()), stderr
