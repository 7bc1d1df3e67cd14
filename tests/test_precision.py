"""Mixed-precision training (``fit(precision=...)``, ``flowkit fit --precision``)."""

from __future__ import annotations

import json

import pytest
import torch

import flowkit
from flowkit import cli
from flowkit.data.digits import digits
from flowkit.train import evaluate, fit

# Measured (experiments in docs/distributed.md): a Bernoulli MADE [128] with the direct connection,
# 30 epochs on digits, seeds 0..4; the float32 test NLL of the bf16-trained model differed from the
# fp32-trained one's by at most 0.004 nats (fp16: 0.011), for test NLLs near 24.5 nats whose standard
# error is about 0.2. The tolerance is ten times the largest bf16 difference.
BF16_TOLERANCE = 0.05


def _fit_digits(precision: str, epochs: int = 30) -> float:
    train, valid, test = digits()
    model = flowkit.BernoulliMADE(64, [128], direct=True, seed=1)
    fit(model, train, valid, epochs=epochs, batch_size=100, lr=3e-3, patience=epochs, precision=precision, seed=1)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    return evaluate(model, test)[0]


def test_a_bf16_trained_made_scores_as_the_fp32_one_on_digits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32, bf16 = _fit_digits("fp32"), _fit_digits("bf16")
    finally:
        torch.set_num_threads(threads)
    assert fp32 < 26.0  # it learned (independent Bernoullis score 27.2)
    assert abs(bf16 - fp32) < BF16_TOLERANCE


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_runs_the_network_in_it_and_the_log_probabilities_in_float32(precision, monkeypatch):
    model = flowkit.MAF(3, 2, [16], context_features=2, seed=0)
    products, log_probs = set(), set()
    model.transform.transforms[0].made.layers[0].register_forward_hook(
        lambda layer, inputs, out: products.add(out.dtype) if layer.training else None)  # validation is eager fp32
    real = type(model).log_prob

    def log_prob(self, *args, **kwargs):
        value = real(self, *args, **kwargs)
        if self.training:
            log_probs.add(value.dtype)
        return value

    monkeypatch.setattr(type(model), "log_prob", log_prob)
    x, context = torch.randn(64, 3), torch.randn(64, 2)
    history = fit(model, (x, context), (x, context), epochs=2, batch_size=16, precision=precision)
    assert products == {getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[precision])}
    assert log_probs == {torch.float32} and all(map(torch.isfinite, map(torch.tensor, history.train_nll)))
    assert not any(made._forward_hooks for made in model.modules() if isinstance(made, flowkit.MADE))  # removed


def test_fp16_checkpoints_its_grad_scaler_and_resumes_exactly(tmp_path):
    data = torch.randint(2, (96, 6), generator=torch.Generator().manual_seed(0)).float()
    options = dict(epochs=4, batch_size=16, precision="fp16")
    straight = flowkit.BernoulliMADE(6, [16], seed=0)
    expected = fit(straight, data[:80], data[80:], **options)
    fit(flowkit.BernoulliMADE(6, [16], seed=0), data[:80], data[80:], checkpoint=tmp_path / "run.pt",
        **{**options, "epochs": 2})
    saved = torch.load(tmp_path / "run.pt", weights_only=True)
    assert saved["scaler"]["scale"] > 0 and saved["settings"]["precision"] == "fp16"
    resumed = flowkit.BernoulliMADE(6, [16], seed=0)
    assert fit(resumed, data[:80], data[80:], checkpoint=tmp_path / "run.pt", resume=True, **options) == expected
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))
    with pytest.raises(flowkit.FlowkitValueError, match="precision 'fp16' -> 'bf16'"):
        fit(flowkit.BernoulliMADE(6, [16], seed=0), data[:80], data[80:], checkpoint=tmp_path / "run.pt",
            resume=True, **{**options, "precision": "bf16"})


def test_an_unknown_precision_is_refused_naming_it():
    with pytest.raises(flowkit.FlowkitValueError, match="precision"):
        fit(flowkit.BernoulliMADE(3, [8], seed=0), torch.ones(10, 3), epochs=1, precision="fp8")


def test_flowkit_fit_takes_precision_and_records_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["fit", "--data", "digits", "--hidden", "32", "--epochs", "1", "--precision", "bf16",
                     "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["training"]["precision"] == "bf16"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["settings"]["precision"] == "bf16"
    assert cli.main(["fit", "--data", "digits", "--hidden", "32", "--epochs", "2", "--out", str(out),
                     "--resume"]) == 2  # fp32 cannot continue a bf16 run exactly
    assert "precision 'bf16' -> 'fp32'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_training_on_cuda_keeps_float32_log_probabilities_and_trains(precision):
    train, valid, _ = digits()
    torch.manual_seed(0)
    model = flowkit.BernoulliMADE(64, [128], direct=True, seed=0)
    history = fit(model, train, valid, epochs=3, batch_size=100, precision=precision, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    assert history.valid_nll[-1] < history.valid_nll[0]
    assert next(model.parameters()).dtype == torch.float32 and model.log_prob(valid[:4].cuda()).dtype == torch.float32
