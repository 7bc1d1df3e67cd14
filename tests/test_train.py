"""Training: early stopping, mask cycling, evaluation, the digits baseline comparison, and
checkpoints, exact resuming, lr schedules, gradient clipping and metric logs."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import flowkit
from flowkit.baselines import IndependentBernoulli
from flowkit.data import digits
from flowkit.train import History, evaluate, fit


@pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")
def test_made_beats_independent_bernoullis_on_held_out_digits():
    train, valid, test = digits()
    torch.manual_seed(0)
    model = flowkit.BernoulliMADE(64, [200], seed=0)
    fit(model, train, valid, epochs=40, patience=10)
    made_nll, made_se = evaluate(model, test)
    independent_nll, _ = evaluate(IndependentBernoulli(train), test)
    assert made_nll < independent_nll - 2.0, (made_nll, independent_nll)
    assert 0 < made_se < 1


def test_independent_bernoulli_is_the_smoothed_frequency():
    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    model = IndependentBernoulli(train, smoothing=1.0)
    p = torch.tensor([3 / 5, 1 / 5])
    x = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    expected = torch.stack([p.log().sum(), (1 - p).log().sum()])
    assert torch.allclose(model.log_prob(x), expected.float())
    with pytest.raises(ValueError, match="binary"):
        model.log_prob(torch.tensor([[0.5, 1.0]]))


def test_fit_restores_the_best_validation_epoch_and_stops_early():
    generator = torch.Generator().manual_seed(0)
    train = (torch.rand(64, 8, generator=generator) < 0.3).float()
    valid = (torch.rand(64, 8, generator=generator) < 0.7).float()  # another distribution: overfits
    model = flowkit.BernoulliMADE(8, [64], seed=0)
    history = fit(model, train, valid, epochs=200, patience=5, lr=1e-2)
    assert len(history.valid_nll) == history.best_epoch + 6 < 200
    assert history.best_valid_nll == min(history.valid_nll)
    assert math.isclose(evaluate(model, valid)[0], history.best_valid_nll, rel_tol=1e-5)
    assert not model.training


def test_fit_cycles_mask_sets_once_per_minibatch():
    model = flowkit.BernoulliMADE(6, [32], num_masks=5, order_agnostic=True, seed=0)
    data = torch.randint(2, (70, 6)).float()
    fit(model, data, epochs=1, batch_size=10)  # 7 minibatches
    assert model.made.current_mask == 7 % 5


def test_evaluate_matches_log_prob_and_restores_training_mode():
    model = flowkit.BernoulliMADE(5, [16], num_masks=3, seed=0)
    data = torch.randint(2, (40, 5)).float()
    model.train()
    nll, se = evaluate(model, data, ensemble=3, batch_size=7)
    with torch.no_grad():
        values = -model.log_prob(data, ensemble=3)
    assert math.isclose(nll, float(values.mean()), rel_tol=1e-6)
    assert math.isclose(se, float(values.std() / math.sqrt(40)), rel_tol=1e-5)
    assert model.training


# Checkpoints, resuming, schedules, clipping and logs, on small models that train in milliseconds.

_BINARY = (torch.rand(60, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
_GAUSS = torch.randn(64, 2, generator=torch.Generator().manual_seed(2)) * torch.tensor([1.0, 3.0])


def _made():
    return flowkit.BernoulliMADE(6, [16], num_masks=3, order_agnostic=True, seed=0)


def _maf():
    return flowkit.MAF(2, 2, [16], batch_norm=True, seed=0)


def _fresh():
    torch.manual_seed(0)  # dropout draws from torch's generator
    return flowkit.BernoulliMADE(6, 16, order_agnostic=True, residual_blocks=1, dropout=0.1, seed=0)


CASES = {  # model, train, valid, options
    "made-masks": (_made, _BINARY[:40], _BINARY[40:], dict(batch_size=16, lr=1e-2, ensemble=3)),
    "maf-batchnorm": (_maf, _GAUSS[:48], _GAUSS[48:], dict(batch_size=16, lr=1e-2)),
    "made-plateau-clip": (_made, _BINARY[:40], _BINARY[40:], dict(batch_size=16, lr=5e-2, patience=2,
                                                                  lr_schedule="plateau", clip=0.5)),
    "made-fresh-masks": (_fresh, _BINARY[:40], _BINARY[40:], dict(batch_size=16, lr=1e-2, ensemble=3,
                                                                 masks="fresh")),
}


def _assert_same_model(a, b):
    for (name, x), (_, y) in zip([*a.named_parameters(), *a.named_buffers()],
                                 [*b.named_parameters(), *b.named_buffers()]):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("case", CASES)
def test_a_run_stopped_and_resumed_on_a_fresh_model_equals_an_uninterrupted_run(case, tmp_path):
    build, train, valid, options = CASES[case]
    straight = build()
    expected = fit(straight, train, valid, epochs=6, checkpoint=tmp_path / "straight.pt", **options)
    fit(build(), train, valid, epochs=3, checkpoint=tmp_path / "run.pt", **options)
    assert torch.load(tmp_path / "run.pt", weights_only=True)["epoch"] == 3
    resumed = build()
    history = fit(resumed, train, valid, epochs=6, checkpoint=tmp_path / "run.pt", resume=True, **options)
    assert history == expected and len(history.train_nll) > 3  # plateau-clip stops early at 4
    _assert_same_model(resumed, straight)
    again = build()  # the finished checkpoint: nothing left to train, the best model is restored
    assert fit(again, train, valid, epochs=6, checkpoint=tmp_path / "run.pt", resume=True, **options) == expected
    _assert_same_model(again, straight)


@pytest.mark.parametrize("build, train, valid, masks", [(_made, _BINARY[:40], _BINARY[40:], "cycle"),
                                                        (_fresh, _BINARY[:40], _BINARY[40:], "fresh"),
                                                        (_maf, _GAUSS[:48], _GAUSS[48:], "cycle")])
def test_a_crash_mid_epoch_resumes_exactly_under_a_cosine_schedule(build, train, valid, masks, tmp_path,
                                                                   monkeypatch):
    options = dict(epochs=6, batch_size=16, lr=1e-2, lr_schedule="cosine", masks=masks)
    straight = build()
    expected = fit(straight, train, valid, **options)

    calls = []

    def crash_in_the_fourth_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # epoch 4 has trained, the checkpoint of epoch 3 is on disk
            raise RuntimeError("killed")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(flowkit.train, "evaluate", crash_in_the_fourth_epoch)
    with pytest.raises(RuntimeError, match="killed"):
        fit(build(), train, valid, checkpoint=tmp_path / "run.pt", **options)
    monkeypatch.undo()
    saved = torch.load(tmp_path / "run.pt", weights_only=True)
    assert saved["epoch"] == 3 and saved["scheduler"]["last_epoch"] == 3

    resumed = build()
    history = fit(resumed, train, valid, checkpoint=tmp_path / "run.pt", resume=True, **options)
    assert history == expected
    _assert_same_model(resumed, straight)
    with pytest.raises(ValueError, match="epochs 6 -> 8"):  # cosine anneals over `epochs`
        fit(build(), train, valid, checkpoint=tmp_path / "run.pt", resume=True, **{**options, "epochs": 8})


def test_resume_without_a_checkpoint_file_starts_afresh(tmp_path):
    fresh, resumed = _made(), _made()
    expected = fit(fresh, _BINARY, epochs=2, batch_size=16)
    assert fit(resumed, _BINARY, epochs=2, batch_size=16, checkpoint=tmp_path / "new.pt", resume=True) == expected
    _assert_same_model(resumed, fresh)
    with pytest.raises(ValueError, match="checkpoint"):
        fit(_made(), _BINARY, epochs=1, resume=True)


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    real_save = torch.save

    def save_then_fail_at_epoch_3(state, file, *args, **kwargs):
        if state["epoch"] < 3:
            return real_save(state, file, *args, **kwargs)
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail_at_epoch_3)
    with pytest.raises(OSError, match="disk full"):
        fit(_made(), _BINARY, epochs=5, batch_size=16, checkpoint=path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 2

    straight, resumed = _made(), _made()
    expected = fit(straight, _BINARY, epochs=5, batch_size=16)
    assert fit(resumed, _BINARY, epochs=5, batch_size=16, checkpoint=path, resume=True) == expected
    _assert_same_model(resumed, straight)


@pytest.mark.parametrize("name", ["metrics.jsonl", "metrics.csv"])
def test_the_log_has_one_row_per_epoch_and_cosine_lowers_the_lr(name, tmp_path):
    path = tmp_path / name
    fit(_made(), _BINARY[:40], _BINARY[40:], epochs=4, batch_size=16, lr_schedule="cosine", log=path)
    if name.endswith(".csv"):
        rows = list(csv.DictReader(path.open()))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4
    assert all(list(row) == ["epoch", "train_nll", "valid_nll", "lr", "seconds"] for row in rows)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    lrs = [float(row["lr"]) for row in rows]
    assert lrs[0] == 1e-3 and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))
    assert all(float(row["seconds"]) >= 0 and math.isfinite(float(row["valid_nll"])) for row in rows)
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        fit(_made(), _BINARY, epochs=1, log=tmp_path / "metrics.txt")


def test_plateau_halves_the_lr_after_half_the_patience_without_improvement(tmp_path, monkeypatch):
    monkeypatch.setattr(flowkit.train, "evaluate", lambda *args, **kwargs: (1.0, 0.0))  # never improves again
    history = fit(_made(), _BINARY, _BINARY, epochs=10, batch_size=16, lr=1e-2, patience=4,
                  lr_schedule="plateau", checkpoint=tmp_path / "run.pt")
    assert history.lr == [1e-2, 1e-2, 1e-2, 5e-3, 5e-3] and history.best_epoch == 0
    assert torch.load(tmp_path / "run.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == 2.5e-3
    with pytest.raises(ValueError, match="validation"):
        fit(_made(), _BINARY, epochs=1, lr_schedule="plateau")


@pytest.mark.parametrize("clip", [None, 0.05])
def test_clip_bounds_the_gradient_norm_at_every_step(clip):
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        fit(_made(), _BINARY, epochs=2, batch_size=16, clip=clip, device="cpu")
    finally:
        handle.remove()
    assert len(norms) == 8
    if clip is None:
        assert max(norms) > 0.05
    else:
        assert max(norms) <= clip * (1 + 1e-5)


def test_history_round_trips_through_a_dict_and_json():
    history = fit(_made(), _BINARY[:40], _BINARY[40:], epochs=2, batch_size=16)
    assert History.from_dict(history.to_dict()) == history
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    assert History.from_dict(History().to_dict()) == History()


def _masked_out_weights(model):
    layer = model.made.layers[0]
    return layer.weight.detach()[~layer.masks[0]].clone()


def test_adamw_decays_weights_that_get_no_gradient_by_exactly_one_minus_lr_lambda_per_step():
    # Masked-out weights have an exactly zero gradient: under decoupled decay (AdamW) each step
    # only shrinks them by (1 - lr * lambda); under Adam's coupled L2 penalty the gradient is
    # lambda * w, which Adam normalises to a step of about lr * sign(w), whatever lambda is.
    torch.manual_seed(0)
    data = torch.randint(2, (60, 5)).float()
    lr, decay, steps = 1e-2, 0.5, 3  # 60 rows in batches of 20, one epoch
    adamw = flowkit.BernoulliMADE(5, [12], seed=0)
    before = _masked_out_weights(adamw)
    fit(adamw, data, epochs=1, batch_size=20, lr=lr, weight_decay=decay, optimizer="adamw")
    assert torch.allclose(_masked_out_weights(adamw), before * (1 - lr * decay) ** steps, rtol=1e-5)

    adam = flowkit.BernoulliMADE(5, [12], seed=0)
    fit(adam, data, epochs=1, batch_size=20, lr=lr, weight_decay=decay, optimizer="adam")
    moved = (before - _masked_out_weights(adam)) * before.sign()
    assert bool((moved > 0.9 * steps * lr).all() and (moved < 1.001 * steps * lr).all()), moved


def test_adagrad_makes_torchs_adagrad_update_not_adams():
    # Full batches (one minibatch an epoch): the loss is the mean NLL of all rows whatever their
    # shuffled order, so three epochs of fit are three steps of torch.optim.Adagrad on that loss.
    data = torch.randint(2, (64, 6), generator=torch.Generator().manual_seed(0)).float()
    model = flowkit.BernoulliMADE(6, [16], seed=0)
    fit(model, data, epochs=3, batch_size=64, lr=0.05, optimizer="adagrad")
    reference = flowkit.BernoulliMADE(6, [16], seed=0)
    optimizer = torch.optim.Adagrad(reference.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        (-reference.log_prob(data).mean()).backward()
        optimizer.step()
    adam = flowkit.BernoulliMADE(6, [16], seed=0)
    fit(adam, data, epochs=3, batch_size=64, lr=0.05, optimizer="adam")
    for a, b, c in zip(model.parameters(), reference.parameters(), adam.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(a, c, atol=1e-4) for a, c in zip(model.parameters(), adam.parameters()))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adagrad"])
def test_the_fused_optimiser_makes_the_default_update_and_an_older_checkpoint_keeps_its_kernel(
        optimizer, tmp_path, monkeypatch):
    import flowkit.train as train

    data = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    options = dict(epochs=2, batch_size=20, lr=1e-2, weight_decay=0.1, optimizer=optimizer)
    fused = flowkit.MAF(4, 2, [16, 16], seed=0)
    fit(fused, data, checkpoint=tmp_path / "fused.pt", **options)
    assert torch.load(tmp_path / "fused.pt", weights_only=True)["optimizer"]["param_groups"][0]["fused"]

    monkeypatch.setattr(train, "_fused", lambda kind, params, **o: kind(params, **o))  # torch's default
    default = flowkit.MAF(4, 2, [16, 16], seed=0)
    fit(default, data, checkpoint=tmp_path / "default.pt", epochs=1,
        **{k: v for k, v in options.items() if k != "epochs"})
    monkeypatch.undo()
    fit(default, data, checkpoint=tmp_path / "default.pt", resume=True, **options)  # resumed: its own kernel
    assert not torch.load(tmp_path / "default.pt", weights_only=True)["optimizer"]["param_groups"][0]["fused"]
    for a, b in zip(fused.parameters(), default.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fit_refuses_an_unknown_optimizer_and_a_negative_weight_decay():
    model, data = flowkit.BernoulliMADE(3, [8], seed=0), torch.ones(10, 3)
    with pytest.raises(ValueError, match="optimizer"):
        fit(model, data, epochs=1, optimizer="sgd")
    with pytest.raises(ValueError, match="weight_decay"):
        fit(model, data, epochs=1, weight_decay=-1.0)


def test_a_checkpoint_without_an_optimizer_setting_resumes_as_adam(tmp_path):
    data = torch.randint(2, (40, 3), generator=torch.Generator().manual_seed(0)).float()
    path = tmp_path / "checkpoint.pt"
    fit(flowkit.BernoulliMADE(3, [8], seed=0), data, data, epochs=1, checkpoint=path)
    state = torch.load(path, weights_only=True)
    del state["settings"]["optimizer"]  # as written before the option existed
    torch.save(state, path)
    history = fit(flowkit.BernoulliMADE(3, [8], seed=0), data, data, epochs=2, checkpoint=path, resume=True)
    assert len(history.train_nll) == 2
    with pytest.raises(ValueError, match="optimizer"):
        fit(flowkit.BernoulliMADE(3, [8], seed=0), data, data, epochs=3, checkpoint=path, resume=True,
            optimizer="adamw")


@pytest.mark.parametrize("case", CASES)
def test_a_run_cut_by_its_time_limit_resumes_to_the_uninterrupted_run(case, tmp_path):
    build, train, valid, options = CASES[case]
    straight = build()
    expected = fit(straight, train, valid, epochs=6, checkpoint=tmp_path / "straight.pt", **options)
    path, calls, history = tmp_path / "run.pt", 0, None
    while history is None or not (history.stopped_early or len(history.train_nll) == 6):
        history = fit(build(), train, valid, epochs=6, checkpoint=path, resume=True, time_limit=1e-9, **options)
        calls += 1
        assert len(history.train_nll) == calls  # one epoch per call: the limit is checked after each
    assert history == expected and history.stopped_early == (len(expected.train_nll) < 6)
    resumed = build()
    fit(resumed, train, valid, epochs=6, checkpoint=path, resume=True, **options)
    _assert_same_model(resumed, straight)
    with pytest.raises(ValueError, match="time_limit"):
        fit(build(), train, valid, epochs=1, time_limit=0)


# Fresh masks: a new mask set, rebuilt from key t, before minibatch t.


def test_fresh_masks_draw_key_t_before_minibatch_t_and_end_on_key_0(monkeypatch):
    model = flowkit.BernoulliMADE(6, [32], order_agnostic=True, seed=0)
    drawn, orders = [], []
    real_draw, real_log_prob = flowkit.MADE.draw_masks, type(model).log_prob

    def draw(made, key):
        drawn.append(key)
        real_draw(made, key)

    def log_prob(self, x, *args, **kwargs):
        if self.training:
            orders.append(self.made.order.clone())
        return real_log_prob(self, x, *args, **kwargs)

    monkeypatch.setattr(flowkit.MADE, "draw_masks", draw)
    monkeypatch.setattr(type(model), "log_prob", log_prob)
    fit(model, _BINARY, epochs=2, batch_size=16, masks="fresh")  # 4 minibatches an epoch
    assert drawn == [*range(8), 0]
    reference = flowkit.BernoulliMADE(6, [32], order_agnostic=True, seed=0).made
    for key, order in enumerate(orders):  # every minibatch trained under the masks of its key
        assert torch.equal(order, reference.key_masks(key)[0])
    assert len({tuple(order.tolist()) for order in orders}) > 4
    assert torch.equal(model.made.order, reference.key_masks(0)[0]) and model.made.num_masks == 1


def test_fresh_masks_score_validation_with_the_ensemble_of_keys(monkeypatch):
    model = flowkit.BernoulliMADE(6, [32], order_agnostic=True, seed=0)
    history = fit(model, _BINARY[:40], _BINARY[40:], epochs=1, batch_size=16, masks="fresh", ensemble=4)
    model.made.draw_masks(3)  # the scored ensemble does not depend on the current masks
    with torch.no_grad():
        expected = -model.log_prob(_BINARY[40:], keys=4).mean()
        single = -model.log_prob(_BINARY[40:], keys=1).mean()
    assert math.isclose(history.valid_nll[0], float(expected), rel_tol=1e-6)
    assert not math.isclose(float(single), float(expected), rel_tol=1e-3)
    assert math.isclose(evaluate(model, _BINARY[40:], keys=4)[0], float(expected), rel_tol=1e-6)


def test_fresh_masks_train_differently_from_one_fixed_mask():
    fixed, fresh = (flowkit.BernoulliMADE(6, [32], order_agnostic=True, seed=0) for _ in range(2))
    fit(fixed, _BINARY, epochs=1, batch_size=16)
    fit(fresh, _BINARY, epochs=1, batch_size=16, masks="fresh")
    assert not torch.equal(fixed.made.layers[0].weight, fresh.made.layers[0].weight)


def test_fresh_masks_need_a_made_and_a_known_mode_and_resume_only_in_their_mode(tmp_path):
    with pytest.raises(ValueError, match="masks='fresh' needs a density with a MADE"):
        fit(_maf(), _GAUSS, epochs=1, masks="fresh")
    with pytest.raises(ValueError, match="expected masks in"):
        fit(_made(), _BINARY, epochs=1, masks="random")
    path = tmp_path / "run.pt"
    fit(_fresh(), _BINARY, epochs=1, batch_size=16, masks="fresh", checkpoint=path)
    assert torch.load(path, weights_only=True)["step"] == 4
    with pytest.raises(ValueError, match="masks 'fresh' -> 'cycle'"):
        fit(_fresh(), _BINARY, epochs=2, batch_size=16, checkpoint=path, resume=True)
    state = torch.load(path, weights_only=True)
    del state["settings"]["masks"], state["step"]  # as written before the option existed
    torch.save(state, path)
    assert len(fit(_fresh(), _BINARY, epochs=2, batch_size=16, checkpoint=path, resume=True).train_nll) == 2


def test_a_compiled_training_loss_follows_the_eager_run():
    # float64: Adam divides by the gradients' scale, so float32 rounding in a near-zero gradient
    # component can flip the sign of an update; in float64 the two runs agree closely
    torch._dynamo.reset()
    train, valid = _GAUSS[:48].double(), _GAUSS[48:].double()
    eager, compiled = _maf().double(), _maf().double()
    expected = fit(eager, train, valid, epochs=2, batch_size=16, lr=1e-2)
    history = fit(compiled, train, valid, epochs=2, batch_size=16, lr=1e-2, compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert history.train_nll == pytest.approx(expected.train_nll, rel=1e-6)
    assert history.valid_nll == pytest.approx(expected.valid_nll, rel=1e-6)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_fit_and_evaluate_take_a_context_per_row(tmp_path):
    g = torch.Generator().manual_seed(0)
    context = torch.randn(600, 2, generator=g)
    x = context @ torch.tensor([[2.0, 0.0], [0.0, -1.0]]) + 0.1 * torch.randn(600, 2, generator=g)
    train, valid = (x[:500], context[:500]), (x[500:], context[500:])
    conditional = flowkit.MAF(2, 2, [32], context_features=2, seed=0)
    history = fit(conditional, train, valid, epochs=15, batch_size=50, lr=3e-3)
    unconditional = flowkit.MAF(2, 2, [32], seed=0)
    fit(unconditional, x[:500], x[500:], epochs=15, batch_size=50, lr=3e-3)
    nll, _ = evaluate(conditional, valid)
    with torch.no_grad():
        assert abs(nll - float(-conditional.log_prob(*valid).mean())) < 1e-5
    assert nll < evaluate(unconditional, x[500:])[0] - 1.0  # the context explains most of x
    assert history.valid_nll[-1] < history.valid_nll[0]

    path = tmp_path / "c.pt"  # resumed with contexts: the weights of an uninterrupted run
    whole = flowkit.MAF(2, 1, [8], context_features=2, seed=1)
    fit(whole, train, valid, epochs=3, batch_size=100)
    half = flowkit.MAF(2, 1, [8], context_features=2, seed=1)
    fit(half, train, valid, epochs=2, batch_size=100, checkpoint=path)
    fit(half, train, valid, epochs=3, batch_size=100, checkpoint=path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), half.state_dict().values()))

    with pytest.raises(flowkit.FlowkitValueError, match=r"train data context of shape \(500, C\)"):
        fit(conditional, (x[:500], context[:499]))
    with pytest.raises(flowkit.FlowkitTypeError, match="expected data context to be a torch.Tensor, got list"):
        evaluate(conditional, (x, [[0.0, 1.0]]))


def heavy_tailed(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator) / torch.rand(n, 1, generator=generator).clamp(min=0.05)


@pytest.mark.parametrize("valid", [True, False])
def test_population_batch_norm_statistics_are_those_of_the_training_data_with_the_best_weights(valid):
    train, held_out = heavy_tailed(600, 0), heavy_tailed(200, 1)
    torch.manual_seed(0)
    flow = flowkit.MAF(3, 3, [16], batch_norm=True, seed=0)
    history = fit(flow, train, held_out if valid else None, epochs=4, batch_size=50, batch_norm="population")
    layers = [m for m in flow.modules() if isinstance(m, flowkit.transforms.BatchNorm)]
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in layers]
    assert flowkit.transforms.set_population_statistics(flow, train) == len(layers) == 2
    for (mean, var), layer in zip(stats, layers):
        assert torch.allclose(mean, layer.running_mean, atol=1e-5) and torch.allclose(var, layer.running_var, rtol=1e-4)
    if valid:  # the best epoch's validation NLL is that of the restored model, population statistics and all
        assert evaluate(flow, held_out)[0] == pytest.approx(history.best_valid_nll, rel=1e-5)


def test_batch_norm_statistics_are_a_setting_checked_on_resume(tmp_path):
    flow = flowkit.MAF(3, 2, [8], batch_norm=True, seed=0)
    fit(flow, heavy_tailed(100, 0), epochs=1, batch_size=50, checkpoint=tmp_path / "run.pt")
    with pytest.raises(flowkit.FlowkitValueError, match="batch_norm"):
        fit(flow, heavy_tailed(100, 0), epochs=2, batch_size=50, checkpoint=tmp_path / "run.pt", resume=True,
            batch_norm="population")
    with pytest.raises(flowkit.FlowkitValueError, match=r"batch_norm.*'population'"):
        fit(flow, heavy_tailed(100, 0), epochs=1, batch_norm="exact")
