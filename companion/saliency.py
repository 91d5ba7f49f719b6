r"""Saliency criteria: how much each weight matters, and N:M masks.

:func:`saliency_scores` gives every weight of every prunable layer a score;
a pruning step then removes the lowest-scoring weights. Four criteria:

* ``"magnitude"``: :math:`|w_i|`, no data needed;
* ``"taylor"``: :math:`|w_i \, \partial L / \partial w_i|`, the first-order
  Taylor estimate of the change of the loss when :math:`w_i` is set to zero
  (Molchanov et al., 2017, *Pruning Convolutional Neural Networks for Resource
  Efficient Inference*);
* ``"obd"``: Optimal Brain Damage (LeCun, Denker and Solla, 1990),
  :math:`\tfrac12 h_{ii} w_i^2` with :math:`h_{ii}` the diagonal of the
  Gauss-Newton approximation of the Hessian of the mean loss;
* ``"fisher"``: the same with the empirical Fisher diagonal in place of
  :math:`h_{ii}`, cheaper and cruder.

Here :math:`L = \frac1N \sum_n \ell_n` is the mean loss over the data set, and
all derivatives are taken at the weights the next forward pass uses (for a
layer masked with ``torch.nn.utils.prune``, ``weight_orig * weight_mask``), so
an already pruned weight always scores 0.

:func:`nm_masks` builds semi-structured N:M masks (``n`` kept weights in every
group of ``m`` consecutive ones, the 2:4 pattern of sparse tensor cores) from
magnitudes or from any of these scores.

Nothing here changes the model: scores are computed in eval mode with forward
hooks that are removed afterwards; no parameter, buffer or ``.grad`` is
written, and every submodule's ``training`` flag is restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import TensorDataset

from .data import iterate_batches
from .masks import current_weight, prunable_layers
from .training import _check_labelled, _check_target_range
from .utils import _check_callable, check_positive_int

__all__ = ["CRITERIA", "saliency_scores", "nm_masks"]

#: The criteria :func:`saliency_scores` knows.
CRITERIA: tuple[str, ...] = ("magnitude", "taylor", "obd", "fisher")

# Examples whose per-example weight gradients are held at once (layers without the Linear
# shortcut): memory is this many times the layer's weight.
_PER_EXAMPLE_CHUNK = 64


# --------------------------------------------------------------------------- validation


def _check_model(model: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = prunable_layers(model)
    if not layers:
        raise ValueError("model has no prunable (Linear or Conv) layers")
    return layers


def _check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


# --------------------------------------------------------------------------- recording layers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, BatchNorm running statistics), then every flag as it was."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


class _Recorder:
    """Forward hooks that record each prunable layer's input and output, and hand on a copy.

    An output that needs no gradient (frozen parameters and inputs upstream) is made
    a leaf that does, so ``d logits / d output`` exists for every layer; the layer
    hands on a copy, so an in-place operation downstream (``ReLU(inplace=True)``)
    changes the copy and not the recorded output.
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in layers}
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in layers.items()
        ]

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not output.requires_grad:  # nothing upstream needs a gradient: start the graph here
                output = output.detach().requires_grad_(True)
            self.calls[name].append((inputs[0].detach(), output))
            return output.clone()

        return hook

    def clear(self) -> None:
        for calls in self.calls.values():
            calls.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _output_grads(
    logits: torch.Tensor, recorder: _Recorder, grad_logits: torch.Tensor
) -> dict[str, list[torch.Tensor]]:
    """``grad_logits`` pulled back to every recorded layer output (zeros where unused)."""
    names = [(name, i) for name, calls in recorder.calls.items() for i in range(len(calls))]
    outputs = [recorder.calls[name][i][1] for name, i in names]
    if outputs and logits.requires_grad:
        grads = torch.autograd.grad(
            logits, outputs, grad_outputs=grad_logits, retain_graph=True, allow_unused=True
        )
    else:
        grads = [None] * len(outputs)
    result: dict[str, list[torch.Tensor]] = {name: [] for name in recorder.calls}
    for (name, _), out, grad in zip(names, outputs, grads, strict=True):
        result[name].append(torch.zeros_like(out) if grad is None else grad)
    return result


def _is_plain_linear(module: nn.Module, calls: list) -> bool:
    """A Linear layer called once on a batch of vectors: the outer-product shortcut applies."""
    return isinstance(module, nn.Linear) and len(calls) == 1 and calls[0][0].dim() == 2


def _layer_function(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x, w)``: the layer's output without bias, as a function of its weight."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w)
    # Conv modules apply their padding mode, stride, dilation and groups in _conv_forward.
    return lambda x, w: module._conv_forward(x, w, None)


def _batch_weight_grad(
    module: nn.Module, inputs: list[torch.Tensor], output_grads: list[torch.Tensor]
) -> torch.Tensor:
    """Gradient of ``sum <output_grad, f(x, w)>`` over the batch and every call, w.r.t. ``w``."""
    weight = current_weight(module)
    leaf = weight.detach().clone().requires_grad_(True)
    function = _layer_function(module)
    with torch.enable_grad():
        total = sum(
            (function(x, leaf) * g).sum() for x, g in zip(inputs, output_grads, strict=True)
        )
        (grad,) = torch.autograd.grad(total, leaf)
    return grad


def _unfoldable(module: nn.Module) -> bool:
    """A Conv2d whose per-example gradients ``F.unfold`` can form (zero padding given as numbers)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _prepared_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What :func:`_per_example_weight_grads` needs of an input, computed once per batch.

    For an unfoldable Conv2d the input patches ``(N, groups, in/groups * kh * kw, positions)``,
    which every back-propagated vector reuses; otherwise the input itself.
    """
    if not _unfoldable(module):
        return x
    patches = F.unfold(
        x,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )
    return patches.view(len(x), module.groups, -1, patches.shape[-1])


def _per_example_weight_grads(
    module: nn.Module, inputs: list[torch.Tensor], output_grads: list[torch.Tensor]
) -> torch.Tensor:
    """Per-example weight gradients, shape ``(N, *weight.shape)``, summed over the calls.

    ``inputs`` are the layer's inputs, one per call, as :func:`_prepared_input` returns them.
    """
    weight = current_weight(module)
    if isinstance(module, nn.Linear):
        total = 0
        for x, g in zip(inputs, output_grads, strict=True):
            x = x.reshape(x.shape[0], -1, x.shape[-1])
            g = g.reshape(g.shape[0], -1, g.shape[-1])
            total = total + torch.einsum("nto,nti->noi", g, x)
        return total
    if _unfoldable(module):  # inputs are patches: output gradients times patches
        total = 0
        for patches, g in zip(inputs, output_grads, strict=True):
            n, groups, _, positions = patches.shape
            g = g.reshape(n * groups, module.out_channels // groups, positions)
            total = total + torch.bmm(g, patches.reshape(n * groups, -1, positions).transpose(1, 2))
        return total.reshape(-1, *weight.shape)
    function = _layer_function(module)

    def one_example(w: torch.Tensor, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (function(x.unsqueeze(0), w) * g.unsqueeze(0)).sum()

    per_example = torch.func.vmap(torch.func.grad(one_example), in_dims=(None, 0, 0))
    return sum(per_example(weight, x, g) for x, g in zip(inputs, output_grads, strict=True))


# --------------------------------------------------------------------------- curvature factors


def _cross_entropy(logits: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(logits, batch[1])


def _per_example_output_gradients(
    logits: torch.Tensor, batch: tuple[torch.Tensor, ...], loss_fn: Callable
) -> torch.Tensor:
    """``d l_n / d f_n`` for every example: ``N`` times the gradient of the batch-mean loss."""
    leaf = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(leaf, batch), leaf)
    return grad * len(logits)


def _curvature_factors(
    logits: torch.Tensor, batch: tuple[torch.Tensor, ...], loss_fn: Callable | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    r"""Pairs ``(v_k, lambda_k)`` with :math:`H_n = \sum_k \lambda_{nk} v_{nk} v_{nk}^T` per example.

    :math:`H_n` is the Hessian of the example's loss w.r.t. its logits. For the
    cross-entropy it is :math:`\mathrm{diag}(p) - p p^T = \sum_c v_c v_c^T` with
    :math:`v_c = \sqrt{p_c}(e_c - p)` (because the probabilities sum to 1). For
    another ``loss_fn`` it is read off ``C`` Hessian-vector products of the batch
    loss (exact when the loss is a mean of per-example terms) and diagonalised.
    """
    if logits.dim() != 2:
        raise ValueError(
            f"criterion 'obd' needs logits of shape (batch, classes), got {tuple(logits.shape)}"
        )
    n, classes = logits.shape
    if loss_fn is None:
        p = torch.softmax(logits.detach(), dim=1)
        eye = torch.eye(classes, dtype=p.dtype, device=p.device)
        ones = torch.ones(n, dtype=p.dtype, device=p.device)
        return [(p[:, c : c + 1].sqrt() * (eye[c] - p), ones) for c in range(classes)]
    leaf = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(leaf, batch), leaf, create_graph=True)
        if not grad.requires_grad:  # the loss is linear in the logits: no curvature
            return []
        rows = []
        for c in range(classes):
            (row,) = torch.autograd.grad(
                grad[:, c].sum(), leaf, retain_graph=c < classes - 1, allow_unused=True
            )
            rows.append(torch.zeros_like(leaf) if row is None else row)
    # rows[c][n] = H_n[c, :] / N for a loss that is the batch mean of per-example terms.
    hessians = torch.stack(rows, dim=1).detach() * n
    eigenvalues, eigenvectors = torch.linalg.eigh((hessians + hessians.transpose(1, 2)) / 2)
    return [(eigenvectors[:, :, k], eigenvalues[:, k]) for k in range(classes)]


# --------------------------------------------------------------------------- saliency


def saliency_scores(
    model: nn.Module,
    dataset: TensorDataset | None,
    criterion: str,
    *,
    loss_fn: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor] | None = None,
    batch_size: int = 256,
) -> dict[str, torch.Tensor]:
    r"""Score every weight of every prunable layer; low scores are pruned first.

    With :math:`L(w) = \frac1N \sum_{n=1}^N \ell_n(w)` the mean loss over
    ``dataset`` and :math:`w` the weights the next forward pass uses (masks
    applied):

    * ``"magnitude"``: :math:`s_i = |w_i|`. A mask that keeps the largest scores
      is exactly :func:`companion.pruning.magnitude_masks`.
    * ``"taylor"``: :math:`s_i = |w_i \, \partial L/\partial w_i|`, the first-order
      estimate of :math:`|L(w) - L(w \text{ with } w_i = 0)|` (Molchanov et al.,
      2017). The gradient is that of the whole data set's mean loss; near a
      minimum it is close to zero and the scores become small and noisy, which
      is why OBD looks at the second order.
    * ``"obd"``: :math:`s_i = \tfrac12 h_{ii} w_i^2` (LeCun, Denker and Solla,
      1990), the second-order estimate of the loss increase at a minimum, with
      :math:`h_{ii}` the diagonal of the Gauss-Newton matrix

      .. math:: G = \frac1N \sum_n J_n^T H_n J_n,

      :math:`J_n = \partial f(x_n)/\partial w` the Jacobian of the logits and
      :math:`H_n = \partial^2 \ell_n / \partial f^2` the Hessian of the loss in
      the logits (:math:`\mathrm{diag}(p_n) - p_n p_n^T` for the cross-entropy).
      :math:`G` drops the terms of the Hessian that hold second derivatives of
      the network itself, so it equals the Hessian for a model linear in its
      weights; it is positive semi-definite for a convex loss. The diagonal is
      computed exactly, not estimated: :math:`H_n = \sum_k v_{nk} v_{nk}^T`, each
      :math:`v_{nk}` is back-propagated to every layer, and the squares of the
      per-example weight gradients :math:`J_n^T v_{nk}` are summed. (Optimal Brain
      Surgeon, Hassibi and Stork, 1993, uses the full inverse Hessian instead and
      also corrects the remaining weights; it is not implemented here.)
    * ``"fisher"``: :math:`s_i = \tfrac12 F_{ii} w_i^2` with the empirical Fisher
      :math:`F = \frac1N \sum_n g_n g_n^T`, :math:`g_n = \partial \ell_n/\partial w`.
      It is :math:`G` with :math:`H_n` replaced by the rank-one
      :math:`u_n u_n^T`, :math:`u_n = \partial \ell_n / \partial f` at the
      observed label: one back-propagation per batch instead of one per class.
      The two agree only in expectation over labels drawn from the model's own
      predictions; on examples the model fits well :math:`u_n \approx 0` and
      the empirical Fisher sees almost no curvature where :math:`G` still does.

    Cost per batch of ``B`` examples with ``C`` outputs: ``"taylor"`` and
    ``"fisher"`` one forward and one backward pass, ``"obd"`` one forward and
    ``C`` backward passes. A Linear layer fed a batch of vectors accumulates its
    diagonal with one ``(out x B) @ (B x in)`` product per batch; other layers
    (convolutions, Linear on sequences, a layer called twice) form per-example
    weight gradients, ``B`` times the layer's weight in memory.

    The model runs in eval mode (no dropout, BatchNorm with its running
    statistics); the examples are therefore independent, as the per-example
    formulas need. Nothing of the model is changed: parameters, buffers,
    ``.grad`` and ``training`` flags are as before.

    Args:
        model: The network; every Linear and Conv layer is scored.
        dataset: ``TensorDataset`` of ``(inputs, targets, ...)``; the model is
            called on ``inputs``. Unused (may be ``None``) for ``"magnitude"``.
        criterion: ``"magnitude"``, ``"taylor"``, ``"obd"`` or ``"fisher"``.
        loss_fn: ``loss_fn(logits, batch) -> mean loss over the batch``, the
            convention of :func:`companion.training.train` (default: the
            cross-entropy with ``batch[1]`` as class indices). For ``"obd"`` it
            must be a mean of per-example terms and twice differentiable in the
            logits, and the logits must be ``(batch, classes)``.
        batch_size: Examples per forward pass (scores do not depend on it).

    Returns:
        ``{layer name: scores}``, each shaped like the layer's weight, >= 0
        (``"obd"`` with a non-convex ``loss_fn`` may give negative scores).

    Raises:
        ValueError: If ``criterion`` is unknown, the model has no prunable
            layer, ``dataset`` is empty or lacks targets, a target is not a
            class index of the logits, ``batch_size`` < 1, or, for ``"obd"``,
            the logits are not two-dimensional.
        TypeError: If ``model`` is not an ``nn.Module``, ``dataset`` is not a
            ``TensorDataset`` (when one is needed), the default loss gets
            targets that are not integers, ``loss_fn`` is not callable, or
            ``batch_size`` is not an int.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> data = TensorDataset(torch.randn(8, 3), torch.tensor([0, 1] * 4))
        >>> scores = saliency_scores(net, data, "obd")
        >>> scores["0"].shape, bool((scores["0"] >= 0).all())
        (torch.Size([2, 3]), True)
    """
    layers = _check_model(model)
    _check_criterion(criterion)
    if criterion == "magnitude":
        return {name: current_weight(module).abs().clone() for name, module in layers.items()}
    _check_callable("loss_fn", loss_fn)
    check_positive_int("batch_size", batch_size)
    total = _check_labelled(dataset, integer=loss_fn is None)
    accumulators = {
        name: torch.zeros_like(current_weight(module)) for name, module in layers.items()
    }
    check_targets = loss_fn is None
    recorder = _Recorder(layers)
    try:
        with _eval_mode(model), torch.enable_grad():
            for batch in iterate_batches(dataset, batch_size):
                recorder.clear()
                logits = model(batch[0])
                if check_targets:  # once, now that the number of classes is known
                    _check_target_range(dataset.tensors[1], logits.shape[-1])
                    check_targets = False
                _accumulate(
                    criterion, layers, recorder, logits, batch, loss_fn, accumulators, total
                )
    finally:
        recorder.remove()
        with torch.no_grad():
            # The masking pre-hook set each pruned layer's weight inside the graph; recompute it
            # outside, so the model holds no reference to this computation.
            for module in layers.values():
                if prune.is_pruned(module) and hasattr(module, "weight_mask"):
                    module.weight = module.weight_orig * module.weight_mask
    scores = {}
    for name, module in layers.items():
        weight = current_weight(module)
        if criterion == "taylor":
            scores[name] = (weight * accumulators[name]).abs()
        else:
            scores[name] = 0.5 * accumulators[name] * weight.square()
    return scores


def _accumulate(
    criterion: str,
    layers: dict[str, nn.Module],
    recorder: _Recorder,
    logits: torch.Tensor,
    batch: tuple[torch.Tensor, ...],
    loss_fn: Callable | None,
    accumulators: dict[str, torch.Tensor],
    total: int,
) -> None:
    """Add one batch's share of the gradient (taylor) or curvature diagonal (obd, fisher)."""
    size = len(logits)
    loss = loss_fn or _cross_entropy
    inputs = {name: [x for x, _ in calls] for name, calls in recorder.calls.items()}
    if criterion == "taylor":
        leaf = logits.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad_logits,) = torch.autograd.grad(loss(leaf, batch), leaf)
        grads = _output_grads(logits, recorder, grad_logits)
        for name, module in layers.items():
            if inputs[name]:
                weight_grad = _batch_weight_grad(module, inputs[name], grads[name])
                accumulators[name] += weight_grad * (size / total)
        return
    if criterion == "fisher":
        factors = [
            (
                _per_example_output_gradients(logits, batch, loss),
                torch.ones(size, dtype=logits.dtype, device=logits.device),
            )
        ]
    else:
        factors = _curvature_factors(logits, batch, loss_fn)
    # Linear layers fed vectors: sum_k lambda_k (delta_k)^2, then one product with x^2.
    plain = {
        name: module
        for name, module in layers.items()
        if _is_plain_linear(module, recorder.calls[name])
    }
    delta_squares = {name: 0 for name in plain}
    prepared = {
        name: [_prepared_input(module, x) for x in inputs[name]]
        for name, module in layers.items()
        if name not in plain
    }
    for vector, eigenvalue in factors:
        grads = _output_grads(logits, recorder, vector)
        for name, module in layers.items():
            if not inputs[name]:
                continue
            if name in plain:
                delta_squares[name] = (
                    delta_squares[name] + eigenvalue[:, None] * grads[name][0] ** 2
                )
                continue
            for start in range(0, size, _PER_EXAMPLE_CHUNK):
                part = slice(start, start + _PER_EXAMPLE_CHUNK)
                per_example = _per_example_weight_grads(
                    module, [x[part] for x in prepared[name]], [g[part] for g in grads[name]]
                )
                weights = eigenvalue[part].view(-1, *([1] * (per_example.dim() - 1)))
                accumulators[name] += (weights * per_example.square()).sum(0) / total
    for name in plain:
        if isinstance(delta_squares[name], torch.Tensor):
            x = inputs[name][0]
            accumulators[name] += delta_squares[name].T @ x.square() / total


# --------------------------------------------------------------------------- N:M masks


def _check_nm(n: int, m: int) -> None:
    check_positive_int("m", m)
    check_positive_int("n", n)
    if n > m:
        raise ValueError(f"n must be in [1, m] = [1, {m}], got n={n}")


@torch.no_grad()
def nm_masks(
    model: nn.Module,
    n: int = 2,
    m: int = 4,
    *,
    scores: dict[str, torch.Tensor] | None = None,
    layers: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Semi-structured N:M masks: in every group of ``m`` consecutive weights, keep the ``n`` largest.

    Groups run along each row of a Linear weight ``(out, in)``; for a
    convolution along the flattened ``in_channels/groups x kernel`` dimension
    of each filter, i.e. the rows of ``weight.flatten(1)``, the layout of the
    matrix a convolution is lowered to. This is the layout of PyTorch's
    semi-structured sparse tensors (``torch.sparse.to_sparse_semi_structured``,
    2:4 along the rows of a 2-D weight), so a 2:4 mask multiplied into a
    weight gives a tensor those kernels accept (they also need half precision
    and CUDA compute capability >= 8.0). Every group keeps exactly ``n``
    weights, so every layer covered has sparsity ``1 - n/m``. SparseGPT (Frantar
    and Alistarh, 2023) targets the same 2:4 and 4:8 patterns, choosing the kept
    weights with second-order information and updating the others.

    Like the unstructured :func:`companion.pruning.magnitude_masks`, the output
    layer is covered too (N:M keeps every output neuron). Weights that are
    already masked rank lowest; a group with more than ``m - n`` of them keeps
    some anyway (and they take their ``weight_orig`` values again once the
    masks are applied) so that every group holds exactly ``n``.

    Args:
        model: The network; its effective (masked) weights are ranked.
        n: Weights kept per group, in ``[1, m]``.
        m: Group length, >= 1; each covered layer's row length must be a
            multiple of it.
        scores: Rank by these ``{layer name: scores shaped like the weight}``
            (e.g. from :func:`saliency_scores`) instead of by magnitude.
        layers: Names of the layers to cover (default: the layers in
            ``scores``, or else every prunable layer). Leave out a layer whose
            rows do not split into groups of ``m``, such as a first
            convolution with one input channel and a 5x5 kernel.

    Returns:
        ``{layer name: mask}`` with masks shaped like the weights (1 keep, 0
        prune), ready for :func:`companion.masks.apply_masks`.

    Raises:
        ValueError: If ``n`` is not in ``[1, m]``, ``m`` < 1, the model has no
            prunable layer, a name in ``layers`` is not a prunable layer or has
            no entry in ``scores``, a score tensor has the wrong shape, or a
            row length is not divisible by ``m``.
        TypeError: If ``model`` is not an ``nn.Module``, ``n`` or ``m`` is not
            an int, or ``scores`` is not a dict of tensors.

    Example:
        >>> layer = nn.Linear(4, 1)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 2.0]]))
        >>> nm_masks(nn.Sequential(layer), 2, 4)["0"].tolist()
        [[0.0, 1.0, 0.0, 1.0]]
    """
    _check_nm(n, m)
    all_layers = _check_model(model)
    if scores is not None and not isinstance(scores, dict):
        raise TypeError(
            f"scores must be a dict of {{layer name: tensor}} or None, got {type(scores).__name__}"
        )
    if layers is None:
        names = list(scores) if scores is not None else list(all_layers)
    elif isinstance(layers, str) or not all(isinstance(name, str) for name in layers):
        raise TypeError("layers must be a sequence of layer names (str)")
    else:
        names = list(layers)
    masks = {}
    for name in names:
        if name not in all_layers:
            raise ValueError(
                f"{name!r} is not a prunable layer of the model; layers are {list(all_layers)}"
            )
        module = all_layers[name]
        weight = current_weight(module)
        if scores is None:
            score = weight.abs()
        else:
            if name not in scores:
                raise ValueError(f"scores has no entry for layer {name!r}")
            score = scores[name]
            if not isinstance(score, torch.Tensor):
                raise TypeError(f"scores[{name!r}] must be a tensor, got {type(score).__name__}")
            if score.shape != weight.shape:
                raise ValueError(
                    f"scores[{name!r}] has shape {tuple(score.shape)}, but the weight of {name!r} "
                    f"has shape {tuple(weight.shape)}"
                )
            score = score.to(weight.device)
        rows = score.flatten(1).to(torch.float64)  # float64: no ties made by rounding
        if rows.shape[1] % m:
            raise ValueError(
                f"layer {name!r}: rows of {rows.shape[1]} weights (weight shape "
                f"{tuple(weight.shape)}) do not split into groups of m={m}; leave the layer out "
                "with layers=[...]"
            )
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            masked = (module.weight_mask == 0).flatten(1)
            rows = torch.where(masked, torch.full_like(rows, -torch.inf), rows)
        groups = rows.reshape(rows.shape[0], -1, m)
        keep = torch.zeros_like(groups, dtype=torch.float32)
        keep.scatter_(-1, torch.topk(groups, k=n, dim=-1).indices, 1.0)
        masks[name] = keep.reshape(weight.shape)
    return masks
