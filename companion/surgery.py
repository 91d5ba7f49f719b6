"""Network surgery: turn structured sparsity into a physically smaller network.

Masking a neuron's incoming weights to zero does not make a network smaller or
faster: the zero rows are still stored and multiplied. :func:`shrink` deletes
them.

Two implementations sit behind it:

* :func:`shrink_mlp`, the readable one the book teaches with. A deleted hidden
  neuron ``j`` of layer ``i`` still outputs the constant ``relu(b_j)`` (its bias
  passes through the ReLU), which reaches layer ``i + 1`` as
  ``W[:, j] * relu(b_j)``; that constant is folded into layer ``i + 1``'s bias,
  so the shrunk network computes exactly the same function.
* For any other network, :func:`shrink` asks Torch-Pruning's dependency graph
  (DepGraph, Fang et al. 2023) which channels are coupled (the convolutions
  feeding one residual add, a BatchNorm and its convolution, a depthwise
  convolution's inputs and outputs, a flattened feature map and the columns of
  the linear head) and removes a channel only where that is exact: where every
  layer producing it outputs exactly zero there whatever the input (zero
  weights and bias, or a BatchNorm with zero weight and bias), and every layer
  reading it saw zero there on an example batch. Nothing is folded there; a
  channel that carries a nonzero constant stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .masks import _check_model, current_weight, make_permanent
from .metrics import count_parameters
from .models import MLP
from .utils import clone_model

__all__ = ["alive_units", "GroupShrink", "ShrinkReport", "shrink", "shrink_mlp"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def alive_units(layer: nn.Module) -> torch.Tensor:
    """Indices of the output units (rows, or conv filters) whose effective weights are not all zero.

    Works on plain and on ``torch.nn.utils.prune``-masked layers (the masked
    ``weight`` is what counts).

    Example:
        >>> layer = nn.Linear(3, 4)
        >>> with torch.no_grad():
        ...     layer.weight[1] = 0
        >>> alive_units(layer).tolist()
        [0, 2, 3]
    """
    weight = current_weight(layer)
    return torch.nonzero(weight.flatten(1).abs().sum(1) != 0).flatten()


@dataclass(frozen=True)
class GroupShrink:
    """What :func:`shrink` did to one set of coupled channels (one DepGraph group).

    Attributes:
        layers: Qualified names of the layers that share these channels (the
            root layer first): convolutions and linear layers producing or
            reading them, and their normalisation layers.
        channels: Number of coupled channels before shrinking.
        producers: The layers among ``layers`` whose outputs make these channels
            (convolutions, linear layers, BatchNorms); the others read them.
        removed: Channel indices (in the root layer's numbering) that were removed.
        partly_dead: Indices dead in some producing layers but not in all (a
            residual add with one dead branch): they stayed, because the sum
            still carries the live branch.
        kept: Indices dead in every producer that stayed anyway, with ``note``
            saying why (the last channel of a layer, or a layer reading them saw
            a nonzero value on ``example_inputs``).
        note: Why channels or the whole group stayed; empty if nothing did.
    """

    layers: tuple[str, ...]
    channels: int
    producers: tuple[str, ...]
    removed: tuple[int, ...]
    partly_dead: tuple[int, ...] = ()
    kept: tuple[int, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ShrinkReport:
    """What :func:`shrink` removed and what stayed, group by group.

    Attributes:
        groups: One :class:`GroupShrink` per set of coupled channels (for an
            :class:`~companion.models.MLP`, one per hidden layer).
        parameters_before: Parameters of the input model.
        parameters_after: Parameters of the shrunk model.
    """

    groups: tuple[GroupShrink, ...]
    parameters_before: int
    parameters_after: int

    @property
    def removed(self) -> int:
        """Channels (or neurons) removed in all."""
        return sum(len(g.removed) for g in self.groups)

    @property
    def partly_dead(self) -> tuple[GroupShrink, ...]:
        """The groups in which some channels were dead in part of their producers only."""
        return tuple(g for g in self.groups if g.partly_dead)

    def __str__(self) -> str:
        lines = [
            f"shrink removed {self.removed} channels/neurons: {self.parameters_before} -> "
            f"{self.parameters_after} parameters"
        ]
        for g in self.groups:
            if g.removed or g.partly_dead or g.kept or g.note:
                line = f"  {g.layers[0]}: {len(g.removed)}/{g.channels} removed"
                if g.partly_dead:
                    line += f", {len(g.partly_dead)} partly dead stayed"
                if g.note:
                    line += f" ({g.note})"
                lines.append(line)
        return "\n".join(lines)


@torch.no_grad()
def shrink_mlp(model: MLP) -> MLP:
    r"""Return a smaller :class:`~companion.models.MLP` without the hidden neurons whose incoming weights are all zero.

    For every hidden layer, the rows of dead neurons are deleted, the matching
    columns of the next layer are deleted, and each dead neuron's constant
    output is folded into the next layer's bias:

    .. math:: b'_{i+1} = b_{i+1} + W_{i+1}[:, D]\,\mathrm{relu}(b_i[D])

    where :math:`D` is the set of dead neurons. The output layer keeps every
    class; a hidden layer keeps at least one neuron. Dropout is unchanged (it
    is inactive in eval mode, where the equality holds).

    Args:
        model: A trained, pruned MLP (masked or with masks made permanent).
            It is not modified.

    Returns:
        A new MLP on the same device with plain (unmasked) parameters, whose
        outputs equal ``model``'s in eval mode up to float rounding.

    Raises:
        TypeError: If ``model`` is not a :class:`~companion.models.MLP`.

    Example:
        >>> net = MLP((4, 6, 3))
        >>> with torch.no_grad():
        ...     net.fc1.weight[:4] = 0
        >>> small = shrink_mlp(net)
        >>> small.sizes
        (4, 2, 3)
        >>> x = torch.rand(5, 4)
        >>> torch.allclose(small(x), net(x), atol=1e-6)
        True
    """
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a companion.models.MLP, got {type(model).__name__}")
    layers = model.linears
    weights = [current_weight(layer).clone() for layer in layers]
    biases = [layer.bias.detach().clone() for layer in layers]
    kept_inputs = torch.arange(model.sizes[0], device=weights[0].device)
    new_weights, new_biases, sizes = [], [], [model.sizes[0]]
    for i in range(len(layers)):
        weight = weights[i][:, kept_inputs]
        if i == len(layers) - 1:
            keep = torch.arange(weight.shape[0], device=weight.device)
        else:
            keep = torch.nonzero(weights[i].abs().sum(1) != 0).flatten()
            if len(keep) == 0:  # keep one neuron so that the layer still exists
                keep = torch.zeros(1, dtype=torch.long, device=weight.device)
            dead = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            dead[keep] = False
            # Dead neurons output the constant relu(b); fold it into the next layer's bias.
            biases[i + 1] += weights[i + 1][:, dead] @ torch.relu(biases[i][dead])
        new_weights.append(weight[keep])
        new_biases.append(biases[i][keep])
        sizes.append(len(keep))
        kept_inputs = keep
    small = MLP(sizes, dropout=model.dropout_p).to(weights[0].device)
    for layer, weight, bias in zip(small.linears, new_weights, new_biases, strict=True):
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    small.train(model.training)
    return small


def _mlp_report(model: MLP, small: MLP) -> ShrinkReport:
    groups = []
    for i, layer in enumerate(model.linears[:-1]):
        alive = set(alive_units(layer).tolist())
        width = model.sizes[i + 1]
        removed = tuple(j for j in range(width) if j not in alive)
        kept: tuple[int, ...] = ()
        note = ""
        if len(removed) == width:  # shrink_mlp keeps neuron 0 of an emptied layer
            removed, kept, note = removed[1:], (0,), "the last unit of the layer stays"
        groups.append(
            GroupShrink(
                layers=(f"fc{i + 1}", f"fc{i + 2}"),
                channels=width,
                producers=(f"fc{i + 1}",),
                removed=removed,
                kept=kept,
                note=note,
            )
        )
    return ShrinkReport(tuple(groups), count_parameters(model), count_parameters(small))


def _inputs_tuple(example_inputs: object) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if (
        isinstance(example_inputs, (tuple, list))
        and len(example_inputs) > 0
        and all(isinstance(t, torch.Tensor) for t in example_inputs)
    ):
        return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a torch.Tensor batch or a tuple of tensors (the model's "
        f"positional arguments), got {type(example_inputs).__name__}"
    )


def _tensors(output: object) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _tensors(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _tensors(value)]
    return []


def _zero_units(module: nn.Module) -> torch.Tensor:
    """Per output channel: does ``module`` output exactly zero there, whatever its input?

    A convolution or linear unit does when its weight slice and its bias are zero; a
    BatchNorm channel when its affine weight and bias are zero (in eval mode, and in
    training mode too: ``0 * normalised + 0``).
    """
    if isinstance(module, _NORMS):
        if not module.affine:
            return torch.zeros(module.num_features, dtype=torch.bool)
        weight, bias = current_weight(module, "weight"), current_weight(module, "bias")
        return ((weight == 0) & (bias == 0)).cpu()
    weight = current_weight(module)
    zero = (weight.flatten(1) == 0).all(1)
    if module.bias is not None:
        zero &= current_weight(module, "bias") == 0
    return zero.cpu()


def _input_channel_peaks(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], layers: list[nn.Module]
) -> tuple[dict[nn.Module, torch.Tensor], object]:
    """The largest |input| each layer sees per input channel on ``inputs``, and the output."""
    peaks: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        if isinstance(module, nn.Linear):
            peak = x.abs().reshape(-1, x.shape[-1]).amax(0)
        else:  # [batch, channels, ...]
            peak = x.abs().transpose(0, 1).reshape(x.shape[1], -1).amax(1)
        peaks[module] = torch.maximum(peaks[module], peak) if module in peaks else peak

    handles = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            output = model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {m: p.cpu() for m, p in peaks.items()}, output


def _plan_group(graph, group, names, peaks) -> tuple[GroupShrink, list[int]]:
    """Decide which of a group's channels can go: dead in every producer, zero in every reader."""
    from torch_pruning import ops

    parameter_free = (
        ops._ConcatOp,
        ops._SplitOp,
        ops._UnbindOp,
        ops._ReshapeOp,
        ops._SliceOp,
        ops._ElementWiseOp,
        ops._ExpandOp,
    )
    channels = len(group[0].idxs)
    dead = torch.ones(channels, dtype=torch.bool)  # dead in every producer so far
    dead_somewhere = torch.zeros(channels, dtype=torch.bool)
    read_as_zero = torch.ones(channels, dtype=torch.bool)
    producers = 0
    layers: list[str] = []
    producing: list[str] = []
    note = ""
    for item in group.items:
        node, handler = item.dep.target, item.dep.handler
        module = node.module
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        roots = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
        if isinstance(module, nn.Module) and module in names and names[module] not in layers:
            layers.append(names[module])
        if isinstance(module, _LAYERS + _NORMS) and graph.is_out_channel_pruning_fn(handler):
            if names.get(module) not in producing:
                producing.append(names.get(module, type(module).__name__))
        if isinstance(module, (ops._OutputOp,)) or (
            graph.is_out_channel_pruning_fn(handler) and not node.outputs
        ):
            note = "feeds the model's output"
            continue
        if isinstance(module, parameter_free):
            continue
        if not isinstance(module, _LAYERS + _NORMS):
            note = f"couples a {type(module).__name__}, whose channels shrink does not remove"
            continue
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.out_channels:
            # Torch-Pruning's group.prune does not keep the channels of each group together.
            note = f"couples a grouped convolution ({names.get(module)}, groups={module.groups})"
        if graph.is_out_channel_pruning_fn(handler):
            if (
                isinstance(module, _LAYERS)
                and node.outputs
                and all(isinstance(out.module, _NORMS) for out in node.outputs)
            ):
                continue  # read only by its BatchNorm, which decides (it is in the group too)
            zero = _zero_units(module)[idxs]
            producers += 1
            dead[roots] &= zero
            dead_somewhere[roots] |= zero
        elif module in peaks:  # a layer reading the channels
            read_as_zero[roots] &= peaks[module][idxs] == 0
    if note or producers == 0:
        removable = torch.zeros(channels, dtype=torch.bool)
        kept = torch.nonzero(dead).flatten() if producers else torch.zeros(0, dtype=torch.long)
    else:
        removable = dead & read_as_zero
        kept = torch.nonzero(dead & ~read_as_zero).flatten()
        if kept.numel():
            note = "a layer reading them saw nonzero values on example_inputs"
        if bool(removable.all()):  # a layer keeps one channel so that it still exists
            removable[0] = False
            kept = torch.cat([torch.zeros(1, dtype=torch.long), kept])
            note = "; ".join(filter(None, [note, "the last channel of the layer stays"]))
    removed = torch.nonzero(removable).flatten().tolist()
    report = GroupShrink(
        layers=tuple(layers),
        channels=channels,
        producers=tuple(producing),
        removed=tuple(removed),
        partly_dead=tuple(torch.nonzero(dead_somewhere & ~dead).flatten().tolist()),
        kept=tuple(kept.tolist()),
        note=note,
    )
    return report, removed


def _traced_copy(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """A copy of ``model`` with masks made permanent, in eval mode, and its dependency graph."""
    import torch_pruning as tp

    small = make_permanent(clone_model(model))
    small.eval()  # tracing runs a forward pass: it must not move BatchNorm statistics
    for parameter in small.parameters():
        parameter.requires_grad_(True)  # DepGraph traces through autograd
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            small, example_inputs=inputs if len(inputs) > 1 else inputs[0], verbose=False
        )
    return small, graph


def _pruned(model, inputs, plans, chosen):
    """A fresh traced copy of ``model`` with the channels of the ``chosen`` plans removed."""
    small, graph = _traced_copy(model, inputs)
    groups = list(graph.get_all_groups())
    for i in chosen:
        groups[i].prune(idxs=plans[i][1])
    return small


def _same_outputs(small, inputs, reference, rtol: float) -> bool:
    with torch.no_grad():
        outputs = _tensors(small(*inputs))
    expected = _tensors(reference)
    if len(outputs) != len(expected):
        return False
    for before, after in zip(expected, outputs, strict=True):
        scale = before.abs().max().item() if before.numel() else 0.0
        if before.shape != after.shape or not torch.allclose(
            before, after, rtol=rtol, atol=rtol * max(scale, 1e-12)
        ):
            return False
    return True


def _shrink_graph(
    model: nn.Module, example_inputs: object, rtol: float
) -> tuple[nn.Module, ShrinkReport]:
    inputs = _inputs_tuple(example_inputs)
    small, graph = _traced_copy(model, inputs)
    names = {module: name for name, module in small.named_modules()}
    readers = [m for m in small.modules() if isinstance(m, _LAYERS)]
    peaks, reference = _input_channel_peaks(small, inputs, readers)
    groups = list(graph.get_all_groups())  # every decision is taken before anything is pruned
    plans = [_plan_group(graph, group, names, peaks) for group in groups]
    chosen = [i for i, (_, removed) in enumerate(plans) if removed]
    for i in chosen:
        groups[i].prune(idxs=plans[i][1])
    if not _same_outputs(small, inputs, reference, rtol):
        # Every removed channel is zero, yet the outputs moved: an operation across channels
        # that the graph does not show (a mean or norm over the channel dimension outside a
        # module). Find the groups responsible, one at a time, on fresh copies.
        accepted: list[int] = []
        small = _pruned(model, inputs, plans, accepted)
        for i in chosen:
            trial = _pruned(model, inputs, plans, [*accepted, i])
            if _same_outputs(trial, inputs, reference, rtol):
                accepted.append(i)
                small = trial
            else:
                report, removed = plans[i]
                plans[i] = (
                    replace(
                        report,
                        removed=(),
                        kept=tuple(sorted(report.kept + report.removed)),
                        note="removing them changed the outputs on example_inputs (an operation "
                        "across channels, such as a mean over them)",
                    ),
                    [],
                )
    originals = dict(model.named_modules())
    for name, module in small.named_modules():
        if name in originals:
            module.training = originals[name].training
    trainable = dict(model.named_parameters())
    for name, parameter in small.named_parameters():
        original = trainable.get(name, trainable.get(f"{name}_orig"))
        parameter.requires_grad_(original.requires_grad if original is not None else True)
    report = ShrinkReport(
        tuple(r for r, _ in plans), count_parameters(model), count_parameters(small)
    )
    return small, report


def shrink(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    return_report: bool = False,
    rtol: float = 1e-4,
) -> nn.Module | tuple[nn.Module, ShrinkReport]:
    r"""Return a physically smaller copy of ``model`` without its structurally dead units.

    An :class:`~companion.models.MLP` goes to :func:`shrink_mlp`, the book's
    readable implementation (dead neurons removed, their constant outputs
    folded into the next bias); ``example_inputs`` is not needed for it.

    Any other network needs ``example_inputs``, one batch it runs on. On a copy
    of the model with its masks made permanent, Torch-Pruning's dependency graph
    (``torch_pruning.DependencyGraph``, traced on ``example_inputs``) finds every
    group of coupled channels: the output channels of a convolution or linear
    layer, its BatchNorm, every layer reading those channels, and every layer
    whose channels are tied to them (the branches of a residual add, a depthwise
    convolution, a squeeze-excitation scale, the columns of a linear head after
    a flatten, concatenated inputs). A channel of a group is removed only if

    * it is dead in every producer of the group: the producer's effective
      weight slice and bias are all zero, or the BatchNorm right after it has
      effective weight and bias zero for that channel (a convolution read only
      by its BatchNorm is decided by the BatchNorm), so it outputs exactly zero
      whatever the input; and
    * every layer reading it sees exactly zero there on ``example_inputs``
      (this catches an operation with :math:`f(0) \ne 0`, such as a sigmoid,
      between a dead producer and a reader).

    A channel dead in only some producers (one dead branch of a residual add)
    stays and is listed in the report, as is the last channel of a layer, a
    group coupled to a grouped (not depthwise) convolution or to a layer type
    other than convolution, linear and BatchNorm (LayerNorm, GroupNorm, PReLU,
    embeddings, attention), and the model's output units (the classes). Nothing
    is folded: a channel carrying a nonzero constant stays. The result is
    checked against the masked model on ``example_inputs``; if it differs (an
    operation across channels that the graph does not show, such as a mean
    over the channel dimension), the groups responsible are found one at a
    time on fresh copies, and they stay.

    Limits: the model must be traceable by Torch-Pruning, which records one
    forward pass through autograd: no data-dependent control flow (a branch
    taken on another input is not seen), no operations outside autograd on the
    channels, parameters used only inside their own modules (a functional
    ``F.conv2d(x, self.w)`` is an unwrapped parameter the graph may not prune
    correctly). A mean or norm over the channel dimension outside a module is
    invisible to the graph; only the output check finds it, on
    ``example_inputs``, at the cost of one rebuild per group. Transposed
    convolutions are not shrunk, nor anything coupled to them.

    Args:
        model: The pruned network (masked with ``torch.nn.utils.prune``, or with
            masks made permanent). It is not modified.
        example_inputs: For a model that is not an MLP: a batch it runs on (a
            tensor, or a tuple of the forward pass's positional tensors), on
            the model's device.
        return_report: Also return a :class:`ShrinkReport` of what was
            removed and what stayed.
        rtol: Relative tolerance of the final output check (against the largest
            output magnitude).

    Returns:
        The shrunk model (plain, unmasked parameters; every module's
        ``training`` flag and every parameter's ``requires_grad`` as in
        ``model``; the layers' own sizes such as ``out_channels`` updated, but
        not sizes the model's class stored at construction, such as the
        ``channels`` of a :class:`~companion.convnets.LeNet5`), whose outputs
        equal ``model``'s in eval mode up to float rounding; with
        ``return_report=True``, the pair ``(model, report)``.

    Raises:
        TypeError: If ``model`` is not a ``torch.nn.Module``, if a model that is
            not an MLP comes without ``example_inputs``, or if
            ``example_inputs`` is not a tensor or a tuple of tensors.
        ValueError: If ``rtol`` is not positive.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                     nn.Conv2d(8, 4, 3)).eval()
        >>> with torch.no_grad():
        ...     net[1].weight[:5] = 0
        ...     net[1].bias[:5] = 0
        >>> x = torch.randn(2, 3, 16, 16)
        >>> small, report = shrink(net, x, return_report=True)
        >>> small[0].out_channels, small[3].in_channels, report.removed
        (3, 3, 5)
        >>> torch.allclose(small(x), net(x), atol=1e-5)
        True
    """
    _check_model(model)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ValueError(f"rtol must be a float in (0, inf), got {rtol!r}")
    if isinstance(model, MLP):
        small = shrink_mlp(model)
        return (small, _mlp_report(model, small)) if return_report else small
    if example_inputs is None:
        raise TypeError(
            "model must be a companion.models.MLP, or example_inputs must be given for any "
            f"other torch.nn.Module (got a {type(model).__name__} without example_inputs)"
        )
    small, report = _shrink_graph(model, example_inputs, float(rtol))
    return (small, report) if return_report else small
