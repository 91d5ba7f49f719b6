"""Property tests (Hypothesis): invariants that must hold for every small model and argument.

Each test draws tiny MLPs (widths 1-8) and arguments, so a run costs a few
seconds; ``max_examples`` is bounded and deadlines are off because the first
call of a PyTorch kernel can be slow.
"""

from __future__ import annotations

import copy
import itertools
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from companion.distillation import kd_loss
from companion.masks import effective_weights, prunable_layers
from companion.models import MLP
from companion.penalties import group_lasso_penalty, l1_penalty, l2_penalty, soft_threshold_
from companion.pruning import apply_masks, iterative_prune, magnitude_masks, make_permanent
from companion.soft import cubic_sparsity, load_sparse, save_sparse
from companion.surgery import shrink

FAST = settings(max_examples=40, deadline=None)
SLOWER = settings(max_examples=25, deadline=None)

widths = st.integers(min_value=1, max_value=8)
#: Input, hidden..., output widths of an MLP without a hidden layer requirement.
any_sizes = st.lists(widths, min_size=2, max_size=4)
#: Widths with at least one hidden layer (structured pruning and surgery need one).
hidden_sizes = st.lists(widths, min_size=3, max_size=5)
seeds = st.integers(min_value=0, max_value=2**16)
amounts = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
scopes = st.sampled_from(["layer", "global"])


def make_mlp(sizes: list[int], seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(tuple(sizes))


def pruned_count(mask: torch.Tensor) -> int:
    return int((mask == 0).sum())


# --------------------------------------------------------------------------- mask counts


@FAST
@given(sizes=any_sizes, seed=seeds, amount=amounts)
def test_layer_scope_prunes_round_amount_n_of_every_layer_smallest_first(sizes, seed, amount):
    net = make_mlp(sizes, seed)
    masks = magnitude_masks(net, amount, scope="layer")
    layers = prunable_layers(net)
    assert list(masks) == list(layers)
    for name, mask in masks.items():
        weight = layers[name].weight.detach()
        assert mask.shape == weight.shape
        assert bool(((mask == 0) | (mask == 1)).all())
        assert pruned_count(mask) == round(amount * weight.numel())
        pruned, kept = weight.abs()[mask == 0], weight.abs()[mask == 1]
        if len(pruned) and len(kept):
            assert pruned.max() <= kept.min()


@FAST
@given(sizes=any_sizes, seed=seeds, amount=amounts)
def test_global_scope_prunes_round_amount_n_overall_and_never_empties_a_layer(sizes, seed, amount):
    net = make_mlp(sizes, seed)
    masks = magnitude_masks(net, amount, scope="global")
    total = sum(m.numel() for m in masks.values())
    expected = min(round(amount * total), total - len(masks))  # one weight per layer is guarded
    assert sum(pruned_count(m) for m in masks.values()) == expected
    for mask in masks.values():
        assert int(mask.sum()) >= 1


@FAST
@given(sizes=any_sizes, seed=seeds, a=amounts, b=amounts, scope=scopes)
def test_a_larger_amount_prunes_a_superset_of_what_a_smaller_one_pruned(sizes, seed, a, b, scope):
    low, high = sorted((a, b))
    net = make_mlp(sizes, seed)
    first = magnitude_masks(net, low, scope=scope)
    apply_masks(net, first)
    second = magnitude_masks(net, high, scope=scope)
    for name in first:
        assert bool((second[name] <= first[name]).all()), name


@FAST
@given(sizes=hidden_sizes, seed=seeds, amount=amounts, scope=scopes, norm=st.sampled_from([1, 2]))
def test_structured_masks_remove_whole_rows_and_never_the_output_layer(
    sizes, seed, amount, scope, norm
):
    net = make_mlp(sizes, seed)
    masks = magnitude_masks(net, amount, scope=scope, structured=True, norm=norm)
    layers = list(prunable_layers(net))
    assert list(masks) == layers[:-1]  # the classifier's rows are the classes
    rows_total = sum(m.shape[0] for m in masks.values())
    dead_total = 0
    for mask in masks.values():
        row_sums = mask.sum(1)
        assert bool(((row_sums == 0) | (row_sums == mask.shape[1])).all())  # whole rows
        dead = int((row_sums == 0).sum())
        dead_total += dead
        if scope == "layer":
            assert dead == round(amount * mask.shape[0])
        else:
            assert dead < mask.shape[0]  # the guard keeps one neuron per layer
    if scope == "global":
        assert dead_total == min(round(amount * rows_total), rows_total - len(masks))


# --------------------------------------------------------------------------- surgery


@SLOWER
@given(
    sizes=hidden_sizes,
    seed=seeds,
    amount=amounts,
    scope=scopes,
    permanent=st.booleans(),
    batch=st.integers(min_value=1, max_value=6),
)
def test_shrink_computes_the_same_function_as_the_masked_model(
    sizes, seed, amount, scope, permanent, batch
):
    net = make_mlp(sizes, seed)
    with torch.no_grad():  # biases of every sign and size, so dead neurons' relu(b) matters
        for layer in net.linears:
            layer.bias.uniform_(-1.0, 1.0)
    masks = magnitude_masks(net, amount, scope=scope, structured=True)
    apply_masks(net, masks)
    if permanent:
        make_permanent(net)
    net.eval()
    small = shrink(net)
    alive = [max(1, int((m.sum(1) > 0).sum())) for m in masks.values()]
    assert small.sizes == (sizes[0], *alive, sizes[-1])
    x = torch.randn(batch, sizes[0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- iterative pruning


@SLOWER
@given(
    sizes=any_sizes,
    seed=seeds,
    accepted=st.integers(min_value=0, max_value=3),
    step=st.sampled_from([0.1, 0.2, 0.25]),
    criterion=st.sampled_from(["magnitude", "random"]),
)
def test_iterative_prune_restores_the_exact_state_of_the_last_accepted_round(
    sizes, seed, accepted, step, criterion
):
    """Weights, masks and optimizer state after a rejected round equal those before it."""
    net = make_mlp(sizes, seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, sizes[0], generator=torch.Generator().manual_seed(seed))

    def finetune(model):  # changes the weights and the momentum buffers
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()

    snapshots = []

    def evaluate(model):
        snapshots.append(
            (
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                copy.deepcopy(optimizer.state_dict()),
            )
        )
        return 1.0 if len(snapshots) <= accepted else 0.0

    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    history = iterative_prune(
        net,
        evaluate,
        step=step,
        target=1.0,
        tolerance=0.0,
        reference=1.0,
        criterion=criterion,
        finetune=finetune,
        optimizer=optimizer,
        mode="soft",
        generator=torch.Generator().manual_seed(seed),
    )
    assert [r["accepted"] for r in history] == [True] * accepted + [False]
    state = net.state_dict()
    if accepted:
        expected_state, expected_optimizer = snapshots[accepted - 1]
        assert state.keys() == expected_state.keys()
        for key, value in expected_state.items():
            assert torch.equal(state[key], value), key
        assert repr(optimizer.state_dict()) == repr(expected_optimizer)
    else:  # nothing accepted: the original weights under all-ones masks, no momentum
        for name in prunable_layers(net):
            assert torch.equal(state[f"{name}.weight_orig"], before[f"{name}.weight"])
            assert bool((state[f"{name}.weight_mask"] == 1).all())
            assert torch.equal(state[f"{name}.bias"], before[f"{name}.bias"])
        assert optimizer.state_dict()["state"] == {}
    for module in prunable_layers(net).values():  # the forward weight is recomputed, not stale
        assert torch.equal(module.weight, module.weight_orig * module.weight_mask)


# --------------------------------------------------------------------------- distillation


logit_batches = st.tuples(
    st.integers(min_value=1, max_value=6),  # batch
    st.integers(min_value=2, max_value=10),  # classes
    seeds,
    st.floats(min_value=0.01, max_value=20.0),  # logit scale
)
temperatures = st.floats(min_value=0.1, max_value=20.0)


def draw_logits(batch, classes, seed, scale):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    teacher = torch.randn(batch, classes, generator=g, dtype=torch.float64) * scale
    return student, teacher


@FAST
@given(shape=logit_batches, temperature=temperatures)
def test_kd_soft_term_is_nonnegative_and_matches_the_hand_formula(shape, temperature):
    student, teacher = draw_logits(*shape)
    soft = kd_loss(student, teacher, temperature=temperature)
    p_t = torch.softmax(teacher / temperature, dim=1)
    # log p_t from log_softmax, not p_t.log(): a probability that underflows to 0 would give 0 * -inf.
    log_p_t = torch.log_softmax(teacher / temperature, dim=1)
    by_hand = (p_t * (log_p_t - torch.log_softmax(student / temperature, dim=1))).sum(1).mean()
    assert float(soft) >= -1e-12
    assert math.isclose(float(soft), float(by_hand * temperature**2), rel_tol=1e-9, abs_tol=1e-12)


@FAST
@given(shape=logit_batches, temperature=temperatures, shift=st.floats(-50.0, 50.0))
def test_kd_soft_term_is_zero_at_equal_logits_whatever_the_shift(shape, temperature, shift):
    student, _ = draw_logits(*shape)
    assert abs(float(kd_loss(student, student.clone(), temperature=temperature))) < 1e-9
    # softmax ignores a constant added to every logit of a row
    shifted = kd_loss(student + shift, student, temperature=temperature)
    assert abs(float(shifted)) < 1e-9


@FAST
@given(shape=logit_batches, temperature=temperatures, alpha=amounts)
def test_kd_loss_mixes_cross_entropy_and_soft_term_linearly(shape, temperature, alpha):
    student, teacher = draw_logits(*shape)
    batch, classes = student.shape
    targets = torch.arange(batch) % classes
    total = kd_loss(student, teacher, targets, temperature=temperature, alpha=alpha)
    soft = kd_loss(student, teacher, temperature=temperature)
    hard = F.cross_entropy(student, targets)
    assert math.isclose(
        float(total), float((1 - alpha) * hard + alpha * soft), rel_tol=1e-9, abs_tol=1e-12
    )


# --------------------------------------------------------------------------- penalties


@FAST
@given(sizes=any_sizes, seed=seeds, amount=amounts, include_bias=st.booleans())
def test_penalties_equal_their_hand_formulas_on_masked_models(sizes, seed, amount, include_bias):
    net = make_mlp(sizes, seed)
    apply_masks(net, magnitude_masks(net, amount))
    weights = [layer.weight.detach().double() for layer in net.linears]
    biases = [layer.bias.detach().double() for layer in net.linears] if include_bias else []
    l1 = sum(float(t.abs().sum()) for t in weights + biases)
    l2 = sum(float((t * t).sum()) for t in weights + biases)
    groups = sum(float(math.sqrt((row * row).sum())) for w in weights for row in w)
    assert math.isclose(
        float(l1_penalty(net, include_bias=include_bias).detach()), l1, rel_tol=1e-5
    )
    assert math.isclose(
        float(l2_penalty(net, include_bias=include_bias).detach()), l2, rel_tol=1e-5
    )
    assert math.isclose(
        float(group_lasso_penalty(net).detach()), groups, rel_tol=1e-5, abs_tol=1e-7
    )


@FAST
@given(sizes=any_sizes, seed=seeds, threshold=st.floats(min_value=0.0, max_value=1.0))
def test_soft_threshold_is_the_l1_proximal_step(sizes, seed, threshold):
    net = make_mlp(sizes, seed)
    before = [layer.weight.detach().clone() for layer in net.linears]
    zeros = soft_threshold_(net, threshold)
    for old, layer in zip(before, net.linears, strict=True):
        expected = old.sign() * (old.abs() - threshold).clamp_min(0)
        assert torch.equal(layer.weight.detach(), expected)
    assert zeros == sum(int((layer.weight == 0).sum()) for layer in net.linears)


# --------------------------------------------------------------------------- schedule


@FAST
@given(
    final=amounts,
    fraction=st.floats(min_value=0.0, max_value=1.0),
    start=st.integers(min_value=0, max_value=50),
    duration=st.integers(min_value=1, max_value=100),
)
def test_cubic_sparsity_is_monotone_between_its_end_points(final, fraction, start, duration):
    initial = final * fraction
    steps = range(0, start + duration + 10)
    values = [
        cubic_sparsity(t, final=final, initial=initial, start=start, duration=duration)
        for t in steps
    ]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(values))
    assert all(initial - 1e-12 <= v <= final + 1e-12 for v in values)
    for t in range(0, start + 1):
        assert math.isclose(values[t], initial, abs_tol=1e-12)
    for t in range(start + duration, len(values)):
        assert values[t] == final


# --------------------------------------------------------------------------- sparse storage


@SLOWER
@given(sizes=any_sizes, seed=seeds, amount=amounts, scope=scopes, permanent=st.booleans())
def test_save_sparse_load_sparse_round_trip(sizes, seed, amount, scope, permanent):
    net = make_mlp(sizes, seed)
    apply_masks(net, magnitude_masks(net, amount, scope=scope))
    if permanent:
        make_permanent(net)
    expected = {**effective_weights(net)}
    expected.update({f"fc{i}.bias": layer.bias.detach() for i, layer in enumerate(net.linears, 1)})
    with tempfile.TemporaryDirectory() as folder:
        path = save_sparse(net, Path(folder) / "net.pt")
        fresh = MLP(tuple(sizes))
        state = load_sparse(path, model=fresh)
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert state[key].dtype == value.dtype
        assert torch.equal(state[key], value), key
    x = torch.randn(3, sizes[0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


@FAST
@given(sizes=any_sizes, seed=seeds)
def test_amount_zero_and_one_are_the_identity_and_the_limit(sizes, seed):
    """Edge amounts: 0 keeps everything; 1 prunes everything (layer) or all but one (global)."""
    net = make_mlp(sizes, seed)
    assume(all(layer.weight.abs().min() > 0 for layer in net.linears))
    assert all(bool((m == 1).all()) for m in magnitude_masks(net, 0.0).values())
    assert all(int(m.sum()) == 0 for m in magnitude_masks(net, 1.0, scope="layer").values())
    assert all(int(m.sum()) == 1 for m in magnitude_masks(net, 1.0, scope="global").values())
