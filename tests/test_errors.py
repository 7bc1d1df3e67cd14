"""Every user mistake raises a FlowkitError (and still the ValueError or TypeError a Python user
expects) whose message names the argument; counts follow one policy (flowkit.validation.check_int)."""

import pickle
import re

import numpy as np
import pytest
import torch
from torch import nn

import flowkit
from flowkit import masks as M
from flowkit.baselines import IndependentBernoulli
from flowkit.data import binarize, bits_per_dim, dequantize, digits, logit_transform, two_moons
from flowkit.data.fetch import ChecksumError, DataUnavailableError
from flowkit.data.mnist import UnsafePickleError, binarized_mnist
from flowkit.data.power import load_power, preprocess_power
from flowkit.density import AutoregressiveDensity
from flowkit.engine import autoregressive
from flowkit.errors import FileProblem, FlowkitError, FlowkitTypeError, FlowkitValueError
from flowkit.flows import DiagonalNormal, StandardNormal
from flowkit.heads import Bernoulli
from flowkit.transforms import (
    Affine,
    BatchNorm,
    Composite,
    InputOutsideDomain,
    LULinear,
    MaskedAutoregressive,
    Permutation,
    RandomPermutation,
    RationalQuadraticSpline,
    ReversePermutation,
    rational_quadratic_spline,
)
from flowkit.validation import (
    NumberTypeError,
    check_context,
    check_finite,
    check_float,
    check_int,
    check_ints,
    check_option,
    check_permutation,
    check_shape,
    mask_keys,
    raise_not_finite,
    require,
    sample_shape,
)
from flowkit.vi import amortized_iaf, elbo, iwae

nflows = pytest.importorskip("nflows")
from nflows.transforms import MaskedAffineAutoregressiveTransform  # noqa: E402
from nflows.transforms import ReversePermutation as NflowsReversePermutation  # noqa: E402

from flowkit.interop.nflows import convert_autoregressive, from_nflows, to_nflows  # noqa: E402

V, T = ValueError, TypeError


def made(**options):
    return flowkit.MADE(4, [16], **{"seed": 0, **options})


def bernoulli(**options):
    return flowkit.BernoulliMADE(3, [16], **{"seed": 0, **options})


BITS = torch.tensor([[0.0, 1.0, 1.0]])


def log_joint(z):
    return -0.5 * z.pow(2).sum(-1)


def posterior():
    return DiagonalNormal(2, seed=0)


def step(d, params, current):
    return current


CATALOGUE = [
    # MADE: construction
    ("MADE features 0", lambda: flowkit.MADE(0, [8]), V, "features"),
    ("MADE features float", lambda: flowkit.MADE(2.5, [8]), T, "features"),
    ("MADE features bool", lambda: flowkit.MADE(True, [8]), T, "features"),
    ("MADE hidden width 0", lambda: flowkit.MADE(4, [8, 0]), V, "hidden width"),
    ("MADE hidden width float", lambda: flowkit.MADE(4, [8.0]), T, "hidden width"),
    ("MADE hidden_features str", lambda: flowkit.MADE(4, "8"), T, "hidden_features"),
    ("MADE params", lambda: flowkit.MADE(4, [8], 0), V, "params"),
    ("MADE num_masks float", lambda: made(num_masks=2.5), T, "num_masks"),
    ("MADE num_masks bool", lambda: made(num_masks=True), T, "num_masks"),
    ("MADE columns_per_feature", lambda: made(columns_per_feature=0), V, "columns_per_feature"),
    ("MADE context_features", lambda: made(context_features=-1), V, "context_features"),
    ("MADE residual_blocks", lambda: flowkit.MADE(4, 8, residual_blocks=-1), V, "residual_blocks"),
    ("MADE residual one width", lambda: flowkit.MADE(4, [8, 8], residual_blocks=1), V, "hidden_features"),
    ("MADE dropout", lambda: made(dropout=1.5), V, "dropout"),
    ("MADE dropout str", lambda: made(dropout="0.1"), T, "dropout"),
    ("MADE order", lambda: made(order=[0, 0, 1, 2]), V, "order"),
    ("MADE order name", lambda: made(order="sideways"), V, "order"),
    ("MADE order dtype", lambda: made(order=[0.0, 1.0, 2.0, 3.0]), T, "order"),
    ("MADE hidden_degrees", lambda: made(hidden_degrees="uniform"), V, "hidden_degrees"),
    ("MADE seed", lambda: made(seed=1.5), T, "seed"),
    ("MADE activation instance", lambda: flowkit.MADE(4, [8], activation=nn.ReLU()), T, "activation"),
    ("MADE activation function", lambda: flowkit.MADE(4, [8], activation=torch.relu), T, "activation"),
    ("MADE strict", lambda: flowkit.MADE(10, [3], seed=0, strict=True), V, "hidden layers"),
    # MADE: use
    ("MADE use_mask", lambda: made(num_masks=2).use_mask(2), V, "mask index"),
    ("MADE use_mask float", lambda: made(num_masks=2).use_mask(1.0), T, "mask index"),
    ("MADE forward mask", lambda: made()(torch.zeros(2, 4), mask=1), V, "mask index"),
    ("MADE x shape", lambda: made()(torch.zeros(2, 5)), V, r"x of shape \(\*, 4\)"),
    ("MADE x type", lambda: made()([[0.0] * 4]), T, "x"),
    ("MADE x NaN", lambda: made()(torch.full((2, 4), float("nan"))), V, "x contains NaN"),
    ("MADE unexpected context", lambda: made()(torch.zeros(2, 4), torch.zeros(2, 3)), V, "context"),
    ("MADE missing context", lambda: made(context_features=2)(torch.zeros(2, 4)), V, "context"),
    ("MADE draw_masks negative", lambda: made().draw_masks(-1), V, "mask key"),
    ("MADE draw_masks str", lambda: made().draw_masks("1"), T, "mask key"),
    # densities
    ("Bernoulli x shape", lambda: bernoulli().log_prob(torch.ones(2, 4)), V, r"x of shape \(\*, 3\)"),
    ("Bernoulli x list", lambda: bernoulli().log_prob([[0.0, 1.0, 1.0]]), T, "x"),
    ("Bernoulli support", lambda: bernoulli().log_prob(torch.tensor([[0.0, 2.0, 1.0]])), V, "binary"),
    ("Bernoulli NaN", lambda: bernoulli().log_prob(torch.tensor([[0.0, float("nan"), 1.0]])), V, "NaN"),
    ("ensemble too large", lambda: bernoulli().log_prob(BITS, ensemble=2), V, "ensemble"),
    ("ensemble float", lambda: bernoulli(num_masks=2).log_prob(BITS, ensemble=1.5), T, "ensemble"),
    ("ensemble and keys", lambda: bernoulli().log_prob(BITS, ensemble=1, keys=1), V, "ensemble"),
    ("keys 0", lambda: bernoulli().log_prob(BITS, keys=0), V, "keys"),
    ("keys negative", lambda: bernoulli().log_prob(BITS, keys=[-1]), V, "mask key"),
    ("keys str", lambda: bernoulli().log_prob(BITS, keys="01"), T, "keys"),
    ("keys float", lambda: bernoulli().log_prob(BITS, keys=[0.5]), T, "mask key"),
    ("sample negative", lambda: bernoulli().sample(-1), V, "sample_shape"),
    ("sample float", lambda: bernoulli().sample(2.5), T, "sample_shape"),
    ("sample bool", lambda: bernoulli().sample(True), T, "sample_shape"),
    ("sample str", lambda: bernoulli().sample("3"), T, "sample_shape"),
    ("sample ensemble", lambda: bernoulli().sample(2, ensemble=0), V, "ensemble"),
    ("sample missing context", lambda: bernoulli(context_features=2).sample(2), V, "context"),
    ("sample context shape", lambda: bernoulli(context_features=2).sample(2, torch.zeros(3)), V, "context"),
    ("complete observed dtype", lambda: bernoulli().complete(BITS, torch.ones(1, 3)), T, "observed"),
    ("complete observed shape", lambda: bernoulli().complete(BITS, torch.ones(3, dtype=torch.bool)), V, "observed"),
    ("complete x list", lambda: bernoulli().complete([[0.0] * 3], torch.ones(1, 3, dtype=torch.bool)), T, "x"),
    ("complete support", lambda: bernoulli().complete(BITS * 2, torch.ones(1, 3, dtype=torch.bool)), V, "binary"),
    ("CategoricalMADE categories", lambda: flowkit.CategoricalMADE(3, 1, [8]), V, "categories"),
    ("CategoricalMADE categories float", lambda: flowkit.CategoricalMADE(3, 2.5, [8]), T, "categories"),
    ("CategoricalMADE support",
     lambda: flowkit.CategoricalMADE(2, 3, [8], seed=0).log_prob(torch.tensor([[0, 3]])), V, "categories"),
    ("CategoricalMADE bool x",
     lambda: flowkit.CategoricalMADE(2, 3, [8], seed=0).log_prob(torch.tensor([[True, False]])), T, "x"),
    ("MADEMoG components", lambda: flowkit.MADEMoG(2, 0, [8]), V, "components"),
    ("MADEMoG infinite x",
     lambda: flowkit.MADEMoG(2, 2, [8], seed=0).log_prob(torch.tensor([[0.0, float("inf")]])), V, "x contains"),
    ("density made type", lambda: AutoregressiveDensity("made", Bernoulli()), T, "made"),
    ("density head mismatch", lambda: AutoregressiveDensity(flowkit.MADE(3, [8], num_params=2), Bernoulli()), V,
     "params"),
    # flows
    ("MAF features", lambda: flowkit.MAF(0, 2, [8]), V, "features"),
    ("MAF transforms", lambda: flowkit.MAF(2, 0, [8]), V, "transforms"),
    ("MAF transforms float", lambda: flowkit.MAF(2, 2.0, [8]), T, "transforms"),
    ("MAF hidden width", lambda: flowkit.MAF(2, 2, [0]), V, "hidden width"),
    ("MAF permutation", lambda: flowkit.MAF(2, 2, [8], permutation="sideways"), V, "permutation"),
    ("MAF linear", lambda: flowkit.MAF(2, 2, [8], linear="qr"), V, "linear"),
    ("MAF transformer", lambda: flowkit.MAF(2, 2, [8], transformer="foo"), V, "transformer"),
    ("MAF spline option on affine", lambda: flowkit.MAF(2, 2, [8], bins=4), V, "bins"),
    ("MAF context_features", lambda: flowkit.MAF(2, 2, [8], context_features=-1), V, "context_features"),
    ("MAF seed", lambda: flowkit.MAF(2, 2, [8], seed="0"), T, "seed"),
    ("MAF MADE option", lambda: flowkit.MAF(2, 2, [8], dropout=2.0), V, "dropout"),
    ("IAF hidden width", lambda: flowkit.IAF(2, 2, [8, -1]), V, "hidden width"),
    ("Flow x shape", lambda: flowkit.MAF(2, 1, [8], seed=0).log_prob(torch.zeros(3, 3)), V, r"x of shape \(\*, 2\)"),
    ("Flow x dtype", lambda: flowkit.MAF(2, 1, [8], seed=0).log_prob(torch.zeros(3, 2, dtype=torch.long)), T,
     "x to be a floating"),
    ("Flow sample", lambda: flowkit.MAF(2, 1, [8], seed=0).sample(-2), V, "sample_shape"),
    ("Flow missing context", lambda: flowkit.MAF(2, 1, [8], context_features=3, seed=0).sample(2), V, "context"),
    ("Flow transform type", lambda: flowkit.Flow("t", StandardNormal(2)), T, "transform"),
    ("Flow base type", lambda: flowkit.Flow(Composite([]), object()), T, "base"),
    ("Flow base context",
     lambda: flowkit.Flow(Composite([]), DiagonalNormal(2, context_features=3), context_features=2), V,
     "context_features"),
    ("Flow context_features", lambda: flowkit.Flow(Composite([]), StandardNormal(2), context_features=-1), V,
     "context_features"),
    ("StandardNormal features", lambda: StandardNormal(0), V, "features"),
    ("DiagonalNormal features", lambda: DiagonalNormal(0), V, "features"),
    ("DiagonalNormal context_features", lambda: DiagonalNormal(2, context_features=-1), V, "context_features"),
    ("DiagonalNormal context_features float", lambda: DiagonalNormal(2, context_features=1.5), T,
     "context_features"),
    ("DiagonalNormal eps", lambda: DiagonalNormal(2, eps=0.0), V, "eps"),
    ("DiagonalNormal missing context", lambda: DiagonalNormal(2, context_features=3).rsample(2), V, "context"),
    ("DiagonalNormal z shape", lambda: DiagonalNormal(2).log_prob(torch.zeros(3)), V, "z"),
    # transforms
    ("LULinear features", lambda: LULinear(0), V, "features"),
    ("LULinear features float", lambda: LULinear(2.0), T, "features"),
    ("LULinear permutation", lambda: LULinear(3, [0, 0, 1]), V, "permutation"),
    ("LULinear eps", lambda: LULinear(3, eps=1.0), V, "eps"),
    ("LULinear x shape", lambda: LULinear(3)(torch.zeros(2, 4)), V, "x"),
    ("LULinear y dtype", lambda: LULinear(3).inverse(torch.zeros(2, 3, dtype=torch.long)), T, "y"),
    ("LULinear NaN", lambda: LULinear(3)(torch.full((2, 3), float("nan"))), V, "x contains NaN"),
    ("BatchNorm features", lambda: BatchNorm(0), V, "features"),
    ("BatchNorm features bool", lambda: BatchNorm(True), T, "features"),
    ("BatchNorm momentum", lambda: BatchNorm(2, momentum=0), V, "momentum"),
    ("BatchNorm eps", lambda: BatchNorm(2, eps=-1.0), V, "eps"),
    ("BatchNorm batch of one", lambda: BatchNorm(2)(torch.zeros(1, 2)), V, "at least 2"),
    ("spline bins", lambda: RationalQuadraticSpline(bins=0), V, "bins"),
    ("spline bins str", lambda: RationalQuadraticSpline(bins="8"), T, "bins"),
    ("spline bound", lambda: RationalQuadraticSpline(bound=-1.0), V, "bound"),
    ("spline bound infinite", lambda: RationalQuadraticSpline(bound=float("inf")), V, "bound"),
    ("spline min_bin_width", lambda: RationalQuadraticSpline(min_bin_width=0.2), V, "min_bin_width"),
    ("spline params", lambda: RationalQuadraticSpline(bins=4)(torch.zeros(2), torch.zeros(2, 5)), V, "params"),
    ("spline function params", lambda: rational_quadratic_spline(torch.zeros(2), torch.zeros(2, 4)), V, "params"),
    ("spline function x dtype",
     lambda: rational_quadratic_spline(torch.zeros(2, dtype=torch.long), torch.zeros(2, 5)), T, "x"),
    ("Affine eps", lambda: Affine(eps=0), V, "eps"),
    ("Affine no identity", lambda: Affine(eps=2.0).identity_params(), V, "eps"),
    ("MaskedAutoregressive transformer module",
     lambda: MaskedAutoregressive(2, [8], transformer=nn.Linear(2, 2)), T, "transformer"),
    ("MaskedAutoregressive option",
     lambda: MaskedAutoregressive(2, [8], "spline", transformer_options={"tails": "linear"}), T, "tails"),
    ("MaskedAutoregressive context",
     lambda: MaskedAutoregressive(2, [8], seed=0).inverse(torch.zeros(3, 2), torch.zeros(3, 1)), V, "context"),
    ("ReversePermutation features", lambda: ReversePermutation(0), V, "features"),
    ("RandomPermutation seed", lambda: RandomPermutation(3, seed=1.5), T, "seed"),
    ("Permutation", lambda: Permutation([0, 2]), V, "permutation"),
    ("Permutation empty", lambda: Permutation([]), V, "permutation"),
    ("Permutation dtype", lambda: Permutation(torch.tensor([0.0, 1.0])), T, "permutation"),
    ("Permutation x", lambda: Permutation([1, 0])(torch.zeros(2, 3)), V, "x"),
    # variational inference
    ("elbo samples", lambda: elbo(log_joint, posterior(), 0), V, "samples"),
    ("iwae samples float", lambda: iwae(log_joint, posterior(), 2.5), T, "samples"),
    ("iwae samples bool", lambda: iwae(log_joint, posterior(), True), T, "samples"),
    ("iwae chunk", lambda: iwae(log_joint, posterior(), 10, chunk=0), V, "chunk"),
    ("elbo posterior", lambda: elbo(log_joint, object(), 2), T, "posterior"),
    ("elbo log_joint", lambda: elbo("log p", posterior(), 2), T, "log_joint"),
    ("elbo log_joint shape", lambda: elbo(lambda z: z, posterior(), 2), V, "log_joint"),
    ("elbo context", lambda: elbo(log_joint, posterior(), 2, context=torch.zeros(2, 3)), V, "context"),
    ("amortized_iaf context_features", lambda: amortized_iaf(2, context_features=0), V, "context_features"),
    ("amortized_iaf transforms", lambda: amortized_iaf(2, context_features=3, transforms=-1), V, "transforms"),
    ("amortized_iaf hidden_features", lambda: amortized_iaf(2, context_features=3, transforms=2), V,
     "hidden_features"),
    ("amortized_iaf hidden width", lambda: amortized_iaf(2, 1, 0, context_features=3), V, "hidden width"),
    # masks functions
    ("ordering features", lambda: M.ordering(0), V, "features"),
    ("ordering name", lambda: M.ordering(3, "sideways"), V, "order"),
    ("ordering permutation", lambda: M.ordering(3, [0, 1]), V, "order"),
    ("ordering object", lambda: M.ordering(3, object()), T, "order"),
    ("hidden_degrees width", lambda: M.hidden_degrees(0, 3, 1), V, "hidden width"),
    ("hidden_degrees rule", lambda: M.hidden_degrees(4, 3, 1, "uniform"), V, "rule"),
    ("made_masks params", lambda: M.made_masks(torch.arange(3), [4], num_params=0), V, "params"),
    ("made_masks order", lambda: M.made_masks(torch.tensor([0, 0, 1]), [4]), V, "order"),
    ("made_masks context_features", lambda: M.made_masks(torch.arange(3), [4], context_features=-1), V,
     "context_features"),
    ("made_masks residual_blocks", lambda: M.made_masks(torch.arange(3), [4], residual_blocks=1.5), T,
     "residual_blocks"),
    ("made_masks rule", lambda: M.made_masks(torch.arange(3), [], rule="uniform"), V, "rule"),
    ("key_generator key", lambda: M.key_generator(0, -1), V, "mask key"),
    ("key_generator seed", lambda: M.key_generator(1.5, 0), T, "seed"),
    # the engine
    ("engine x", lambda: autoregressive(made(), torch.zeros(2, 5), step), V, "x"),
    ("engine features", lambda: autoregressive(made(), torch.zeros(2, 4), step, features=[9]), V, "features"),
    ("engine features float", lambda: autoregressive(made(), torch.zeros(2, 4), step, features=[0.5]), T,
     "feature"),
    ("engine mask", lambda: autoregressive(made(), torch.zeros(2, 4), step, mask=5), V, "mask index"),
    # nflows interop
    ("to_nflows", lambda: to_nflows(object()), T, "transform"),
    ("from_nflows", lambda: from_nflows(object()), T, "transform"),
    ("convert residual", lambda: convert_autoregressive(MaskedAffineAutoregressiveTransform(3, 8)), V, "residual"),
    ("convert type", lambda: convert_autoregressive(NflowsReversePermutation(3)), T, "layer"),
    # baselines and data
    ("IndependentBernoulli train", lambda: IndependentBernoulli([[0.0, 1.0]]), T, "train"),
    ("IndependentBernoulli smoothing", lambda: IndependentBernoulli(torch.zeros(4, 3), smoothing=-1.0), V,
     "smoothing"),
    ("IndependentBernoulli x", lambda: IndependentBernoulli(torch.zeros(4, 3)).log_prob(torch.zeros(2, 1)), V, "x"),
    ("binarize method", lambda: binarize(torch.zeros(1, 2), method="round"), V, "method"),
    ("binarize levels", lambda: binarize(torch.zeros(1, 2), levels=0), V, "levels"),
    ("digits kind", lambda: digits("colour"), V, "kind"),
    ("dequantize range", lambda: dequantize(torch.tensor([[1.5]])), V, "intensities"),
    ("dequantize NaN", lambda: dequantize(torch.tensor([[float("nan")]])), V, "intensities"),
    ("dequantize levels", lambda: dequantize(torch.zeros(2), levels=2.0), T, "levels"),
    ("logit alpha", lambda: logit_transform(torch.zeros(2), alpha=0.6), V, "alpha"),
    ("logit x type", lambda: logit_transform([0.5]), T, "y"),
    ("bits_per_dim features", lambda: bits_per_dim(1.0, 0), V, "features"),
    ("toy n", lambda: two_moons(-1), V, "n"),
    ("toy n float", lambda: two_moons(2.5), T, "n"),
    ("toy noise", lambda: two_moons(10, noise=-1.0), V, "noise"),
    ("toy seed", lambda: two_moons(10, seed="0"), T, "seed"),
    ("preprocess_power values", lambda: preprocess_power(np.zeros((3, 6)), np.zeros(3)), V, "values"),
    ("preprocess_power type", lambda: preprocess_power([[0.0] * 7], np.zeros(1)), T, "values"),
    ("load_power seed", lambda: load_power(seed=-1), V, "seed"),
    ("binarized_mnist seed", lambda: binarized_mnist(seed="0"), T, "seed"),
    # the checks themselves
    ("check_shape type", lambda: check_shape("x", [1.0], 1), T, "x"),
    ("check_finite", lambda: check_finite("z", torch.tensor([float("inf")])), V, "z contains infinite"),
    ("raise_not_finite", lambda: raise_not_finite("z", torch.tensor([float("nan")])), V, "z contains NaN"),
    ("require", lambda: require(torch.tensor(False), lambda: raise_not_finite("z", torch.tensor([float("nan")])),
                                "z"), V, "z contains NaN"),
    ("check_context unexpected", lambda: check_context(torch.zeros(1), 0, torch.Size()), V, "context"),
    ("check_context type", lambda: check_context([1.0], 1, torch.Size()), T, "context"),
    ("check_context broadcast", lambda: check_context(torch.zeros(3, 1), 1, torch.Size([2])), V, "context"),
]


@pytest.mark.parametrize("build, builtin, message", [case[1:] for case in CATALOGUE],
                         ids=[case[0] for case in CATALOGUE])
def test_a_user_mistake_raises_a_flowkit_error_naming_it(build, builtin, message):
    with pytest.raises(FlowkitError, match=message) as caught:
        build()
    assert isinstance(caught.value, builtin)
    project = FlowkitTypeError if builtin is TypeError else FlowkitValueError
    assert isinstance(caught.value, project)
    assert "\n" not in str(caught.value)  # one line: the command prints it after "flowkit: error:"


def test_the_catalogue_names_every_public_model_class():
    names = " ".join(case[0] for case in CATALOGUE)
    for name in ["MADE", "Bernoulli", "CategoricalMADE", "MADEMoG", "MAF", "IAF", "Flow", "DiagonalNormal",
                 "LULinear", "BatchNorm", "spline", "Permutation", "elbo", "iwae", "amortized_iaf", "ordering",
                 "made_masks", "engine", "sample", "complete", "nflows", "convert"]:
        assert name in names, name


def test_the_errors_of_the_doctest_of_flowkit_errors():
    with pytest.raises(FlowkitError, match=re.escape("expected x of shape (*, 3), got (2, 4)")):
        flowkit.BernoulliMADE(3, [8]).log_prob(torch.ones(2, 4))


def test_named_exceptions_have_the_project_base():
    assert issubclass(InputOutsideDomain, FlowkitValueError)
    assert issubclass(ChecksumError, FlowkitValueError)
    assert issubclass(DataUnavailableError, FlowkitError) and issubclass(DataUnavailableError, RuntimeError)
    assert issubclass(UnsafePickleError, FlowkitError) and issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(NumberTypeError, FlowkitTypeError) and not issubclass(NumberTypeError, ValueError)
    assert issubclass(FileProblem, FlowkitValueError)


def test_a_value_outside_the_logit_transforms_domain_is_named():
    for y in (torch.tensor([[1.5]]), torch.tensor([[-0.1, 0.5]]), torch.tensor([[float("nan")]])):
        with pytest.raises(InputOutsideDomain, match=r"expected values in \[0, 1\] for the logit transform"):
            logit_transform(y)


def test_constructors_check_before_they_build_anything():
    # A failing constructor draws nothing from torch's global generator: it refused before building.
    failing = [
        lambda: flowkit.MADE(4, [8], dropout=2.0),
        lambda: flowkit.MADE(4, [8], hidden_degrees="uniform"),
        lambda: flowkit.MADE(4, [8], activation=nn.ReLU()),
        lambda: flowkit.MAF(2, 2, [8], permutation="sideways"),
        lambda: flowkit.MAF(2, 2, [8], batch_norm=True, seed=None, linear="qr"),
        lambda: DiagonalNormal(2, context_features=-1),
        lambda: amortized_iaf(2, context_features=3, transforms=2),
        lambda: flowkit.CategoricalMADE(3, 1, [8]),
    ]
    for build in failing:
        state = torch.get_rng_state()
        with pytest.raises(FlowkitError):
            build()
        assert torch.equal(torch.get_rng_state(), state)


INTEGERS = [np.int8(3), np.int16(3), np.int32(3), np.int64(3), np.uint8(3), torch.tensor(3), 3]
NOT_INTEGERS = [True, np.bool_(True), torch.tensor(True), 3.0, np.float64(3.0), "3", None, torch.tensor([3]),
                np.array([3]), [3], 2.5]


@pytest.mark.parametrize("value", INTEGERS, ids=repr)
def test_check_int_takes_any_integer_and_returns_a_python_int(value):
    result = check_int("features", value, least=1)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize("value", NOT_INTEGERS, ids=repr)
def test_check_int_refuses_bool_and_non_integers_with_a_type_error(value):
    with pytest.raises(NumberTypeError, match="^expected features to be an int >= 1, got ") as caught:
        check_int("features", value, least=1)
    assert isinstance(caught.value, FlowkitTypeError) and isinstance(caught.value, TypeError)
    assert not isinstance(caught.value, ValueError)  # a wrong type is a TypeError, a wrong value a ValueError


def test_check_int_messages():
    with pytest.raises(FlowkitValueError, match=r"^expected features to be an int >= 1, got 0$"):
        check_int("features", 0, least=1)
    with pytest.raises(NumberTypeError, match=r"^expected num_masks to be an int >= 1, got float 2.5$"):
        check_int("num_masks", 2.5, least=1)
    with pytest.raises(NumberTypeError, match=r"^expected seed to be an int, got str '0'$"):
        check_int("seed", "0", least=None)
    with pytest.raises(FlowkitValueError, match=r"^expected mask index in 0\.\.2, got 3$"):
        check_int("mask index", np.int64(3), least=0, most=2)
    with pytest.raises(FlowkitValueError, match=r"^expected ensemble in 1\.\.3 \(the number of mask sets\), got 4$"):
        check_int("ensemble", 4, least=1, most=3, expected="in 1..3 (the number of mask sets)")
    with pytest.raises(NumberTypeError, match=r"dtype torch.int64 and shape \(2,\)"):
        check_int("features", torch.tensor([1, 2]))
    assert check_int("seed", -5, least=None) == -5


def test_check_ints_check_floats_options_permutations_and_keys():
    assert check_ints("hidden_features", np.int64(8), least=1) == (8,)
    assert check_ints("hidden_features", np.array([8, 4]), least=1) == (8, 4)
    assert check_ints("hidden_features", torch.tensor([8, 4]), least=1) == (8, 4)
    assert check_ints("hidden_features", (w for w in [8, 4]), least=1) == (8, 4)
    with pytest.raises(NumberTypeError, match="expected hidden_features to be an int or a sequence of ints"):
        check_ints("hidden_features", "84", least=1)
    with pytest.raises(NumberTypeError, match="every value of hidden_features"):
        check_ints("hidden_features", [8, True], least=1)

    assert check_float("eps", np.float32(0.5), above=0) == 0.5 and type(check_float("eps", 1, above=0)) is float
    for bad in (True, "0.1", None, torch.tensor(0.1)):
        with pytest.raises(NumberTypeError, match="^expected eps to be a finite number > 0, got "):
            check_float("eps", bad, above=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(FlowkitValueError, match="^expected eps to be a finite number > 0, got "):
            check_float("eps", bad, above=0)
    with pytest.raises(FlowkitValueError, match=r"^expected dropout to be a number in \[0, 1\), got 1.0$"):
        check_float("dropout", 1, least=0, below=1)

    assert check_option("linear", None, ("lu", None)) is None
    for bad in ("qr", 3, ["lu"], np.array(["lu"])):
        with pytest.raises(FlowkitValueError, match="^expected linear 'lu' or None, got "):
            check_option("linear", bad, ("lu", None))

    assert check_permutation("permutation", np.array([1, 0])).tolist() == [1, 0]
    with pytest.raises(FlowkitValueError, match=r"expected permutation to be a permutation of 0\.\.2, got \[0, 0, 1\]"):
        check_permutation("permutation", [0, 0, 1], 3)

    assert mask_keys(np.int64(2)) == [0, 1]
    assert mask_keys(np.array([4, 1])) == [4, 1] and mask_keys(torch.tensor([3])) == [3]
    for bad, error in [(0, FlowkitValueError), ([], FlowkitValueError), ([-1], FlowkitValueError),
                       (True, NumberTypeError), ([True], NumberTypeError), ("01", NumberTypeError),
                       (1.0, NumberTypeError)]:
        with pytest.raises(error, match="key"):
            mask_keys(bad)

    assert sample_shape(np.int64(2)) == (2,) and sample_shape(torch.tensor([2, 3])) == (2, 3)
    assert sample_shape(torch.Size([4])) == (4,) and sample_shape(()) == ()


def test_numpy_integers_work_everywhere_a_count_is_taken():
    made = flowkit.MADE(np.int64(4), [np.int32(8)], num_masks=np.int64(2), context_features=np.int64(0),
                        order_agnostic=True, seed=np.int64(0))
    assert (made.features, made.hidden_features, made.num_masks) == (4, (8,), 2)
    assert all(type(n) is int for n in (made.features, made.num_params, made.context_features, *made.hidden_features))
    made.use_mask(np.int64(1))
    made.draw_masks(np.int64(3))
    model = flowkit.BernoulliMADE(np.int64(3), np.int64(8), num_masks=np.int64(2), seed=0)
    x = model.sample(np.int64(3))
    assert x.shape == (3, 3)
    assert model.log_prob(x, ensemble=np.int64(2)).shape == (3,)
    assert model.log_prob(x, keys=np.int64(2)).shape == (3,)
    assert flowkit.CategoricalMADE(2, np.int64(3), [8], seed=0).sample(2).max() <= 2
    assert flowkit.MADEMoG(2, np.int64(2), [8], seed=0).sample((np.int64(2),)).shape == (2, 2)
    flow = flowkit.MAF(np.int64(2), np.int64(2), [np.int64(8)], batch_norm=True, linear="lu", seed=np.int64(1))
    assert flow.sample(np.int64(4)).shape == (4, 2)
    diagonal = DiagonalNormal(np.int64(2), context_features=np.int64(3), seed=0)
    assert diagonal.rsample(2, torch.zeros(5, 3)).shape == (2, 5, 2)
    assert BatchNorm(np.int64(2)).features == 2 and LULinear(np.int64(2)).features == 2
    assert RationalQuadraticSpline(bins=np.int64(4)).num_params == 11
    assert elbo(log_joint, posterior(), np.int64(3)).shape == ()


def test_bool_is_refused_wherever_a_count_is_taken():
    for build in [
        lambda: flowkit.MADE(4, [8], num_masks=True),
        lambda: flowkit.MADE(4, [True]),
        lambda: made(num_masks=2).use_mask(True),
        lambda: made().draw_masks(True),
        lambda: bernoulli().sample(True),
        lambda: bernoulli(num_masks=2).log_prob(BITS, ensemble=True),
        lambda: bernoulli().log_prob(BITS, keys=True),
        lambda: flowkit.MAF(2, True, [8]),
        lambda: BatchNorm(True),
        lambda: RationalQuadraticSpline(bins=True),
        lambda: flowkit.CategoricalMADE(3, True, [8]),
        lambda: elbo(log_joint, posterior(), True),
        lambda: two_moons(True),
    ]:
        with pytest.raises(NumberTypeError):
            build()
