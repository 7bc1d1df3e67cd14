"""Data-parallel training (flowkit.distributed and fit under torchrun): real gloo process groups of two
processes (four for a resume), started by these tests with torchrun's environment, against one process on the same data.

Run as a script (``python tests/test_distributed.py CASE FOLDER``) this file is the worker of one rank.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import flowkit
from flowkit import distributed
from flowkit.train import evaluate, fit

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
MADE_OPTIONS = dict(epochs=2, batch_size=16, lr=1e-2, patience=5)
UNEVEN_OPTIONS = dict(epochs=2, batch_size=15, lr=1e-2, masks="fresh", ensemble=2)  # pieces of 8 and 7, last 10
MAF_OPTIONS = dict(epochs=2, batch_size=16, lr=1e-2, clip=5.0, lr_schedule="cosine")
BN_OPTIONS = dict(epochs=2, batch_size=15, lr=1e-2)  # pieces of 8 and 7 on two ranks
TINY_BN_OPTIONS = dict(epochs=1, batch_size=3, lr=1e-2)  # pieces of 1, 1, 1 and 0 rows on four ranks


def _binary() -> torch.Tensor:
    return (torch.rand(100, 6, generator=torch.Generator().manual_seed(1)) < 0.4).double()


def _made() -> flowkit.BernoulliMADE:
    return flowkit.BernoulliMADE(6, [24], num_masks=3, order_agnostic=True, seed=0).double()


def _conditional() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    context = torch.randn(80, 2, generator=generator, dtype=torch.float64)
    return context @ torch.ones(2, 3, dtype=torch.float64) + torch.randn(80, 3, generator=generator,
                                                                          dtype=torch.float64), context


def _maf(**options) -> flowkit.Flow:
    return flowkit.MAF(3, 2, [16], context_features=2, seed=0, **options).double()


# ---------------------------------------------------------------- the worker of one rank


def _work(case: str, folder: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    results = {}
    if case == "train":
        data = _binary()
        for name, options in (("made", MADE_OPTIONS), ("uneven", UNEVEN_OPTIONS)):
            model = _made()
            history = fit(model, data[:80], data[80:], checkpoint=folder / f"{name}-{rank}.pt",
                          log=folder / f"{name}-{rank}.jsonl", **options)
            results[name] = dict(history=history.to_dict(), test=evaluate(model, data[80:]))
            torch.save(model.state_dict(), folder / f"{name}-state-{rank}.pt")
            if rank == 0:  # only rank 0 has the checkpoint: it reads it and sends it to rank 1
                shutil.copy(folder / f"{name}-0.pt", folder / f"{name}-more-0.pt")
            model = _made()
            history = fit(model, data[:80], data[80:], checkpoint=folder / f"{name}-more-{rank}.pt", resume=True,
                          **{**options, "epochs": 4})
            results[f"{name}-more"] = dict(history=history.to_dict())
            torch.save(model.state_dict(), folder / f"{name}-more-state-{rank}.pt")
        x, context = _conditional()
        model = _maf()
        history = fit(model, TensorDataset(x[:64], context[:64]), (x[64:], context[64:]),
                      checkpoint=folder / f"maf-{rank}.pt", **MAF_OPTIONS)
        results["maf"] = dict(history=history.to_dict(), test=evaluate(model, (x[64:], context[64:])))
        torch.save(model.state_dict(), folder / f"maf-state-{rank}.pt")
        model = _maf(batch_norm=True)
        history = fit(model, (x[:64], context[:64]), (x[64:], context[64:]), **BN_OPTIONS)
        results["bn"] = dict(history=history.to_dict())
        torch.save(model.state_dict(), folder / f"bn-state-{rank}.pt")
    elif case == "resume":  # continue the two-rank checkpoints {name}.pt (in folder) on this world size
        data = _binary()
        for name, options in (("made", MADE_OPTIONS), ("uneven", UNEVEN_OPTIONS)):
            model = _made()
            history = fit(model, data[:80], data[80:], checkpoint=folder / f"{name}.pt", resume=True,
                          **{**options, "epochs": 4})
            results[name] = dict(history=history.to_dict())
            torch.save(model.state_dict(), folder / f"{name}-state-{rank}.pt")
        x, context = _conditional()
        model = _maf(batch_norm=True)
        fit(model, (x[:24], context[:24]), **TINY_BN_OPTIONS)
        torch.save(model.state_dict(), folder / f"tiny-bn-state-{rank}.pt")
    (folder / f"results-{rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(command: list[str], folder: Path, world: int = 2, timeout: float = 120) -> list[str]:
    """Runs ``command`` as ``world`` processes with the environment torchrun gives its workers (a gloo
    group on this machine, one thread each); returns their outputs, raising if any fails."""
    port = _free_port()
    processes = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        processes.append(subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output}"
    return outputs


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ranks")
    launch([sys.executable, str(HERE), "train", str(folder)], folder)
    return folder


def _results(folder: Path, rank: int) -> dict:
    return json.loads((folder / f"results-{rank}.json").read_text())


def _assert_close_models(a: dict, b: dict, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=1e-9, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key  # masks, orderings, the mask index, the mask seed


def _assert_close_histories(a: dict, b: dict) -> None:
    for key in ("train_nll", "valid_nll", "lr"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
    assert (a["best_epoch"], a["stopped_early"]) == (b["best_epoch"], b["stopped_early"])


# ---------------------------------------------------------------- two ranks against one process


@pytest.mark.parametrize("name, options", [("made", MADE_OPTIONS), ("uneven", UNEVEN_OPTIONS)])
def test_two_ranks_take_the_steps_of_one_process_for_a_made_with_several_mask_sets(two_ranks, name, options):
    data = _binary()
    single = _made()
    history = fit(single, data[:80], data[80:], **options)
    states = [torch.load(two_ranks / f"{name}-state-{rank}.pt", weights_only=True) for rank in (0, 1)]
    _assert_close_models(states[0], single.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])  # the ranks agree exactly
    for rank in (0, 1):
        result = _results(two_ranks, rank)[name]
        _assert_close_histories(result["history"], history.to_dict())
        assert result["test"] == pytest.approx(evaluate(single, data[80:]), rel=1e-9)  # reduced over the ranks


def test_two_ranks_take_the_steps_of_one_process_for_a_conditional_maf(two_ranks):
    x, context = _conditional()
    single = _maf()
    history = fit(single, (x[:64], context[:64]), (x[64:], context[64:]), **MAF_OPTIONS)
    states = [torch.load(two_ranks / f"maf-state-{rank}.pt", weights_only=True) for rank in (0, 1)]
    _assert_close_models(states[0], single.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    _assert_close_histories(_results(two_ranks, 1)["maf"]["history"], history.to_dict())


def test_two_ranks_take_the_steps_of_one_process_for_a_maf_with_batch_norm(two_ranks):
    # batch norm's training statistics are the global minibatch's, every rank's piece together
    x, context = _conditional()
    single = _maf(batch_norm=True)
    history = fit(single, (x[:64], context[:64]), (x[64:], context[64:]), **BN_OPTIONS)
    states = [torch.load(two_ranks / f"bn-state-{rank}.pt", weights_only=True) for rank in (0, 1)]
    _assert_close_models(states[0], single.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    _assert_close_histories(_results(two_ranks, 1)["bn"]["history"], history.to_dict())
    assert not any(module.sync for module in single.modules() if isinstance(module, flowkit.transforms.BatchNorm))


def test_only_rank_0_writes_checkpoints_and_logs(two_ranks):
    for name in ("made", "uneven", "maf"):
        assert (two_ranks / f"{name}-0.pt").is_file() and not (two_ranks / f"{name}-1.pt").exists()
    for name in ("made", "uneven"):
        assert (two_ranks / f"{name}-0.jsonl").is_file() and not (two_ranks / f"{name}-1.jsonl").exists()
    saved = torch.load(two_ranks / "made-0.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in saved["model"])  # the unwrapped model's state
    assert saved["epoch"] == 2 and saved["settings"]["batch_size"] == 16  # the global minibatch


@pytest.mark.parametrize("name, options", [("made", MADE_OPTIONS), ("uneven", UNEVEN_OPTIONS)])
def test_a_two_rank_run_resumes_in_one_process_and_on_two_to_the_uninterrupted_run(two_ranks, tmp_path, name,
                                                                                   options):
    data = _binary()
    options = {**options, "epochs": 4}
    straight = _made()
    expected = fit(straight, data[:80], data[80:], **options)
    shutil.copy(two_ranks / f"{name}-0.pt", tmp_path / "run.pt")
    resumed = _made()
    history = fit(resumed, data[:80], data[80:], checkpoint=tmp_path / "run.pt", resume=True, **options)
    _assert_close_histories(history.to_dict(), expected.to_dict())
    _assert_close_models(resumed.state_dict(), straight.state_dict())
    for rank in (0, 1):  # resumed on two ranks, the checkpoint read by rank 0 alone
        _assert_close_histories(_results(two_ranks, rank)[f"{name}-more"]["history"], expected.to_dict())
        state = torch.load(two_ranks / f"{name}-more-state-{rank}.pt", weights_only=True)
        _assert_close_models(state, straight.state_dict())
    assert not (two_ranks / f"{name}-more-1.pt").exists()


def test_a_two_rank_run_resumes_on_four_ranks_to_the_uninterrupted_run(two_ranks, tmp_path):
    # the world grows from 2 to 4: the global minibatch (16, or 15 in pieces of 4, 4, 4, 3) stays
    data = _binary()
    for name in ("made", "uneven"):
        shutil.copy(two_ranks / f"{name}-0.pt", tmp_path / f"{name}.pt")
    launch([sys.executable, str(HERE), "resume", str(tmp_path)], tmp_path, world=4)
    for name, options in (("made", MADE_OPTIONS), ("uneven", UNEVEN_OPTIONS)):
        straight = _made()
        expected = fit(straight, data[:80], data[80:], **{**options, "epochs": 4})
        for rank in range(4):
            _assert_close_histories(_results(tmp_path, rank)[name]["history"], expected.to_dict())
            state = torch.load(tmp_path / f"{name}-state-{rank}.pt", weights_only=True)
            _assert_close_models(state, straight.state_dict())
    x, context = _conditional()  # batch norm over pieces of 1, 1, 1 and 0 rows: the empty piece takes part
    single = _maf(batch_norm=True)
    fit(single, (x[:24], context[:24]), **TINY_BN_OPTIONS)
    for rank in range(4):
        _assert_close_models(torch.load(tmp_path / f"tiny-bn-state-{rank}.pt", weights_only=True), single.state_dict())


def test_flowkit_fit_under_two_ranks_writes_one_run_and_prints_once(tmp_path):
    command = [sys.executable, "-m", "flowkit", "fit", "--data", "digits", "--hidden", "64", "--epochs", "2",
               "--out", "run"]
    outputs = launch(command, tmp_path)
    assert "test NLL" in outputs[0] and outputs[1].strip() == ""
    run = tmp_path / "run"
    assert {"config.json", "checkpoint.pt", "metrics.jsonl", "metrics.json", "model.pt", "curves.png"} <= {
        path.name for path in run.iterdir()}
    assert not [path for path in run.iterdir() if path.name.endswith(".part")]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "config.json").read_text())["training"]["precision"] == "fp32"


# ---------------------------------------------------------------- without a process group


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.setup("cpu") and not distributed.launched()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0] and distributed.from_main(lambda: 3) == 3


@pytest.mark.parametrize("size, batch_size, world", [(100, 16, 2), (100, 15, 2), (10, 4, 3), (9, 8, 4)])
def test_the_ranks_pieces_cover_every_global_minibatch_once(size, batch_size, world):
    def pieces(rank, world):
        return list(distributed.MinibatchSampler(size, batch_size, torch.Generator().manual_seed(3), rank=rank,
                                                 world=world).with_sizes())

    single = pieces(0, 1)
    ranks = [pieces(rank, world) for rank in range(world)]
    assert all(len(rank) == len(single) for rank in ranks)  # every rank steps with every other
    for step, (batch, rows) in enumerate(single):
        assert torch.equal(torch.cat([rank[step][0] for rank in ranks]), batch)
        assert all(rank[step][1] == rows == len(batch) for rank in ranks)
        sizes = [len(rank[step][0]) for rank in ranks]
        assert max(sizes) - min(sizes) <= 1


class _Rows(Dataset):
    """Rows of a tensor, read one by one or a minibatch at a time (``__getitems__``)."""

    def __init__(self, x: torch.Tensor, batched: bool):
        self.x, self.reads = x, []
        if batched:
            self.__getitems__ = self._getitems

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]

    def _getitems(self, indices: list[int]) -> torch.Tensor:
        self.reads.append(len(indices))
        return self.x[indices]


@pytest.mark.parametrize("batched", [False, True])
def test_fit_on_a_dataset_of_rows_equals_fit_on_the_tensor(batched):
    data = _binary().float()
    expected_model = flowkit.BernoulliMADE(6, [16], seed=0)
    expected = fit(expected_model, data[:80], data[80:], epochs=2, batch_size=16)
    model, train = flowkit.BernoulliMADE(6, [16], seed=0), _Rows(data[:80], batched)
    assert fit(model, train, _Rows(data[80:], batched), epochs=2, batch_size=16) == expected
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected_model.state_dict().values()))
    if batched:
        assert [n for n in train.reads if n > 1] == [16] * 10  # whole minibatches, 5 an epoch


def test_a_dataset_of_bad_items_is_refused_naming_the_data():
    with pytest.raises(flowkit.FlowkitTypeError, match="train data"):
        fit(flowkit.BernoulliMADE(3, [8], seed=0), _Rows(["a", "b"], batched=False), epochs=1)
    with pytest.raises(flowkit.FlowkitValueError, match="at least one row"):
        fit(flowkit.BernoulliMADE(3, [8], seed=0), TensorDataset(torch.zeros(0, 3)), epochs=1)


if __name__ == "__main__":
    _work(sys.argv[1], Path(sys.argv[2]))
