"""Training and evaluation of flowkit densities by maximum likelihood."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from flowkit import distributed
from flowkit.atomic import atomic_path, load_torch, save_torch
from flowkit.density import Density
from flowkit.errors import FileProblem, FlowkitTypeError, FlowkitValueError
from flowkit.made import MADE
from flowkit.transforms.normalization import BatchNorm, set_population_statistics
from flowkit.validation import check_float, check_int, check_option

__all__ = ["History", "fit", "evaluate", "check_resume"]

SCHEDULES = ("constant", "cosine", "plateau")
# the optimisers fit builds, by name
_OPTIMIZER_KINDS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad}
OPTIMIZERS = tuple(_OPTIMIZER_KINDS)
# settings added after checkpoints were first written, with the value older checkpoints were trained with
LATER_SETTINGS = {"optimizer": "adam", "masks": "cycle", "precision": "fp32", "batch_norm": "running"}
MASK_MODES = ("cycle", "fresh")
BATCH_NORM_STATISTICS = ("running", "population")
POPULATION_ROWS = 100_000  # the training rows batch norm's population statistics are measured on
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOG_FIELDS = ("epoch", "train_nll", "valid_nll", "lr", "seconds")


@dataclass
class History:
    """Per-epoch mean training and validation NLL (nats), the learning rate each epoch ran with,
    the epoch that was kept (0-based), and whether early stopping ended the run.

    Example:
        >>> history = History([2.0, 1.5], [2.1, 1.7], 1, 1.7, [1e-3, 1e-3])
        >>> History.from_dict(history.to_dict()) == history
        True
    """

    train_nll: list[float] = field(default_factory=list)
    valid_nll: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_nll: float = math.inf
    lr: list[float] = field(default_factory=list)
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The history as plain lists and numbers (for JSON or a checkpoint)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> History:
        """The inverse of :meth:`to_dict`."""
        return cls(**copy.deepcopy(state))


def fit(
    model: Density,
    train: Tensor | tuple[Tensor, Tensor] | Dataset,
    valid: Tensor | tuple[Tensor, Tensor] | Dataset | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: Literal["adam", "adamw", "adagrad"] = "adam",
    patience: int = 20,
    ensemble: int | None = None,
    masks: Literal["cycle", "fresh"] = "cycle",
    seed: int = 0,
    progress: bool = False,
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant",
    clip: float | None = None,
    device: str | torch.device | None = None,
    log: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    time_limit: float | None = None,
    compile: bool = False,
    precision: Literal["fp32", "bf16", "fp16"] = "fp32",
    batch_norm: Literal["running", "population"] = "running",
) -> History:
    r"""Fits a density by Adam, AdamW or Adagrad on the mean negative log-likelihood, with early stopping.

    A MADE with several mask sets moves to the next one after every minibatch
    (connectivity-agnostic training, ``masks="cycle"``). With ``masks="fresh"`` the MADE instead
    rebuilds its current mask set from mask key :math:`t` before minibatch :math:`t` (counted over
    the whole run, from 0): a new mask for every minibatch, as in the MADE paper, none stored
    (:meth:`flowkit.MADE.draw_masks`). After each epoch the validation NLL is measured (with the
    ensemble of the first ``ensemble`` mask sets, if given; with fresh masks, with the ensemble of
    mask keys ``0..ensemble-1``, key 0 alone when ``ensemble`` is ``None``); training stops after
    ``patience`` epochs without improvement and the best model is restored. After a fresh-mask
    run the current mask set holds key 0.

    The minibatch order comes only from a generator seeded with ``seed``; a last minibatch of a
    single row joins the one before it (batch norm needs two rows). With ``checkpoint``
    the whole training state is written after every epoch (atomically: a temporary file in the
    same folder, then :func:`os.replace`); with ``resume=True`` a run continues from it and ends
    with exactly the weights of an uninterrupted run with the same settings and data.

    **Data.** ``train`` and ``valid`` are each a tensor ``x: (N, D)``, a pair of tensors
    ``(x, context)`` with ``context: (N, C)``, or a map-style :class:`torch.utils.data.Dataset`
    with ``len(data) = N`` whose item ``data[i]`` is row :math:`i`: a tensor of shape ``(D,)``, or
    a pair ``(x_i, context_i)`` of shapes ``(D,)`` and ``(C,)`` (a one-element tuple ``(x_i,)``,
    as a :class:`~torch.utils.data.TensorDataset` gives, counts as ``x_i``; numpy rows are taken
    as tensors). A dataset may also define ``__getitems__(indices: list[int])`` to read a whole
    minibatch at once; it returns the rows stacked, as a tensor ``(len(indices), D)`` or a tuple
    ``(x, context)`` of stacked tensors, or else a ``list`` of items as above (torch's
    convention, as :class:`~torch.utils.data.Subset` returns). Rows are read minibatch by
    minibatch, in the order of :class:`flowkit.distributed.MinibatchSampler`, and moved to
    ``device``; nothing is read ahead or held beyond one minibatch.

    **Data-parallel training.** Under ``torchrun --nproc-per-node W`` (or when a process group
    is already initialised) every rank runs this same call; ``batch_size`` is the global
    minibatch :math:`B`, cut into ``W`` contiguous pieces of sizes differing by at most one (rank
    :math:`r` takes piece :math:`r`), and the model is wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel` with each rank's loss weighted so that
    the averaged gradient is that of the mean over the whole global minibatch: the same steps as
    one process with batch :math:`B`, whatever the sizes of the pieces (one may be empty). Every
    rank draws the same order and the same mask sets or mask keys at every step. Training and
    validation NLLs are sums reduced over the ranks, so that early stopping decides alike on
    every rank; only rank 0 writes the checkpoint and the log and shows progress, and on resume
    only rank 0 reads the checkpoint and sends it to the others, so a run may continue on any
    number of processes. Batch norm layers normalise each rank's piece with its own statistics
    (each piece needs two rows); their running averages are rank 0's, copied to every rank after
    each epoch. See ``docs/distributed.md``.

    **Mixed precision.** With ``precision="bf16"`` or ``"fp16"`` each training minibatch's
    forward pass runs under :func:`torch.autocast`: matrix products in the lower precision, the
    outputs of every MADE cast back to float32, so that the conditionals' log-probabilities, the
    log-determinants and their sums are float32; ``"fp16"`` also scales the loss with a
    :class:`torch.amp.GradScaler` (its state is checkpointed). Weights, optimiser state and
    validation stay in the model's dtype.

    Arguments:
        model: a density with ``log_prob(x)``, such as :class:`flowkit.BernoulliMADE`.
        train: training data, ``(N, D)``; for a conditional density the pair ``(x, context)``
            with ``context: (N, C)``, one context per row (each minibatch takes both); or a
            dataset of rows (see **Data**).
        valid: validation data, ``(M, D)`` (or ``(x, context)``, or a dataset), or ``None`` (no
            early stopping).
        epochs, batch_size, lr: the optimisation settings.
        weight_decay: the weight decay :math:`\lambda`. With ``optimizer="adam"`` it is an L2
            penalty added to the gradient (``torch.optim.Adam``), which Adam's per-parameter
            scaling then weakens for parameters with large gradients; with ``"adamw"`` it is
            decoupled (Loshchilov & Hutter, 2019): every step also shrinks each weight by
            :math:`\text{lr} \cdot \lambda \cdot w`, whatever its gradient; with ``"adagrad"`` it
            is an L2 penalty, as with Adam.
        optimizer: ``"adam"``, ``"adamw"`` or ``"adagrad"`` (Duchi et al., 2011: each parameter
            moves by its gradient times ``lr`` over the root of the sum of its squared gradients so
            far, ``torch.optim.Adagrad`` at its defaults; the MADE authors' optimiser, at their
            ``lr=0.01``), with torch's fused kernel where it has one for the parameters' device
            (CUDA; CPU from torch 2.4): the same update, a step several times cheaper than the
            default ``foreach`` one.
        patience: epochs without a better validation NLL before stopping.
        ensemble: the mask sets (with fresh masks: the mask keys ``0..ensemble-1``) that score
            the validation data.
        masks: ``"cycle"`` through the stored mask sets or draw a ``"fresh"`` mask for every
            minibatch (needs a density with a MADE, ``model.made``).
        seed: the seed of the minibatch shuffling.
        progress: show a tqdm bar.
        lr_schedule: ``"constant"``; ``"cosine"`` (annealed to zero over ``epochs``);
            ``"plateau"`` (halved after ``patience // 2`` epochs without a better validation NLL).
        clip: the largest gradient norm (over all parameters), or ``None``.
        device: where to train; the model and each minibatch are moved there (default: the
            model's device).
        log: a ``.jsonl`` or ``.csv`` file of one row per epoch: ``epoch`` (1-based),
            ``train_nll``, ``valid_nll``, ``lr``, ``seconds``. It is rewritten (atomically) after
            every epoch with the rows of this run, replacing an existing file; on resume, with the
            rows of the checkpoint's epochs, so that it never holds an epoch the checkpoint lacks.
        checkpoint: the file holding the training state after the last finished epoch.
        resume: continue from ``checkpoint`` if it exists (else start afresh).
        time_limit: seconds after which no new epoch starts (the one under way finishes and is
            checkpointed); a later call with ``resume=True`` continues exactly. A run is finished
            when ``history.stopped_early`` or it has had ``epochs`` epochs.
        compile: train through ``torch.compile`` of the minibatch loss (forward and backward;
            validation stays eager). The first step compiles (about a minute for a 5-layer MAF on
            one CPU thread); then a step of a small, overhead-bound flow runs about twice as fast
            on a CPU, while a large MADE, bound by its matrix products, gains nothing.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the precision of the training forward
            passes (see **Mixed precision**).
        batch_norm: the statistics the model's :class:`~flowkit.transforms.BatchNorm` layers use
            outside training: ``"running"``, their running averages; ``"population"``, the exact
            mean and variance of each layer's input over (up to 100,000 rows of) the training data,
            set before every validation and kept with the best weights
            (:func:`flowkit.transforms.set_population_statistics`; the MAF paper's protocol).
            Running averages over minibatches can swing the validation NLL of a MAF on heavy-tailed
            data by nats from one epoch to the next; population statistics do not.

    Returns:
        The :class:`History` of the run (of the whole run when resumed).

    Example:
        >>> model = flowkit.BernoulliMADE(4, [16], seed=0)
        >>> data = torch.randint(2, (200, 4)).float()
        >>> history = fit(model, data, data[:50], epochs=2)
        >>> len(history.train_nll)
        2
    """
    settings = _settings(train, valid, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         optimizer=optimizer, patience=patience, ensemble=ensemble, masks=masks, seed=seed,
                         lr_schedule=lr_schedule, clip=clip, precision=precision, batch_norm=batch_norm)
    if time_limit is not None and not time_limit > 0:
        raise FlowkitValueError(f"expected time_limit > 0 seconds, got {time_limit!r}")
    if resume and checkpoint is None:
        raise FlowkitValueError("resume=True needs a checkpoint path, got checkpoint=None")
    _check_density(model)
    made = getattr(model, "made", None)
    fresh = masks == "fresh"
    if fresh and not hasattr(made, "draw_masks"):
        raise FlowkitValueError(f"masks='fresh' needs a density with a MADE (model.made), got {type(model).__name__}")
    log_format = None if log is None else _log_format(log)
    device = distributed.local_device(_device_of(model) if device is None else torch.device(device))
    distributed.setup(device)
    main = distributed.is_main()
    state = _resume_state(checkpoint, settings, device) if resume else None
    model.to(device)
    run = _Run.start(model, device, optimizer, lr, weight_decay, lr_schedule, epochs, patience, seed, precision)
    if state is not None:
        run.restore(state, checkpoint, math.ceil(settings["train_size"] / batch_size))
        run.log = state.get("log") or _rows_before(log, log_format, run.epoch)
    if log is not None and main:
        _write_log(log, log_format, run.log)  # the rows of the checkpoint's epochs, none past it

    loss = _Loss(model, device, precision)
    minibatch_loss = _parallel(loss, model, device)
    if compile:
        minibatch_loss = torch.compile(minibatch_loss)
    scoring = dict(keys=ensemble or 1) if fresh else dict(ensemble=ensemble)
    train_rows = _rows("train data", train)  # checked by _settings above
    began_fit = time.perf_counter()
    epoch_range = _epoch_range(run, epochs, progress and main)
    population = _population_sample(train_rows, seed, device) if batch_norm == "population" else None
    try:
        for epoch in epoch_range:
            began = time.perf_counter()
            train_nll = run.train_epoch(train_rows, batch_size, minibatch_loss, masks, clip)
            distributed.sync_buffers(model)
            if population is not None:
                set_population_statistics(model, *population)
            score = None if valid is None else run.score_validation(valid, max(batch_size, 1000), scoring, patience)
            run.end_epoch(score, lr_schedule)
            run.record(epoch, train_nll, score, time.perf_counter() - began, settings, checkpoint, (log, log_format))
            if progress and main:
                epoch_range.set_postfix(train=f"{train_nll:.3f}",
                                        **({} if score is None else {"valid": f"{score:.3f}"}))
            if run.stopped or (time_limit is not None and distributed.agree(
                    time.perf_counter() - began_fit >= time_limit, device)):
                break
    finally:
        loss.remove_hooks()
    if valid is not None:
        model.load_state_dict(run.best_state)
    if fresh:
        made.draw_masks(0)
    model.eval()
    return run.history


class _Loss(nn.Module):
    """The loss of one minibatch (of one rank's piece of it), as a module that
    :class:`~torch.nn.parallel.DistributedDataParallel` can wrap.

    ``forward(x, context)`` is minus the mean log-probability; ``forward(x, context, scale)`` is
    minus ``scale`` times their sum (``scale = W / B`` for a piece of a global minibatch of ``B``
    rows over ``W`` ranks). Under a lower ``precision`` the forward pass runs in
    :func:`torch.autocast` and every MADE's output is cast back to float32.
    """

    def __init__(self, model: nn.Module, device: torch.device, precision: str):
        super().__init__()
        self.model = model
        self.device_type, self.dtype = device.type, PRECISIONS[precision]
        self.hooks = [] if precision == "fp32" else [
            module.register_forward_hook(_float32_output) for module in model.modules() if isinstance(module, MADE)]
        self.synced: list[BatchNorm] = []  # batch-norm layers whose statistics span the ranks, while training

    def forward(self, x: Tensor, context: Tensor | None, scale: float | None = None) -> Tensor:
        if scale is not None and len(x) == 0 and not self.synced:  # an empty piece still takes part in the
            return sum((parameter * 0).sum() for parameter in self.model.parameters())  # gradient average
        with (contextlib.nullcontext() if self.dtype == torch.float32
              else torch.autocast(self.device_type, dtype=self.dtype)):
            log_prob = self.model.log_prob(x, context)
        if log_prob.dtype in (torch.bfloat16, torch.float16):
            log_prob = log_prob.float()
        return -log_prob.mean() if scale is None else -log_prob.sum() * scale

    def sync_batch_norm(self) -> None:
        """Makes every :class:`~flowkit.transforms.BatchNorm` of the model use the global minibatch's statistics."""
        self.synced = [module for module in self.model.modules() if isinstance(module, BatchNorm) and not module.sync]
        for module in self.synced:
            module.sync = True

    def remove_hooks(self) -> None:
        """Undoes what this loss did to the model: the precision hooks, batch norm's synchronisation."""
        for hook in self.hooks:
            hook.remove()
        for module in self.synced:
            module.sync = False


def _float32_output(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    return output.float() if output.dtype in (torch.bfloat16, torch.float16) else output


def _parallel(loss: _Loss, model: nn.Module, device: torch.device) -> nn.Module:
    """``loss`` wrapped for data-parallel training when a process group is active, else itself.

    The wrapper broadcasts rank 0's weights and buffers once (a model built with ``seed=None``
    gets rank 0's masks everywhere); after that only gradients travel: masks, orderings and the mask
    index change alike on every rank, and batch norm's running averages are sent after each epoch
    (:func:`flowkit.distributed.sync_buffers`). Batch norm's training statistics are the global
    minibatch's (:attr:`flowkit.transforms.BatchNorm.sync`).
    """
    if not distributed.active():
        return loss
    loss.sync_batch_norm()
    from torch.nn.parallel import DistributedDataParallel

    # rank 0's buffers are sent once, at the start, not before every forward pass
    options = inspect.signature(DistributedDataParallel).parameters
    sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in options else {"broadcast_buffers": False}
    wrapped = DistributedDataParallel(loss, device_ids=[device.index] if device.type == "cuda" else None, **sync)
    for module in model.modules():
        if isinstance(module, MADE):
            module.use_mask(int(module.mask_index))  # the index rank 0 sent
    return wrapped


def _epoch_range(run: _Run, epochs: int, progress: bool):
    """The epochs still to run, behind a progress bar when ``progress``."""
    epoch_range = range(run.epoch, run.epoch if run.stopped else epochs)
    if not progress:
        return epoch_range
    from tqdm.auto import tqdm

    return tqdm(epoch_range, desc="fit", unit="epoch", initial=run.epoch, total=epochs)


def _population_sample(rows: _Rows, seed: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The fixed sample of the training rows that batch norm's population statistics are measured on
    before every validation (the same on every rank), read once per fit."""
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:POPULATION_ROWS]
    return rows.batch(pick.sort().values, device)


def _resume_state(checkpoint: str | Path, settings: dict[str, Any], device: torch.device) -> dict[str, Any] | None:
    """The checkpoint's state (``None`` when there is none yet), read on rank 0 and sent to every rank."""
    return distributed.from_main(
        lambda: _read_checkpoint(checkpoint, settings) if Path(checkpoint).exists() else None, device)


@dataclass
class _Run:
    """The state of a run between epochs, as a checkpoint holds it, and the steps of an epoch."""

    model: nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    best_state: dict[str, Tensor]
    history: History = field(default_factory=History)
    epoch: int = 0  # the epochs finished
    stopped: bool = False  # by early stopping
    step: int = 0  # the minibatches run, over the whole run (the mask keys of fresh masks)
    log: list[dict[str, Any]] = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None  # with precision="fp16"

    @classmethod
    def start(cls, model: nn.Module, device: torch.device, optimizer: str, lr: float, weight_decay: float,
              lr_schedule: str, epochs: int, patience: int, seed: int, precision: str = "fp32") -> _Run:
        optimizer = _fused(_OPTIMIZER_KINDS[optimizer], list(model.parameters()), lr=lr, weight_decay=weight_decay)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        return cls(model, device, optimizer, _scheduler(optimizer, lr_schedule, epochs, patience),
                   torch.Generator().manual_seed(seed), copy.deepcopy(model.state_dict()), scaler=scaler)

    def restore(self, state: dict[str, Any], path: str | Path, steps_per_epoch: int) -> None:
        """Continues from a checkpoint's ``state`` (read from ``path``)."""
        _load_state(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = History.from_dict(state["history"])
        self.best_state, self.epoch, self.stopped = state["best_state"], state["epoch"], state["stopped"]
        self.step = state.get("step", self.epoch * steps_per_epoch)  # checkpoints before the field
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.history.stopped_early = self.stopped  # checkpoints written before History had the field

    def state(self, settings: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint holds after the epochs finished so far."""
        return {
            "settings": settings, "epoch": self.epoch, "stopped": self.stopped, "step": self.step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "generator": self.generator.get_state(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "history": self.history.to_dict(), "best_state": self.best_state, "log": self.log,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def train_epoch(self, train: _Rows, batch_size: int, minibatch_loss, masks: str, clip: float | None) -> float:
        """One pass over ``train`` in a fresh random order (this rank's pieces of it when distributed);
        returns the mean training NLL over all of ``train``."""
        model, made = self.model, getattr(self.model, "made", None)
        model.train()
        self.history.lr.append(self.optimizer.param_groups[0]["lr"])
        world = distributed.world_size() if distributed.active() else 1
        total = 0.0
        for indices, rows in distributed.MinibatchSampler(len(train), batch_size, self.generator).with_sizes():
            if masks == "fresh":
                made.draw_masks(self.step)
            self.step += 1
            x, context = train.batch(indices, self.device)
            if world == 1:
                loss = minibatch_loss(x, context)
                total += float(loss.detach()) * len(indices)
            else:
                loss = minibatch_loss(x, context, world / rows)
                total += float(loss.detach()) * rows / world
            self._descend(loss, clip)
            if masks == "cycle" and made is not None and made.num_masks > 1:
                made.next_mask()
        total = distributed.all_sum([total], self.device)[0]
        self.history.train_nll.append(total / len(train))
        return self.history.train_nll[-1]

    def record(self, epoch: int, train_nll: float, score: float | None, seconds: float, settings: dict[str, Any],
               checkpoint: str | Path | None, log: tuple[str | Path | None, str | None]) -> None:
        """Adds the epoch's row to the log and, on rank 0, writes the checkpoint, then the log file
        ``log = (path, format)`` (after the checkpoint, which holds the rows too: a resume rewrites them)."""
        self.log.append(dict(epoch=epoch + 1, train_nll=train_nll, valid_nll=score, lr=self.history.lr[-1],
                             seconds=seconds))
        if not distributed.is_main():
            return
        if checkpoint is not None:
            save_torch(self.state(settings), checkpoint)
        if log[0] is not None:
            _write_log(log[0], log[1], self.log)

    def _descend(self, loss: Tensor, clip: float | None) -> None:
        """One optimiser step on ``loss`` (its gradients averaged over the ranks, when distributed)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def score_validation(self, valid: Tensor, batch_size: int, scoring: dict[str, Any], patience: int) -> float:
        """Scores ``valid``, keeps the best weights and decides early stopping; returns the NLL."""
        score, _ = evaluate(self.model, valid, batch_size=batch_size, **scoring)
        history = self.history
        history.valid_nll.append(score)
        if score < history.best_valid_nll:
            history.best_valid_nll, history.best_epoch = score, self.epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            self.stopped = history.stopped_early = self.epoch - history.best_epoch >= patience
        return score

    def end_epoch(self, score: float | None, lr_schedule: str) -> None:
        """Steps the learning-rate schedule and counts the epoch as finished."""
        if lr_schedule == "plateau":
            self.scheduler.step(score)
        elif self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1


@torch.no_grad()
def evaluate(
    model: Density, data: Tensor | tuple[Tensor, Tensor] | Dataset, *, ensemble: int | None = None,
    keys: int | None = None, batch_size: int = 1000, across_ranks: bool = True,
) -> tuple[float, float]:
    r"""Mean negative log-likelihood of ``data`` in nats and its standard error (NaN for one row).

    ``data`` is ``x: (N, D)``, or a pair ``(x, context)`` with ``context: (N, C)`` for a
    conditional density (the mean of minus log p(x_n | c_n)), or a dataset of rows as
    :func:`fit` takes it.

    ``data`` is moved to the model's device chunk by chunk; ``ensemble`` (the first mask sets)
    and ``keys`` (the mask keys ``0..keys-1``, see :meth:`flowkit.MADE.draw_masks`) are passed
    on only when given, so densities without mask sets (a :class:`flowkit.Flow`) are scored too.

    When a process group is active (see :mod:`flowkit.distributed`) and ``across_ranks``, every
    rank scores a contiguous share of the rows and the sums :math:`\sum_n \ell_n`,
    :math:`\sum_n \ell_n^2` and the count are reduced (in float64), so that every rank returns
    the same mean and standard error of all of ``data``; every rank must then make the call.
    ``across_ranks=False`` scores all of ``data`` here, on one rank alone if need be.

    Example:
        >>> model = flowkit.BernoulliMADE(3, [8], seed=0)
        >>> nll, se = evaluate(model, torch.ones(10, 3))
        >>> se
        0.0
    """
    _check_density(model)
    rows = _rows("data", data, least=1)
    batch_size = check_int("batch_size", batch_size, least=1)
    shared = across_ranks and distributed.active()
    share = range(len(rows))
    if shared:
        share = range(len(rows))[len(rows) * distributed.rank() // distributed.world_size():
                                 len(rows) * (distributed.rank() + 1) // distributed.world_size()]
    was_training = model.training
    model.eval()
    device = _device_of(model)
    options = {name: value for name, value in (("ensemble", ensemble), ("keys", keys)) if value is not None}
    nll = [-model.log_prob(*rows.batch(slice(start, min(start + batch_size, share.stop)), device), **options).cpu()
           for start in range(share.start, share.stop, batch_size)]
    model.train(was_training)
    if not shared:
        nll = torch.cat(nll)
        stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else math.nan
        return float(nll.mean()), stderr
    nll = torch.cat(nll).double() if nll else torch.zeros(0, dtype=torch.float64)
    total, squares, count = distributed.all_sum([float(nll.sum()), float((nll**2).sum()), len(nll)], device)
    mean = total / count
    variance = max(squares - count * mean**2, 0.0) / (count - 1) if count > 1 else math.nan
    return mean, math.sqrt(variance / count) if count > 1 else math.nan


def _check_density(model: Any) -> None:
    if not isinstance(model, nn.Module) or not isinstance(model, Density):
        raise FlowkitTypeError(f"expected model to be a density (a torch module with log_prob(x, context=None), "
                               f"see flowkit.density.Density), got {type(model).__name__}")


_minibatches = distributed.minibatches


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _fused(kind: type[torch.optim.Optimizer], params: list[nn.Parameter], **options: Any) -> torch.optim.Optimizer:
    """``kind(params, **options)`` with torch's fused kernel where it has one for the parameters'
    device and dtype (CUDA; CPU from torch 2.4), else torch's default implementation.

    The same update; fused, the step of the affine MAF of ``experiments/bench_train.py`` (D=63,
    5 x [512, 512]) costs 1.4-2.0 ms on one CPU thread against 5-9 ms for the default (``foreach``),
    5-8% of a whole training step. A checkpoint keeps the choice: a run resumes with the kernel it
    started with.
    """
    try:
        return kind(params, fused=True, **options)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype in this torch
        return kind(params, **options)


def _scheduler(optimizer: torch.optim.Optimizer, lr_schedule: str, epochs: int, patience: int):
    if lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if lr_schedule == "plateau":
        # torch reduces after more than `patience` bad epochs; we halve after `patience // 2`,
        # and count as better exactly what early stopping counts (threshold 0).
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(patience // 2 - 1, 0), threshold=0.0)
    return None


REQUIRED = ("settings", "epoch", "stopped", "model", "optimizer", "scheduler", "generator", "rng", "cuda_rng",
            "history", "best_state")


def _settings(train: Tensor, valid: Tensor | None, **options: Any) -> dict[str, Any]:
    """The checked settings of a run, as a checkpoint records them."""
    if options["lr_schedule"] not in SCHEDULES:
        raise FlowkitValueError(f"expected lr_schedule in {SCHEDULES}, got {options['lr_schedule']!r}")
    if options["optimizer"] not in OPTIMIZERS:
        raise FlowkitValueError(f"expected optimizer in {OPTIMIZERS}, got {options['optimizer']!r}")
    if options["masks"] not in MASK_MODES:
        raise FlowkitValueError(f"expected masks in {MASK_MODES}, got {options['masks']!r}")
    for name, least in (("epochs", 0), ("batch_size", 1), ("patience", 0), ("seed", None)):
        options[name] = check_int(name, options[name], least=least)
    if options["ensemble"] is not None:
        options["ensemble"] = check_int("ensemble", options["ensemble"], least=1)
    options["lr"] = check_float("lr", options["lr"], above=0)
    options["weight_decay"] = check_float("weight_decay", options["weight_decay"], least=0)
    if options["clip"] is not None:
        options["clip"] = check_float("clip", options["clip"], above=0)
    if options["lr_schedule"] == "plateau" and valid is None:
        raise FlowkitValueError("lr_schedule='plateau' needs validation data, got valid=None")
    check_option("precision", options["precision"], tuple(PRECISIONS))
    check_option("batch_norm", options["batch_norm"], BATCH_NORM_STATISTICS)
    train_size = len(_rows("train data", train))
    if valid is not None:
        _rows("valid data", valid)
    return {**options, "train_size": train_size}


class _Rows:
    """Data that :func:`fit` and :func:`evaluate` read by rows: a tensor, an ``(x, context)`` pair of
    tensors or a map-style dataset of rows (see :func:`fit`)."""

    def __init__(self, name: str, data: Any, least: int = 2):
        self.name, self.dataset = name, data if isinstance(data, Dataset) else None
        if self.dataset is None:
            self.x, self.context = _pairs(name, data, least)
            self.size = len(self.x)
            return
        self.size = _dataset_size(name, data)
        x, context = self.batch([0])
        if x.dim() < least:
            raise FlowkitValueError(f"expected the rows of {name} to have at least {least - 1} dimension(s), "
                                    f"got item 0 of shape {tuple(x.shape[1:])}")
        self.conditional = context is not None

    def __len__(self) -> int:
        return self.size

    def batch(self, indices: Tensor | slice | list[int], device: torch.device | None = None
              ) -> tuple[Tensor, Tensor | None]:
        """Rows ``indices`` as ``(x, context)`` (``context`` ``None`` for unconditional data), on ``device``."""
        if self.dataset is None:
            x, context = self.x[indices], None if self.context is None else self.context[indices]
        else:
            x, context = self._read(indices)
        if device is not None:
            x, context = x.to(device), None if context is None else context.to(device)
        return x, context

    def _read(self, indices: Tensor | slice | list[int]) -> tuple[Tensor, Tensor | None]:
        if isinstance(indices, slice):
            indices = list(range(*indices.indices(self.size)))
        elif isinstance(indices, Tensor):
            indices = indices.tolist()
        read = getattr(self.dataset, "__getitems__", None)
        got = read(indices) if read is not None else [self.dataset[i] for i in indices]
        x, context = _stack(self.name, got) if isinstance(got, list) else _item(self.name, got, "__getitems__")
        for label, value in (("x", x), ("context", context)):
            if value is not None and len(value) != len(indices):
                raise FlowkitValueError(f"expected {len(indices)} rows of {self.name} {label} for {len(indices)} "
                                        f"indices, got {len(value)}")
        return x, context


def _rows(name: str, data: Any, least: int = 2) -> _Rows:
    return data if isinstance(data, _Rows) else _Rows(name, data, least)


def _dataset_size(name: str, dataset: Dataset) -> int:
    try:
        size = len(dataset)
    except TypeError:
        raise FlowkitTypeError(f"expected {name} to be a map-style dataset with a length, got "
                               f"{type(dataset).__name__} without __len__") from None
    if size < 1:
        raise FlowkitValueError(f"expected {name} with at least one row, got an empty {type(dataset).__name__}")
    return size


def _item(name: str, item: Any, what: str = "an item") -> tuple[Tensor, Tensor | None]:
    """A row, or stacked rows, as ``(x, context)``: a tensor, ``(x,)`` or ``(x, context)``."""
    if isinstance(item, (tuple, list)) and len(item) in (1, 2):
        x, context = item[0], item[1] if len(item) == 2 else None
    else:
        x, context = item, None
    try:
        return torch.as_tensor(x), None if context is None else torch.as_tensor(context)
    except (TypeError, ValueError, RuntimeError):
        raise FlowkitTypeError(f"expected {what} of {name} to be a row tensor or an (x, context) pair of tensors, "
                               f"got {type(item).__name__}") from None


def _stack(name: str, items: list[Any]) -> tuple[Tensor, Tensor | None]:
    pairs = [_item(name, item) for item in items]
    if any((context is None) != (pairs[0][1] is None) for _, context in pairs):
        raise FlowkitValueError(f"expected every item of {name} to have a context or none to, got a mix")
    x = torch.stack([x for x, _ in pairs])
    return x, None if pairs[0][1] is None else torch.stack([context for _, context in pairs])


def _pairs(name: str, data: Any, least: int = 2) -> tuple[Tensor, Tensor | None]:
    """``data`` as ``(x, context)``: a tensor ``x`` of ``least`` or more dimensions and at least one
    row, or a tuple ``(x, context)`` whose context has as many rows."""
    x, context = data if isinstance(data, tuple) and len(data) == 2 else (data, None)
    for label, value in ((name, x), (f"{name} context", context)):
        if value is not None or label == name:
            if not isinstance(value, Tensor):
                raise FlowkitTypeError(f"expected {label} to be a torch.Tensor, got {type(value).__name__}")
    if least == 2 and (x.dim() < 2 or len(x) == 0):
        raise FlowkitValueError(f"expected {name} of shape (N, D) with N >= 1, got {tuple(x.shape)}")
    if x.dim() < 1 or len(x) == 0:
        raise FlowkitValueError(f"expected {name} with at least one row to score, got shape {tuple(x.shape)}")
    if context is not None and (context.dim() < 2 or len(context) != len(x)):
        raise FlowkitValueError(f"expected the {name} context of shape ({len(x)}, C), one row per row of x, "
                                f"got {tuple(context.shape)}")
    return x, context


def check_resume(checkpoint: str | Path, train: Tensor, valid: Tensor | None = None, **options: Any) -> int:
    """Checks, without training, that :func:`fit` with ``checkpoint`` and ``resume=True`` (and these
    data and keyword options) would continue the run in ``checkpoint``; returns its finished epochs.

    Raises :class:`flowkit.errors.FileProblem` for a damaged checkpoint and
    :class:`flowkit.FlowkitValueError` when the settings differ (only ``epochs`` may grow, and not
    under a cosine schedule). A missing checkpoint is fine: the run starts from epoch 0.

    Example:
        >>> import tempfile
        >>> model, data = flowkit.BernoulliMADE(3, [8], seed=0), torch.ones(20, 3)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = fit(model, data, data, epochs=2, checkpoint=f"{folder}/c.pt")
        ...     check_resume(f"{folder}/c.pt", data, data, epochs=3)
        ...     check_resume(f"{folder}/c.pt", data, data, epochs=3, lr=0.01)
        Traceback (most recent call last):
        ...
        flowkit.errors.FlowkitValueError: cannot resume from .../c.pt: the settings changed (lr 0.001 -> 0.01)
    """
    defaults = {name: parameter.default for name, parameter in inspect.signature(fit).parameters.items()
                if name in FIT_SETTINGS}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise FlowkitTypeError(f"check_resume got options fit does not record: {', '.join(unknown)}")
    settings = _settings(train, valid, **{**defaults, **options})
    if not Path(checkpoint).exists():
        return 0
    return int(_read_checkpoint(checkpoint, settings)["epoch"])


FIT_SETTINGS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "patience", "ensemble", "masks", "seed",
                "lr_schedule", "clip", "precision", "batch_norm")


def _read_checkpoint(path: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    remedy = "delete it to train from the start"
    state = load_torch(path, "checkpoint", remedy)
    missing = [key for key in REQUIRED if not isinstance(state, dict) or key not in state]
    if missing:
        raise FileProblem(f"checkpoint {path} is not a flowkit training checkpoint (it lacks {', '.join(missing)}); "
                          f"{remedy}")
    _check_settings(state["settings"], settings, path)
    return state


def _load_state(model: nn.Module, state_dict: dict[str, Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0] if first else ""
        raise FileProblem(f"the weights in {path} do not fit this model ({detail.rstrip('.')}): it was written for "
                          "another architecture") from None


def _check_settings(saved: dict, settings: dict, path: str | Path) -> None:
    # Only the number of epochs may grow, and not under a cosine schedule (it anneals over it).
    saved = {**LATER_SETTINGS, **saved}
    changed = [key for key in settings if saved.get(key) != settings[key]
               and (key != "epochs" or settings["lr_schedule"] == "cosine")]
    if changed:
        differences = ", ".join(f"{key} {saved.get(key)!r} -> {settings[key]!r}" for key in changed)
        raise FlowkitValueError(f"cannot resume from {path}: the settings changed ({differences})")


def _log_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise FlowkitValueError(f"expected a log file ending in .jsonl or .csv, got {str(path)!r}")


def _rows_before(path: str | Path | None, log_format: str | None, epochs: int) -> list[dict[str, Any]]:
    """The rows of an existing log for epochs ``1..epochs`` (for checkpoints that do not hold them)."""
    if path is None or not Path(path).is_file():
        return []
    rows = []
    with open(path, newline="") as file:
        if log_format == "jsonl":
            for line in file:
                with contextlib.suppress(json.JSONDecodeError):
                    rows.append(json.loads(line))
        else:
            for row in csv.DictReader(file):
                with contextlib.suppress(TypeError, ValueError):
                    rows.append({key: int(row["epoch"]) if key == "epoch" else float(row[key]) if row[key] else None
                                 for key in LOG_FIELDS})
    return [row for row in rows if isinstance(row, dict) and isinstance(row.get("epoch"), int)
            and 1 <= row["epoch"] <= epochs]


def _write_log(path: str | Path, log_format: str, rows: list[dict[str, Any]]) -> None:
    """Rewrites the log with ``rows``, atomically."""
    with atomic_path(path) as partial, partial.open("w", newline="") as file:
        if log_format == "jsonl":
            file.writelines(json.dumps(row) + "\n" for row in rows)
        else:
            writer = csv.DictWriter(file, fieldnames=LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

