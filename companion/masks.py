"""Masks on a model, the weights its forward pass really uses, and the layers it must keep.

A mask dict maps a layer's qualified name (``"fc1"``) to a 0/1 tensor shaped
like its weight. :func:`apply_masks` puts it on the model with PyTorch's own
re-parametrisation (``torch.nn.utils.prune.custom_from_mask``): the layer then
holds the parameter ``weight_orig`` and the buffer ``weight_mask``, and its
``weight`` is recomputed as ``weight_orig * weight_mask`` before every forward
pass. The helpers here read those weights as the next forward pass will see
them (:func:`current_weight`, :func:`effective_weights`), bring the stale
``weight`` attribute up to date (:func:`refresh_masked_weights`) and fold the
masks in for good (:func:`make_permanent`).

Structured pruning removes whole output units, so it must know which layers
produce the model's output (their units are the classes): :func:`output_layers`
reads them from the model's graph (``torch.fx``), not from definition order.
A structured mask applied with ``apply_masks(..., structured=True)`` kills each
pruned unit completely: its bias and the affine parameters of a BatchNorm
reading its output are masked too, so the unit outputs exactly zero and
removing it is exact.

The criteria that *compute* masks live in :mod:`companion.pruning`; the
measurements built on effective weights (zeros, sparsity, bytes) in
:mod:`companion.metrics`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune

__all__ = [
    "PRUNABLE_TYPES",
    "prunable_layers",
    "output_layers",
    "batchnorm_after",
    "current_weight",
    "effective_weights",
    "refresh_masked_weights",
    "apply_masks",
    "erase_masked_",
    "current_masks",
    "is_pruned",
    "make_permanent",
]

#: Layer types whose ``weight`` the book prunes.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Element-wise operations that map 0 to 0: a BatchNorm reached from a layer through them alone
# still sees that layer's dead units as exact zeros, so it is masked with the layer.
_ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_ZERO_PRESERVING_FUNCTIONS = (
    torch.relu,
    torch.tanh,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.tanh,
    F.hardtanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
)
_ZERO_PRESERVING_METHODS = ("relu", "tanh", "contiguous")


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _attention_owned(model: nn.Module) -> set[str]:
    """Names of the sub-modules that live inside an ``nn.MultiheadAttention``."""
    owned = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            owned.update(f"{prefix}{sub}" for sub, _ in module.named_modules() if sub)
    return owned


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and convolutional sub-modules of ``model`` by qualified name.

    Layers owned by an ``nn.MultiheadAttention`` (its ``out_proj``) are not
    included: the attention reads their ``weight`` directly instead of calling
    them, so the forward hook of a ``torch.nn.utils.prune`` mask never runs and
    training a masked one fails ("backward through the graph a second time").

    Args:
        model: Any module.

    Returns:
        An ordered ``{name: module}`` dict (definition order).

    Example:
        >>> from companion.models import MLP
        >>> list(prunable_layers(MLP((4, 3, 2))))
        ['fc1', 'fc2']
        >>> list(prunable_layers(nn.Sequential(nn.MultiheadAttention(4, 2), nn.Linear(4, 2))))
        ['1']
    """
    _check_model(model)
    owned = _attention_owned(model)
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and name not in owned
    }


# --------------------------------------------------------------------------- the model's graph


class _LayerTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps every prunable layer and BatchNorm a single graph node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (*PRUNABLE_TYPES, *_BATCHNORM_TYPES)):
            return True
        return super().is_leaf_module(module, qualified_name)


def _fx_graph(model: nn.Module) -> tuple[fx.Graph | None, str]:
    """The model's ``torch.fx`` graph, or ``None`` and the reason it could not be traced."""
    try:
        return _LayerTracer().trace(model), ""
    except Exception as error:  # fx raises many types for untraceable Python
        return None, f"{type(error).__name__}: {error}"


def _fx_output_layers(graph: fx.Graph, layers: dict[str, nn.Module]) -> set[str]:
    """Layers whose output reaches the graph's output without passing another prunable layer."""
    found: set[str] = set()
    seen: set[fx.Node] = set()
    stack = [node for node in graph.nodes if node.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and node.target in layers:
            found.add(str(node.target))
            continue
        if node.op == "call_module":
            # A torch.nn building block traced as one node (nn.TransformerEncoderLayer): which
            # of its layers feeds its output is not visible, so all of them are protected.
            found.update(name for name in layers if name.startswith(f"{node.target}."))
        stack.extend(node.all_input_nodes)
    return found


def _flat_tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flat_tensors(item)]
    return []


def _example_batch(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor | None:
    if example_input is not None:
        return example_input
    shape = getattr(model, "example_input_shape", None)
    if shape is None:
        return None
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return torch.rand(1, *(int(d) for d in shape), device=device)


def _hook_output_layers(
    model: nn.Module, layers: dict[str, nn.Module], batch: torch.Tensor
) -> tuple[set[str] | None, str]:
    """Output layers from the autograd graph of one forward pass on ``batch`` (model unchanged)."""
    producers: dict[object, str] = {}
    keep_alive: list[torch.Tensor] = []  # so that no grad_fn of a recorded output is freed

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            for tensor in _flat_tensors(output):
                if tensor.grad_fn is not None:
                    producers[tensor.grad_fn] = name
                    keep_alive.append(tensor)

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in layers.items()]
    modes = {m: m.training for m in model.modules()}
    batch = batch.detach().clone()
    if batch.is_floating_point():
        batch.requires_grad_(True)
    try:
        model.eval()  # no BatchNorm statistics or dropout change while tracing
        with torch.enable_grad():
            outputs = _flat_tensors(model(batch))
    except Exception as error:  # the model's own failure on this input
        return None, f"{type(error).__name__}: {error}"
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    found: set[str] = set()
    seen: set[object] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    if not stack and outputs:
        return None, "the output has no autograd graph"
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in producers:
            found.add(producers[node])
            continue
        stack.extend(parent for parent, _ in node.next_functions)
    return found, ""


def _check_exclude(layers: dict[str, nn.Module], exclude: Iterable[str]) -> list[str]:
    """``exclude`` as a list of prunable layer names, validated."""
    if isinstance(exclude, str) or not isinstance(exclude, Iterable):
        raise TypeError(
            "exclude must be a list of layer names (e.g. exclude=['classifier']), "
            f"got {type(exclude).__name__}"
        )
    names = list(exclude)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"exclude must hold layer names (str), got {type(name).__name__}")
        if name not in layers:
            raise ValueError(
                f"exclude names {name!r}, which is not a prunable layer of the model; "
                f"layers are {list(layers)}"
            )
    return names


def output_layers(
    model: nn.Module,
    *,
    example_input: torch.Tensor | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """The prunable layers that produce the model's output, read from its graph.

    Their output units are the model's outputs (the classes), so structured
    pruning never removes one. They are found by walking back from the output
    of the model's ``torch.fx`` trace through everything that is not a
    prunable layer (activations, pooling, flatten, dropout, additions) to the
    layers met first; definition order plays no part, so a ``classifier``
    defined before the encoder is found, and so is a final ``Conv2d`` whose
    channels are the classes (SqueezeNet). A ``torch.nn`` building block that
    the trace keeps as one node (``nn.TransformerEncoderLayer``) hides which
    of its layers feeds the output, so all its prunable layers count as
    output layers when the output passes through it. A model that ``torch.fx`` cannot
    trace (data-dependent Python control flow) is run once on
    ``example_input`` (or on a random batch of the model's
    ``example_input_shape``), in eval mode and with its training flags
    restored, and its autograd graph is walked instead. Nothing is cached.

    Args:
        model: The network.
        example_input: A batch for the fallback trace (optional).
        exclude: Layer names the caller protects by hand; they are returned
            too, and they replace the trace when the model cannot be traced.

    Returns:
        The names, in definition order, of the output layers and of ``exclude``.

    Raises:
        ValueError: If the model can be traced neither way and ``exclude`` is
            empty (pass ``exclude=[names of the output layers]``), or
            ``exclude`` names a layer that is not prunable.
        TypeError: If ``model`` is not a module, ``exclude`` is not a list of
            names, or ``example_input`` is not a tensor.

    Example:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.classifier = nn.Linear(8, 3)  # defined first, used last
        ...         self.encoder = nn.Linear(4, 8)
        ...     def forward(self, x):
        ...         return self.classifier(torch.relu(self.encoder(x)))
        >>> output_layers(Net())
        ['classifier']
    """
    _check_model(model)
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(
            f"example_input must be a torch.Tensor batch or None, got {type(example_input).__name__}"
        )
    layers = prunable_layers(model)
    excluded = _check_exclude(layers, exclude)
    graph, fx_reason = (None, "") if "" in layers else _fx_graph(model)
    if "" in layers:  # the model is a single layer
        found = {""}
    elif graph is not None:
        found = _fx_output_layers(graph, layers)
    else:
        batch = _example_batch(model, example_input)
        found, hook_reason = (
            (None, "") if batch is None else _hook_output_layers(model, layers, batch)
        )
        if found is None:
            if excluded:
                return [name for name in layers if name in excluded]
            tried = f"; a forward pass on the example failed ({hook_reason})" if hook_reason else ""
            raise ValueError(
                f"cannot find the output layers of this {type(model).__name__}: torch.fx cannot trace "
                f"it ({fx_reason}){tried}; pass exclude=[names of the layers that produce the "
                "output] (the layers structured pruning must keep whole); output_layers also "
                "takes example_input=<a batch> to find them by running the model"
            )
    return [name for name in layers if name in found or name in excluded]


def _fx_batchnorm_after(graph: fx.Graph, model: nn.Module, layers: dict[str, nn.Module]):
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        frontier = [node]
        while frontier:
            current = frontier.pop()
            for user in current.users:
                if user.all_input_nodes != [current]:
                    continue  # mixes in other tensors: zeros are no longer certain
                module = modules.get(user.target) if user.op == "call_module" else None
                if isinstance(module, _BATCHNORM_TYPES):
                    pairs[str(node.target)] = str(user.target)
                elif (
                    isinstance(module, _ZERO_PRESERVING_MODULES)
                    or (user.op == "call_function" and user.target in _ZERO_PRESERVING_FUNCTIONS)
                    or (user.op == "call_method" and user.target in _ZERO_PRESERVING_METHODS)
                ):
                    frontier.append(user)
    return pairs


def _sequential_batchnorm_after(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, str]:
    """Layer -> BatchNorm pairs that ``nn.Sequential`` order makes certain."""
    ids = {id(m): name for name, m in layers.items()}
    pairs: dict[str, str] = {}
    for parent_name, parent in model.named_modules():
        if type(parent) is not nn.Sequential:
            continue
        children = list(parent.named_children())
        for i, (_, child) in enumerate(children):
            if id(child) not in ids:
                continue
            for name, follower in children[i + 1 :]:
                if isinstance(follower, _BATCHNORM_TYPES):
                    pairs[ids[id(child)]] = f"{parent_name}.{name}" if parent_name else name
                if not isinstance(follower, _ZERO_PRESERVING_MODULES):
                    break
    return pairs


def batchnorm_after(model: nn.Module) -> dict[str, str]:
    """Which BatchNorm normalises each prunable layer's output channels.

    A BatchNorm counts when it reads the layer's output directly or through
    element-wise operations that keep zeros zero (ReLU, GELU, dropout, ...),
    as the ``torch.fx`` graph shows; for a model that ``torch.fx`` cannot
    trace, only the pairs that the order inside an ``nn.Sequential`` makes
    certain are found. A layer and a BatchNorm with different channel counts
    are never paired.

    Args:
        model: The network.

    Returns:
        ``{layer name: BatchNorm name}``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> batchnorm_after(net)
        {'0': '1'}
    """
    _check_model(model)
    layers = prunable_layers(model)
    graph, _ = _fx_graph(model) if layers else (None, "")
    if graph is not None:
        pairs = _fx_batchnorm_after(graph, model, layers)
    else:
        pairs = _sequential_batchnorm_after(model, layers)
    modules = dict(model.named_modules())
    return {
        layer: norm
        for layer, norm in pairs.items()
        if modules[norm].num_features == layers[layer].weight.shape[0]
    }


def effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight each prunable layer actually uses, masks applied.

    For a layer re-parametrised by ``torch.nn.utils.prune`` this is
    ``weight_orig * weight_mask`` (the ``weight`` attribute); for a plain layer
    it is ``weight``.

    Args:
        model: Any module.

    Returns:
        ``{"<layer>.weight": tensor}`` for every prunable layer.
    """
    return {f"{name}.weight": current_weight(m) for name, m in prunable_layers(model).items()}


def current_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor ``name`` of ``module`` as the next forward pass will use it (detached).

    ``torch.nn.utils.prune`` recomputes a masked layer's ``weight`` attribute
    only in a hook that runs before each forward pass, so right after an
    optimizer step ``module.weight`` still holds the previous step's values.
    This function multiplies ``weight_orig`` by ``weight_mask`` instead, and
    returns the plain parameter for an unmasked layer.

    Args:
        module: A layer, masked or not.
        name: The parameter's name.

    Returns:
        The effective tensor, detached from the autograd graph.

    Example:
        >>> from torch.nn.utils import prune
        >>> layer = prune.custom_from_mask(nn.Linear(2, 1), "weight", torch.tensor([[1.0, 0.0]]))
        >>> with torch.no_grad():
        ...     _ = layer.weight_orig.fill_(3.0)  # as an optimizer step would, no forward since
        >>> current_weight(layer).tolist()
        [[3.0, 0.0]]
        >>> bool((layer.weight == 3.0).any())  # the attribute is stale until the next forward
        False
    """
    mask = getattr(module, f"{name}_mask", None)
    original = getattr(module, f"{name}_orig", None)
    if mask is not None and original is not None:
        return (original * mask).detach()
    return getattr(module, name).detach()


def refresh_masked_weights(model: nn.Module) -> nn.Module:
    """Recompute every masked tensor (``weight = weight_orig * weight_mask``) now.

    Call it after changing ``weight_orig`` or ``weight_mask`` outside a
    forward pass (an optimizer step, ``load_state_dict``, a mask edit), so that
    code reading ``module.weight`` directly sees the current values.

    Args:
        model: Any module; unmasked layers are left alone.

    Returns:
        ``model``, for chaining.
    """
    for module in model.modules():
        for param_name, _ in list(module.named_parameters(recurse=False)):
            base = param_name[: -len("_orig")]
            if param_name.endswith("_orig") and hasattr(module, f"{base}_mask"):
                setattr(module, base, getattr(module, param_name) * getattr(module, f"{base}_mask"))
    return model


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    if not isinstance(masks, dict):
        raise TypeError(
            f"masks must be a dict of {{layer name: tensor}}, got {type(masks).__name__}"
        )
    layers = prunable_layers(model)
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(
                f"masks names {name!r}, which is not a prunable layer of the model; layers are {list(layers)}"
            )
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{name!r}] must be a tensor, got {type(mask).__name__}")
        if mask.shape != layers[name].weight.shape:
            raise ValueError(
                f"masks[{name!r}] has shape {tuple(mask.shape)}, but the weight of {name!r} has shape "
                f"{tuple(layers[name].weight.shape)}"
            )
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"masks[{name!r}] must contain only 0 and 1")
    return layers


def _set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` with ``mask``, overwriting a mask it already has."""
    target = getattr(module, f"{name}_orig", None)
    if target is None:
        target = getattr(module, name)
    mask = mask.to(device=target.device, dtype=target.dtype)
    if hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig"):
        getattr(module, f"{name}_mask").copy_(mask)
        setattr(module, name, getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask"))
    else:
        prune.custom_from_mask(module, name, mask)


@torch.no_grad()
def _kill_units(model: nn.Module, layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]):
    """Mask the bias and the following BatchNorm of every unit whose weights are all masked."""
    followers = batchnorm_after(model) if masks else {}
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        alive = mask.flatten(1).any(dim=1)
        module = layers[name]
        if getattr(module, "bias", None) is not None:
            _set_mask(module, "bias", alive)
        if name not in followers:
            continue
        norm = modules[followers[name]]
        if norm.affine:
            _set_mask(norm, "weight", alive)
            _set_mask(norm, "bias", alive)
        elif norm.running_mean is not None:
            # Without affine parameters the eval-mode output of a zero channel is
            # -running_mean / sqrt(running_var + eps); a zero mean stays zero in training.
            norm.running_mean[~alive.to(norm.running_mean.device)] = 0


@torch.no_grad()
def apply_masks(
    model: nn.Module, masks: dict[str, torch.Tensor], *, structured: bool = False
) -> nn.Module:
    """Put masks on the model's layers, replacing any mask a layer already has.

    A layer that is not yet pruned is re-parametrised with
    ``prune.custom_from_mask`` (``weight_orig`` and ``weight_mask`` appear);
    for a layer that is, the mask buffer is overwritten. Masked weights read as
    zero in every forward pass and stay zero through any later training.
    Layers missing from ``masks`` are left as they are.

    With ``structured=True`` a unit (output row or filter) whose weights are
    all masked is killed completely: its bias is masked too, and so are the
    weight and bias of a BatchNorm that normalises that channel
    (:func:`~companion.masks.batchnorm_after`; for a BatchNorm without affine parameters its
    running mean is set to zero there). The unit then outputs exactly zero in
    training and in eval mode, so removing it changes nothing; without this a
    zero filter followed by a BatchNorm still outputs the BatchNorm's bias,
    and a zero neuron still passes ``relu(bias)`` on. Every bias (and
    BatchNorm) of a layer in ``masks`` gets a mask, all ones for the units
    that live, so the state dict has the same keys whatever is pruned;
    :func:`make_permanent` folds these masks in like the weight masks. With
    ``structured=False`` biases and BatchNorms are left alone.

    Args:
        model: The network, modified in place.
        masks: ``{layer name: 0/1 tensor shaped like its weight}``.
        structured: Kill the units whose weights are all masked (see above).

    Returns:
        ``model``, for chaining.

    Raises:
        ValueError: If a name is not a prunable layer, a shape differs, or a
            mask holds values other than 0 and 1.
        TypeError: If ``masks`` is not a dict of tensors or ``structured`` not a bool.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> _ = apply_masks(net, {"0": torch.tensor([[1.0, 0.0], [0.0, 1.0]])})
        >>> sorted(name for name, _ in net.named_buffers())
        ['0.weight_mask']
        >>> _ = apply_masks(net, {"0": torch.tensor([[1.0, 1.0], [0.0, 0.0]])}, structured=True)
        >>> net[0].bias_mask.tolist()  # the second unit is dead: its bias is masked too
        [1.0, 0.0]
    """
    if not isinstance(structured, bool):
        raise TypeError(f"structured must be a bool, got {type(structured).__name__}")
    layers = _check_masks(model, masks)
    for name, mask in masks.items():
        _set_mask(layers[name], "weight", mask)
    if structured:
        _kill_units(model, layers, masks)
    return model


@torch.no_grad()
def erase_masked_(model: nn.Module) -> nn.Module:
    """Multiply every stored tensor by its mask (``weight_orig *= weight_mask``), in place.

    The masked values are then gone from ``*_orig`` too (hard pruning), while
    the masks stay on the model; :func:`make_permanent` removes them.

    Returns:
        ``model``, for chaining.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[2.0, 3.0]]))
        >>> _ = apply_masks(net, {"0": torch.tensor([[1.0, 0.0]])})
        >>> erase_masked_(net)[0].weight_orig.tolist()
        [[2.0, 0.0]]
    """
    for module in model.modules():
        for param_name, param in list(module.named_parameters(recurse=False)):
            base = param_name[: -len("_orig")]
            if param_name.endswith("_orig") and hasattr(module, f"{base}_mask"):
                param.mul_(getattr(module, f"{base}_mask"))
    return model


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the masks of every pruned layer, as a mask dict."""
    return {
        name: m.weight_mask.detach().clone()
        for name, m in prunable_layers(model).items()
        if hasattr(m, "weight_mask")
    }


def is_pruned(model: nn.Module) -> bool:
    """Whether any layer of ``model`` carries a ``torch.nn.utils.prune`` mask."""
    return prune.is_pruned(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its tensor (``prune.remove``): pruned weights become plain zeros.

    Bias and BatchNorm masks that ``apply_masks(..., structured=True)`` added
    are folded in the same way. The model then has ordinary ``weight``
    parameters again and a checkpoint no longer stores ``weight_orig`` and
    ``weight_mask``. This cannot be
    undone. Structured zeros can afterwards be cut out by
    :func:`companion.surgery.shrink`.

    Returns:
        ``model``, modified in place.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> _ = apply_masks(net, {"0": torch.ones(2, 2)})
        >>> is_pruned(make_permanent(net))
        False
    """
    for module in model.modules():
        for name in [
            n[: -len("_orig")]
            for n, _ in module.named_parameters(recurse=False)
            if n.endswith("_orig")
        ]:
            prune.remove(module, name)
    return model
