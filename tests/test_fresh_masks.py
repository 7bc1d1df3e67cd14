"""Mask keys: MADE.draw_masks rebuilds a mask set from (mask_seed, key); ensembles over keys are
exact densities; keys survive state_dict() and a fresh process; caches see the new masks."""

import itertools
import subprocess
import sys

import pytest
import torch

import flowkit
from flowkit import MADE, check_autoregressive
from flowkit import masks as M
from flowkit.engine import autoregressive
from flowkit.train import fit

pytestmark = pytest.mark.filterwarnings("ignore::flowkit.ConnectivityWarning")

BINARY = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)))


def snapshot(made: MADE) -> list[torch.Tensor]:
    linears = [*made._chain(), *([made.direct] if made.direct is not None else [])]
    return [made.orders.clone(), *(linear.masks.clone() for linear in linears)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


OPTIONS = {
    "plain": dict(hidden_features=[16, 16]),
    "residual-direct-context": dict(hidden_features=16, residual_blocks=2, direct=True, context_features=2),
    "grouped-columns": dict(hidden_features=[24], columns_per_feature=3, num_params=3),
    "narrow-even": dict(hidden_features=[3], hidden_degrees="even"),
}


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("order_agnostic", [True, False])
def test_every_key_is_autoregressive_in_its_own_ordering(name, order_agnostic):
    made = MADE(5, order_agnostic=order_agnostic, order="reverse", activation=torch.nn.Tanh, seed=0,
                **OPTIONS[name])  # tanh: no unit is dead, so autograd sees every path of the masks
    orders = set()
    for key in range(25):
        made.draw_masks(key)
        found = check_autoregressive(made)  # by autograd; raises on a forbidden dependency
        order, masks, direct = made.key_masks(key)
        implied = M.connectivity(masks, 5, made.columns_per_feature)
        if made.direct is not None:
            implied |= M.connectivity([direct], 5, made.columns_per_feature)
        assert torch.equal(found, implied) and torch.equal(made.order, order), key
        assert not bool((found & ~M.allowed_connectivity(order)).any()), key
        orders.add(tuple(made.order.tolist()))
    if order_agnostic:
        assert len(orders) > 10
    else:
        assert orders == {(4, 3, 2, 1, 0)}  # the network's ordering, other degrees


def test_without_order_agnostic_keys_change_the_hidden_degrees():
    made = MADE(5, [16], seed=0)
    first = made.layers[0].masks[0].clone()
    made.draw_masks(1)
    assert torch.equal(made.order, torch.arange(5)) and not torch.equal(made.layers[0].masks[0], first)


@pytest.mark.parametrize("name", OPTIONS)
def test_a_key_gives_the_same_masks_on_every_call(name):
    made = MADE(5, order_agnostic=True, seed=3, **OPTIONS[name])
    made.draw_masks(7)
    seven = snapshot(made)
    made.draw_masks(8)
    assert not same(snapshot(made), seven)
    made.draw_masks(7)
    assert same(snapshot(made), seven)
    twin = MADE(5, order_agnostic=True, seed=3, **OPTIONS[name])
    twin.draw_masks(7)
    assert same(snapshot(twin), seven)


def test_draw_masks_writes_only_the_current_mask_set():
    made = MADE(5, [16], num_masks=3, order_agnostic=True, direct=True, seed=0)
    before = snapshot(made)
    made.use_mask(1)
    made.draw_masks(4)
    after = snapshot(made)
    for old, new in zip(before, after):
        assert torch.equal(old[0], new[0]) and torch.equal(old[2], new[2])
    assert not torch.equal(before[0][1], after[0][1])
    assert torch.equal(after[0][1], made.key_masks(4)[0])


def test_keys_follow_the_mask_seed_through_state_dict_even_unseeded():
    options = dict(order_agnostic=True, residual_blocks=1, direct=True, context_features=1)
    original = MADE(5, 16, seed=None, **options)
    copy = MADE(5, 16, seed=12345, **options)
    assert int(copy.mask_seed) == 12345 and int(original.mask_seed) != 12345
    copy.load_state_dict(original.state_dict())
    assert int(copy.mask_seed) == int(original.mask_seed)
    for key in (0, 5, 99):
        original.draw_masks(key)
        copy.draw_masks(key)
        assert same(snapshot(copy), snapshot(original)), key


def test_a_state_dict_without_a_mask_seed_still_loads():
    saved = MADE(5, [16], order_agnostic=True, seed=0).state_dict()
    del saved["mask_seed"]  # as written before the seed was stored
    loaded = MADE(5, [16], order_agnostic=True, seed=4)
    loaded.load_state_dict(saved)
    assert int(loaded.mask_seed) == 4 and torch.equal(loaded.orders, saved["orders"])


def test_a_key_gives_the_same_masks_in_a_fresh_process():
    code = (
        "import torch, flowkit\n"
        "made = flowkit.MADE(6, 16, num_params=2, order_agnostic=True, residual_blocks=1, seed=21)\n"
        "made.draw_masks(1000003)\n"
        "print(made.order.tolist(), [int(l.masks.long().mul(torch.arange(l.masks.numel()).view_as(l.masks)).sum())"
        " for l in made._chain()])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    made = MADE(6, 16, num_params=2, order_agnostic=True, residual_blocks=1, seed=21)
    made.draw_masks(1000003)
    weights = [int(lin.masks.long().mul(torch.arange(lin.masks.numel()).view_as(lin.masks)).sum())
               for lin in made._chain()]
    assert done.stdout.strip() == f"{made.order.tolist()} {weights}"


def test_keys_are_checked():
    made = MADE(3, [8], seed=0)
    with pytest.raises(ValueError, match="mask key >= 0"):
        made.draw_masks(-1)
    for key in (1.0, True, "1"):
        with pytest.raises(TypeError, match="key to be an int"):
            made.draw_masks(key)


def test_restoring_masks_puts_the_mask_set_back_even_after_an_error():
    made = MADE(5, 16, order_agnostic=True, direct=True, residual_blocks=1, seed=0)
    before = snapshot(made)
    with pytest.raises(RuntimeError, match="inside"):
        with made.restoring_masks():
            made.draw_masks(2)
            assert not same(snapshot(made), before)
            raise RuntimeError("inside")
    assert same(snapshot(made), before)


def test_kept_masked_weights_and_engine_plans_see_the_new_masks():
    made = MADE(5, [16, 16], num_params=2, order_agnostic=True, direct=True, seed=0).eval()
    reference = MADE(5, [16, 16], num_params=2, order_agnostic=True, direct=True, seed=0).eval()
    x = torch.randn(7, 5)

    def step(d, params, current):
        return params[..., 0] - params[..., 1]

    with torch.no_grad():
        made(x)  # keeps the masked weights of the constructor's masks
        autoregressive(made, torch.zeros(7, 5), step)  # keeps its plan
        made.draw_masks(6)
        reference.draw_masks(6)
        assert torch.equal(made(x), reference(x))
        fast = autoregressive(made, torch.zeros(7, 5), step)
    expected = autoregressive(reference, torch.zeros(7, 5), step)  # with gradients: the plain loop
    assert torch.allclose(fast, expected, atol=1e-6)
    assert not torch.allclose(fast, autoregressive(MADE(5, [16, 16], num_params=2, seed=0), torch.zeros(7, 5), step))


# Densities: ensembles over keys.


@pytest.mark.parametrize("R", [1, 3, 40])
@pytest.mark.parametrize("options", [dict(), dict(residual_blocks=1, direct=True)])
def test_the_ensemble_of_keys_sums_to_one(R, options):
    model = flowkit.BernoulliMADE(5, [16], order_agnostic=True, seed=0, **options).eval()
    total = model.log_prob(BINARY, keys=R).exp().sum()
    assert abs(total.item() - 1.0) < 1e-5


def test_the_ensemble_of_keys_sums_to_one_given_a_context_and_for_categories():
    conditional = flowkit.BernoulliMADE(5, [16], order_agnostic=True, context_features=2, seed=0).eval()
    context = torch.randn(1, 2).expand(len(BINARY), 2)
    assert abs(conditional.log_prob(BINARY, context, keys=6).exp().sum().item() - 1.0) < 1e-5
    categorical = flowkit.CategoricalMADE(3, 3, [24], order_agnostic=True, seed=0).eval()
    every = torch.tensor(list(itertools.product(range(3), repeat=3)))
    assert abs(categorical.log_prob(every, keys=5).exp().sum().item() - 1.0) < 1e-5


def test_the_ensemble_of_keys_is_the_mixture_of_the_keys_and_restores_the_masks():
    model = flowkit.BernoulliMADE(5, [16], order_agnostic=True, seed=0).eval()
    before = snapshot(model.made)
    with torch.no_grad():
        single = []
        for key in (3, 0, 11):
            with model.made.restoring_masks():
                model.made.draw_masks(key)
                single.append(model.log_prob(BINARY))
        mixture = torch.logsumexp(torch.stack(single), 0) - torch.log(torch.tensor(3.0))
    assert same(snapshot(model.made), before)
    assert torch.allclose(model.log_prob(BINARY, keys=[3, 0, 11]), mixture, atol=1e-6)
    assert torch.equal(model.log_prob(BINARY, keys=[3, 0, 11]), model.log_prob(BINARY, keys=[3, 0, 11]))
    assert same(snapshot(model.made), before)
    assert torch.allclose(model.log_prob(BINARY, keys=2), model.log_prob(BINARY, keys=[0, 1]))
    assert not torch.allclose(single[0], single[1])


def test_a_key_rebuilt_twice_gives_identical_log_probs():
    model = flowkit.BernoulliMADE(5, 16, order_agnostic=True, residual_blocks=1, seed=0).eval()
    model.made.draw_masks(9)
    first = model.log_prob(BINARY)
    model.made.draw_masks(10)
    assert not torch.equal(model.log_prob(BINARY), first)
    model.made.draw_masks(9)
    assert torch.equal(model.log_prob(BINARY), first)


def test_a_fresh_mask_density_round_trips_through_state_dict():
    trained = flowkit.BernoulliMADE(5, [16], order_agnostic=True, seed=None)
    data = BINARY[torch.randint(len(BINARY), (64,), generator=torch.Generator().manual_seed(0))]
    fit(trained, data, epochs=1, batch_size=16, masks="fresh")
    loaded = flowkit.BernoulliMADE(5, [16], order_agnostic=True, seed=1).eval()
    loaded.load_state_dict(trained.state_dict())
    assert torch.equal(loaded.log_prob(BINARY, keys=8), trained.log_prob(BINARY, keys=8))
    for key in (0, 4, 77):
        trained.made.draw_masks(key)
        loaded.made.draw_masks(key)
        assert same(snapshot(loaded.made), snapshot(trained.made))
        assert torch.equal(loaded.log_prob(BINARY), trained.log_prob(BINARY))


def test_the_ensemble_of_keys_carries_no_gradient_and_refuses_bad_keys():
    model = flowkit.BernoulliMADE(5, [16], order_agnostic=True, seed=0)
    assert not model.log_prob(BINARY, keys=3).requires_grad
    assert model.log_prob(BINARY, ensemble=1).requires_grad
    with pytest.raises(ValueError, match="got both"):
        model.log_prob(BINARY, ensemble=1, keys=1)
    for keys, error in ((0, ValueError), ([], ValueError), ([-1], ValueError), ([0.5], TypeError),
                        ("01", TypeError), (True, TypeError)):
        with pytest.raises(error, match="key"):
            model.log_prob(BINARY, keys=keys)
