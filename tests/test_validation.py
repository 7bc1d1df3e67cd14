"""Input checks: each entry point reads its input once, and the errors still name the problem."""

import pytest
import torch

import flowkit
from flowkit import validation
from flowkit.heads import _binary
from flowkit.validation import all_finite, check_finite, checked


@pytest.fixture
def finite_reads(monkeypatch):
    calls = []
    all_finite = validation.all_finite

    def counting(x):
        calls.append(tuple(x.shape))
        return all_finite(x)

    monkeypatch.setattr(validation, "all_finite", counting)
    return calls


@pytest.mark.parametrize("context", [0, 2])
def test_a_flow_reads_x_and_its_context_once_whatever_its_depth(finite_reads, context):
    flow = flowkit.MAF(3, 4, [16], batch_norm=True, linear="lu", context_features=context, seed=0)
    c = torch.randn(8, context) if context else None
    flow.log_prob(torch.randn(8, 3), c)
    assert finite_reads == [(8, 3)] + ([(8, context)] if context else [])


def test_a_flow_still_refuses_nan_and_infinity_with_their_names():
    flow = flowkit.MAF(2, 3, [8], seed=0)
    with pytest.raises(ValueError, match="x contains NaN"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="x contains infinite"):
        flow.log_prob(torch.tensor([[float("inf"), 0.0]]))
    conditional = flowkit.MAF(2, 2, [8], context_features=1, seed=0)
    with pytest.raises(ValueError, match="context contains NaN"):
        conditional.log_prob(torch.zeros(1, 2), torch.tensor([[float("nan")]]))


def test_binary_and_categorical_inputs_are_checked_in_one_pass(finite_reads):
    flowkit.BernoulliMADE(4, [8], seed=0).log_prob(torch.ones(5, 4))
    flowkit.CategoricalMADE(4, 3, [8], seed=0).log_prob(torch.full((5, 4), 2.0))
    assert finite_reads == []  # the support check excludes NaN and infinities by itself


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_one_sum_checks_agree_with_elementwise_comparisons(dtype):
    big = torch.finfo(dtype).max
    generator = torch.Generator().manual_seed(0)
    specials = [float("nan"), float("inf"), -float("inf"), big, -big, 0.5, 2.0, -1.0, 1 - torch.finfo(dtype).eps,
                torch.finfo(dtype).tiny, torch.finfo(dtype).smallest_normal / 4, 1e30, -0.0]
    cases = [torch.full((3000,), big, dtype=dtype),  # finite, and its sum overflows: the exact check decides
             torch.full((3000,), big, dtype=dtype).index_fill(0, torch.tensor([7]), float("nan")),
             torch.ones(300, 784, dtype=dtype),  # a half sum of these ones would pass 65504
             torch.zeros(0, 5, dtype=dtype),
             torch.tensor([0.5] * 8 + [2.0, 1.0], dtype=dtype)]  # x (x - 1) sums to 0 here: each term must count
    for special in specials:
        for base in (torch.randn(50, 7, generator=generator), (torch.rand(50, 7, generator=generator) < 0.4).float()):
            x = base.to(dtype)
            x[torch.randint(50, ()), torch.randint(7, ())] = special
            cases.append(x)
    for x in cases:
        assert bool(all_finite(x)) == bool(torch.isfinite(x).all()), x
        assert bool(_binary(x)) == bool(((x == 0) | (x == 1)).all()), x
    assert bool(_binary(torch.tensor([2**32, 0, 1]))) is False  # integers: compared one by one


@pytest.mark.parametrize("value, message", [(float("nan"), "x contains NaN"), (float("inf"), "x contains infinite"),
                                            (0.5, "binary values")])
def test_a_bernoulli_made_names_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        flowkit.BernoulliMADE(2, [8], seed=0).log_prob(torch.tensor([[1.0, value]]))


@pytest.mark.parametrize("value, message", [(float("nan"), "x contains NaN"), (float("inf"), "x contains infinite"),
                                            (1.5, "non-integer"), (3.0, "categories in 0..2"),
                                            (-1, "categories in 0..2")])
def test_a_categorical_made_names_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        flowkit.CategoricalMADE(2, 3, [8], seed=0).log_prob(torch.tensor([[1.0, value]]))


def test_checked_scopes_nest_and_end_even_on_error():
    nan = torch.tensor([float("nan")])
    with pytest.raises(RuntimeError):
        with checked():
            with checked():
                check_finite("x", nan)
            check_finite("x", nan)
            raise RuntimeError
    with pytest.raises(ValueError, match="NaN"):
        check_finite("x", nan)


@pytest.mark.parametrize("build, data", [
    (lambda: flowkit.MAF(3, 3, [16], batch_norm=True, seed=0), lambda: torch.randn(32, 3)),
    (lambda: flowkit.BernoulliMADE(8, [16], seed=0), lambda: (torch.rand(32, 8) < 0.5).float()),
    (lambda: flowkit.CategoricalMADE(4, 3, [16], seed=0), lambda: torch.randint(3, (32, 4))),
])
def test_a_training_loss_compiles_into_one_graph_with_its_checks(build, data):
    model, x = build(), data()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda x: -model.log_prob(x).mean())(x)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_broadcast_batch_agrees_with_torch_and_names_the_shapes():
    from flowkit.validation import broadcast_batch

    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        shapes = [tuple(int(s) for s in torch.randint(0, 4, (int(torch.randint(0, 4, (), generator=generator)),),
                                                      generator=generator)) for _ in range(3)]
        try:
            expected = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            with pytest.raises(flowkit.FlowkitValueError, match="do not broadcast"):
                broadcast_batch(*shapes)
        else:
            assert broadcast_batch(*shapes) == expected
    with pytest.raises(flowkit.FlowkitValueError, match=r"of x \(5,\) and of context \(4,\) do not broadcast"):
        broadcast_batch((5,), (4,), names=("x", "context"))


def test_first_conditional_sample_does_not_import_sympy():
    # torch.broadcast_shapes imports sympy on its first call (about 0.6 s); flowkit's checks do not use it
    import subprocess
    import sys

    code = ("import sys, torch, flowkit\n"
            "flow = flowkit.MAF(3, 2, [8], transformer='spline', context_features=2, seed=0)\n"
            "c = torch.randn(4, 2)\n"
            "flow.log_prob(flow.sample(context=c), context=c).sum().backward()\n"
            "print('sympy' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
