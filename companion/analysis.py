"""The analyses and multi-seed protocols behind the last chapter.

* Pareto fronts (:func:`pareto_front`) and what unstructured sparsity costs on
  disk in compressed-sparse-row form (:func:`csr_bytes`);
* the compression pipeline of one seed, with or without a teacher, up to the
  exported ONNX files (:func:`student_pipeline`), prune-then-fine-tune
  (:func:`prune_and_finetune`), and one model quantised five ways, with and
  without quantisation-aware fine-tuning (:func:`quantization_variants`);
* mask stability across seeds where units correspond: kept connections per
  input (:func:`kept_per_input`), correlation with the other seeds
  (:func:`leave_one_out_correlation`) against a chance level with the same
  counts at random positions (:func:`shuffled_mask`); the weight-level
  :func:`mask_jaccard` only means something between masks of the *same* network;
* dead inputs and the compute of one training step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .utils import check_in_range, check_positive_int

__all__ = [
    "pareto_front",
    "mask_jaccard",
    "random_mask_jaccard",
    "dead_inputs",
    "train_step_flops",
    "csr_bytes",
    "kept_per_input",
    "shuffled_mask",
    "leave_one_out_correlation",
    "prune_and_finetune",
    "student_pipeline",
    "quantization_variants",
]


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal score.

    A point is dominated if another point is at least as good on both axes and
    strictly better on one. The front is returned sorted by cost.

    Args:
        costs: Lower is better (bytes, latency).
        scores: Higher is better (accuracy).

    Returns:
        Indices of the non-dominated points, by increasing cost.

    Raises:
        ValueError: If the sequences are empty, of different lengths, or hold NaN.

    Example:
        >>> pareto_front([1, 2, 3, 4], [0.90, 0.95, 0.94, 0.99])
        [0, 1, 3]
    """
    costs, scores = [float(c) for c in costs], [float(s) for s in scores]
    if not costs or len(costs) != len(scores):
        raise ValueError(
            f"costs and scores must be non-empty and of equal length, got {len(costs)} and {len(scores)}"
        )
    if any(v != v for v in costs + scores):
        raise ValueError("costs and scores must not contain NaN")
    front = []
    for i, (c, s) in enumerate(zip(costs, scores, strict=True)):
        dominated = any(
            c2 <= c and s2 >= s and (c2 < c or s2 > s) for c2, s2 in zip(costs, scores, strict=True)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -scores[i]))


def mask_jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Jaccard similarity of the *kept* weights of two mask sets (1 = identical, 0 = disjoint).

    Meaningful between two masks of the *same* network (two criteria, two
    sparsities). Between independently trained networks it is not: their hidden
    units have no correspondence (any permutation of a hidden layer computes the
    same function), so "the same weight" is undefined. Compare what does
    correspond instead, such as :func:`kept_per_input`.

    Raises:
        ValueError: If the mask sets name different layers or shapes differ.

    Example:
        >>> m1 = {"fc1": torch.tensor([1.0, 1.0, 0.0, 0.0])}
        >>> m2 = {"fc1": torch.tensor([1.0, 0.0, 1.0, 0.0])}
        >>> mask_jaccard(m1, m2)
        0.3333333333333333
    """
    if set(a) != set(b):
        raise ValueError(f"mask sets name different layers: {sorted(a)} vs {sorted(b)}")
    inter = union = 0
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(
                f"masks for {name!r} differ in shape: {tuple(a[name].shape)} vs {tuple(b[name].shape)}"
            )
        ka, kb = a[name].bool(), b[name].bool()
        inter += int((ka & kb).sum())
        union += int((ka | kb).sum())
    return inter / union if union else 1.0


def random_mask_jaccard(masks: Mapping[str, torch.Tensor]) -> float:
    r"""Jaccard similarity expected between two independent random masks shaped like ``masks``.

    The chance level for :func:`mask_jaccard`: each random mask keeps, in every
    layer :math:`l` of :math:`n_l` weights, the same fraction :math:`k_l` as
    ``masks`` does, at random positions. Two such masks share about
    :math:`k_l^2 n_l` kept weights and together keep :math:`(2k_l - k_l^2) n_l`, so

    .. math::

        J_\text{random} = \frac{\sum_l k_l^2 n_l}{\sum_l (2k_l - k_l^2)\, n_l},

    which is :math:`k / (2 - k)` when every layer keeps the same fraction. Global
    pruning keeps very different fractions per layer, and then the single-
    fraction formula underestimates the chance level.

    Args:
        masks: ``{"<layer>": mask}`` with 1 for kept weights.

    Returns:
        The expected Jaccard index, in [0, 1] (1.0 when no weight is kept).

    Raises:
        ValueError: If ``masks`` is empty.

    Example:
        >>> round(random_mask_jaccard({"fc1": torch.tensor([1.0, 0.0, 0.0, 0.0])}), 4)  # k/(2-k)
        0.1429
    """
    if not masks:
        raise ValueError("masks is empty: pass {layer name: mask} for at least one layer")
    shared = either = 0.0
    for mask in masks.values():
        n = mask.numel()
        k = int(mask.bool().sum()) / n if n else 0.0
        shared += k * k * n
        either += (2 * k - k * k) * n
    return shared / either if either else 1.0


def dead_inputs(first_layer_weight: torch.Tensor) -> torch.Tensor:
    """Boolean map of inputs whose every outgoing connection in the first layer is zero.

    Args:
        first_layer_weight: The (effective) weight of the first ``nn.Linear``,
            shape ``[out_features, in_features]``.

    Returns:
        A bool tensor of shape ``[in_features]``; reshape to ``28 x 28`` for MNIST.

    Raises:
        TypeError: If ``first_layer_weight`` is not a tensor.
        ValueError: If it is not 2-D.

    Example:
        >>> dead_inputs(torch.tensor([[0.0, 1.0], [0.0, 2.0]])).tolist()
        [True, False]
    """
    if not isinstance(first_layer_weight, torch.Tensor):
        raise TypeError(
            f"first_layer_weight must be a torch.Tensor, got {type(first_layer_weight).__name__}"
        )
    if first_layer_weight.dim() != 2:
        raise ValueError(
            f"first_layer_weight must be 2-D [out, in], got shape {tuple(first_layer_weight.shape)}"
        )
    return (first_layer_weight.detach() == 0).all(dim=0)


def train_step_flops(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> int:
    """FLOPs of one training step (forward, cross-entropy and backward), counted by PyTorch.

    Multiply this by the number of steps to get the compute a method spent;
    the optimizer update itself (a few FLOPs per parameter) is not included.
    Gradients are computed on the model and then cleared.

    Args:
        model: The network, in training mode.
        inputs: One batch of inputs.
        targets: Its class labels.

    Returns:
        The FLOPs of the step, as counted by ``FlopCounterMode``.

    Example:
        >>> layer = nn.Linear(784, 10)
        >>> # 2*784*10 forward and the same for the weight gradient (inputs need none)
        >>> train_step_flops(layer, torch.rand(1, 784), torch.tensor([3]))
        31360
    """
    from .speed import _quiet_import

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    counter = _quiet_import("torch.utils.flop_counter").FlopCounterMode(display=False)
    with counter:
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def csr_bytes(model: nn.Module) -> int:
    """Bytes of the file :func:`companion.soft.save_sparse` writes for ``model``.

    The honest size of an unstructured-sparse model: nonzero values, their
    column indices and row pointers, plus the dense biases. A dense model costs
    somewhat more in this form than in a plain checkpoint (the indices).

    Args:
        model: A dense or masked model.

    Returns:
        The size of the CSR archive in bytes.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> net = nn.Sequential(nn.Linear(100, 100))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.zero_()
        >>> csr_bytes(net) < 10_000 < 4 * 100 * 100
        True
    """
    from .soft import save_sparse

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with tempfile.TemporaryDirectory() as folder:
        return save_sparse(model, Path(folder) / "model.pt").stat().st_size


def kept_per_input(mask: torch.Tensor) -> torch.Tensor:
    """Kept connections of each input of a linear layer: the column sums of its mask.

    Inputs (MNIST pixels for the first layer) are the same in every trained
    network, unlike hidden units, so these counts can be compared across seeds.

    Args:
        mask: A 2-D mask ``[out_features, in_features]`` of zeros and ones.

    Returns:
        A float tensor ``[in_features]``.

    Raises:
        TypeError: If ``mask`` is not a tensor.
        ValueError: If it is not 2-D.

    Example:
        >>> kept_per_input(torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])).tolist()
        [2.0, 0.0, 1.0]
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [out, in], got shape {tuple(mask.shape)}")
    return (mask.detach() != 0).float().sum(0).cpu()


def shuffled_mask(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The same number of kept entries as ``mask``, at uniformly random positions.

    The chance level for mask statistics: a random mask that keeps exactly as
    many weights of the layer as ``mask`` does.

    Args:
        mask: A mask of any shape.
        generator: A CPU generator (``companion.utils.make_generator(seed)``).

    Returns:
        A float mask of the same shape (on the CPU).

    Raises:
        TypeError: If ``mask`` is not a tensor or ``generator`` not a ``torch.Generator``.

    Example:
        >>> m = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
        >>> int(shuffled_mask(m, torch.Generator().manual_seed(0)).sum())
        2
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    flat = (mask.detach() != 0).float().cpu().flatten()
    order = torch.randperm(flat.numel(), generator=generator)
    return flat[order].view(mask.shape)


def leave_one_out_correlation(vectors: torch.Tensor) -> list[float]:
    r"""Pearson correlation of each row with the mean of the other rows.

    With one row per seed (e.g. :func:`kept_per_input` of each seed's mask),
    this asks how well the other seeds predict a seed's pattern: 1 means the
    same pattern up to scale, 0 no linear relation.

    Args:
        vectors: A 2-D tensor ``[n_rows, d]`` with ``n_rows >= 2`` and ``d >= 2``.

    Returns:
        ``n_rows`` correlations, in ``[-1, 1]`` (NaN for a constant row).

    Raises:
        TypeError: If ``vectors`` is not a tensor.
        ValueError: If it is not 2-D with at least 2 rows and 2 columns.

    Example:
        >>> v = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 2.0, 3.5]])
        >>> [round(r, 3) for r in leave_one_out_correlation(v)]
        [0.999, 0.998, 0.993]
    """
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if vectors.dim() != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(
            f"vectors must be 2-D with at least 2 rows and 2 columns, got shape {tuple(vectors.shape)}"
        )
    v = vectors.detach().double().cpu()
    total = v.sum(0)
    result = []
    for i in range(v.shape[0]):
        others = (total - v[i]) / (v.shape[0] - 1)
        pair = torch.stack([v[i], others])
        result.append(float(torch.corrcoef(pair)[0, 1]))
    return result


def _fit(
    model: nn.Module,
    teacher: nn.Module | None,
    train_set: TensorDataset,
    epochs: int,
    temperature: float,
    alpha: float,
    seed: int,
    train_kwargs: dict[str, Any],
) -> dict[str, list[float]]:
    """Train ``model`` on the labels (``teacher=None``) or distil it from ``teacher``."""
    from . import distillation, training

    if teacher is None:
        return training.train(model, train_set, epochs=epochs, seed=seed, **train_kwargs)
    return distillation.distill(
        model,
        teacher,
        train_set,
        epochs=epochs,
        temperature=temperature,
        alpha=alpha,
        seed=seed,
        **train_kwargs,
    )


def prune_and_finetune(
    model: nn.Module,
    train_set: TensorDataset,
    *,
    amount: float,
    epochs: int,
    criterion: str = "magnitude",
    scope: str = "layer",
    structured: bool = False,
    generator: torch.Generator | None = None,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    **train_kwargs: Any,
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, list[float]]]:
    """Prune a copy of ``model`` and fine-tune it with the masks in place.

    The masks come from :func:`companion.pruning.magnitude_masks` (``norm=1``
    for structured pruning, as Li et al.) or :func:`companion.pruning.random_masks`;
    fine-tuning is :func:`companion.training.train`, or
    :func:`companion.distillation.distill` when a ``teacher`` is given.

    Args:
        model: The trained network (not modified).
        train_set: Fine-tuning data on the model's device.
        amount: Fraction of weights (or neurons/channels) to prune, in ``[0, 1]``.
        epochs: Fine-tuning epochs, >= 0 (0: prune only).
        criterion: ``"magnitude"`` or ``"random"``.
        scope: ``"layer"`` or ``"global"``.
        structured: Prune whole neurons / channels.
        generator: For ``criterion="random"``: ``companion.utils.make_generator(seed)``.
        teacher: Distil from this teacher while fine-tuning (``None``: labels only).
        temperature, alpha: Distillation settings (used only with a teacher).
        seed: Logical seed of the data order.
        **train_kwargs: Passed on to the training loop (``lr``, ``momentum``, ...).

    Returns:
        ``(pruned, masks, history)``: the masked, fine-tuned copy, its masks
        and the fine-tuning history (empty lists when ``epochs == 0``).

    Raises:
        ValueError: If ``amount`` is outside ``[0, 1]``, ``epochs`` is negative
            or ``criterion`` is unknown.
        TypeError: If ``model`` is not an ``nn.Module``.
    """
    from . import pruning
    from .utils import clone_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_in_range("amount", amount, 0.0, 1.0)
    epochs = check_positive_int("epochs", epochs, allow_zero=True)
    pruned = clone_model(model)
    if criterion == "magnitude":
        masks = pruning.magnitude_masks(pruned, amount, scope=scope, structured=structured)
    elif criterion == "random":
        masks = pruning.random_masks(
            pruned, amount, scope=scope, structured=structured, generator=generator
        )
    else:
        raise ValueError(f"criterion must be 'magnitude' or 'random', got {criterion!r}")
    pruning.apply_masks(pruned, masks)
    history: dict[str, list[float]] = {"epoch": [], "loss": [], "train_accuracy": [], "seconds": []}
    if epochs:
        history = _fit(pruned, teacher, train_set, epochs, temperature, alpha, seed, train_kwargs)
    return pruned, masks, history


def student_pipeline(
    student: nn.Module,
    train_set: TensorDataset,
    *,
    teacher: nn.Module | None,
    epochs: int,
    finetune_epochs: int,
    amount: float = 0.5,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    export_to: str | os.PathLike | None = None,
    calibration_size: int = 1000,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """One seed of the compression pipeline: train, prune neurons, fine-tune, shrink, int8, export.

    1. ``student`` (freshly initialised, an :class:`companion.models.MLP`) is
       trained for ``epochs``: distilled from ``teacher``
       (:func:`companion.distillation.distill`), or, with ``teacher=None``, on
       the labels alone (the no-distillation control, same budget);
    2. the ``amount`` fraction of its hidden neurons with the smallest L1 norm
       of incoming weights is masked, and the network is fine-tuned for
       ``finetune_epochs`` with the same loss as in step 1;
    3. the masks are folded in and the dead neurons cut out
       (:func:`companion.surgery.shrink`);
    4. the shrunk model is quantised to int8 with torchao
       (:func:`companion.deploy.quantize_dynamic_int8`, on the CPU);
    5. with ``export_to``, the shrunk float model is exported to ONNX
       (:func:`companion.deploy.export_onnx`) and the file quantised with ONNX
       Runtime, dynamically and statically, the static one calibrated on the
       first ``calibration_size`` training inputs
       (:func:`companion.deploy.quantize_onnx`).

    Give both arms the same seed (call ``seed_everything(seed)`` before
    building each student) and they share the initialisation and data order.

    Args:
        student: A fresh MLP on the data's device; trained in place.
        train_set: Training data.
        teacher: The trained teacher, or ``None`` for the control.
        epochs: Training epochs of step 1, >= 1.
        finetune_epochs: Fine-tuning epochs of step 2, >= 0.
        amount: Fraction of hidden neurons pruned, in ``[0, 1)``.
        temperature, alpha: Distillation settings (ignored without a teacher).
        seed: Logical seed of the data order of both training phases.
        export_to: An existing folder for the ONNX files of step 5 (``None``: no export).
        calibration_size: Training inputs that calibrate the static int8 file, >= 1.
        **train_kwargs: Passed on to the training loop (``lr``, ``momentum``,
            ``batch_size``, ``progress``, ...).

    Returns:
        A dict with the models ``"student"`` (after step 1), ``"masked"`` (after
        step 2, masks in place), ``"shrunk"`` and ``"int8"``, the histories
        ``"train_history"`` and ``"finetune_history"``, and, with ``export_to``,
        ``"onnx"``: the paths ``{"shrunk": ..., "int8 dynamic": ..., "int8 static": ...}``
        (``shrunk.onnx``, ``int8_dynamic.onnx``, ``int8_static.onnx``).

    Raises:
        ValueError: If ``epochs < 1``, ``finetune_epochs < 0``, ``amount`` is
            outside ``[0, 1)`` or ``calibration_size < 1``.
        TypeError: If ``student`` is not an MLP or ``teacher`` is neither
            ``None`` nor an ``nn.Module``.
        FileNotFoundError: If ``export_to`` is not an existing folder.
    """
    from . import deploy, pruning, surgery
    from .models import MLP
    from .utils import clone_model

    if not isinstance(student, MLP):
        raise TypeError(f"student must be a companion.models.MLP, got {type(student).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be None or a torch.nn.Module, got {type(teacher).__name__}")
    epochs = check_positive_int("epochs", epochs)
    finetune_epochs = check_positive_int("finetune_epochs", finetune_epochs, allow_zero=True)
    check_in_range("amount", amount, 0.0, 1.0, high_inclusive=False)
    calibration_size = check_positive_int("calibration_size", calibration_size)
    if export_to is not None and not Path(export_to).is_dir():
        raise FileNotFoundError(f"export_to must be an existing folder, got {export_to}")
    train_history = _fit(
        student, teacher, train_set, epochs, temperature, alpha, seed, train_kwargs
    )
    masked, _, finetune_history = prune_and_finetune(
        student,
        train_set,
        amount=amount,
        epochs=finetune_epochs,
        structured=True,
        teacher=teacher,
        temperature=temperature,
        alpha=alpha,
        seed=seed,
        **train_kwargs,
    )
    permanent = pruning.make_permanent(clone_model(masked))
    shrunk = surgery.shrink(permanent)
    result = {
        "student": student,
        "masked": masked,
        "shrunk": shrunk,
        "int8": deploy.quantize_dynamic_int8(shrunk),
        "train_history": train_history,
        "finetune_history": finetune_history,
    }
    if export_to is not None:
        inputs = train_set.tensors[0]
        folder = Path(export_to)
        float_file = deploy.export_onnx(shrunk, folder / "shrunk.onnx", inputs[:2])
        result["onnx"] = {
            "shrunk": float_file,
            "int8 dynamic": deploy.quantize_onnx(float_file, folder / "int8_dynamic.onnx"),
            "int8 static": deploy.quantize_onnx(
                float_file, folder / "int8_static.onnx", inputs[:calibration_size]
            ),
        }
    return result


def quantization_variants(
    model: nn.Module,
    train_set: TensorDataset,
    *,
    epochs: int,
    seed: int = 0,
    **train_kwargs: Any,
) -> dict[str, nn.Module]:
    """One trained model quantised to int8 five ways, two of them after fine-tuning.

    * ``"float"``: a CPU copy of ``model``, unquantised (the reference);
    * ``"dynamic int8"``: :func:`companion.deploy.quantize_dynamic_int8`;
    * ``"weight-only int8"``: :func:`companion.deploy.quantize_weight_only_int8`;
    * ``"fine-tuned + dynamic int8"``: a copy fine-tuned ``epochs`` more in
      float, then quantised as above: the control for the next one, with the
      same budget;
    * ``"QAT + int8"``: a copy fine-tuned ``epochs`` with fake quantisation
      (:func:`companion.deploy.prepare_qat`), then converted
      (:func:`companion.deploy.convert_qat`).

    Both fine-tuned copies see the same data order (``seed``) and settings, so
    "QAT minus control" measures what simulating the rounding during training
    buys, not the extra epochs.

    Args:
        model: A trained float model with ``nn.Linear`` layers (not modified).
        train_set: Fine-tuning data on the model's device.
        epochs: Fine-tuning epochs of the last two variants, >= 1.
        seed: Logical seed of the fine-tuning data order.
        **train_kwargs: Passed on to :func:`companion.training.train` (``lr``, ...).

    Returns:
        The five models, in the order above, each in eval mode on the CPU.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``epochs < 1`` or ``model`` has no ``nn.Linear`` layer.
    """
    from . import deploy, training
    from .utils import clone_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = check_positive_int("epochs", epochs)
    variants = {  # first, so that a model without nn.Linear fails before any training
        "float": clone_model(model).cpu().eval(),
        "dynamic int8": deploy.quantize_dynamic_int8(model),
        "weight-only int8": deploy.quantize_weight_only_int8(model),
    }
    control = clone_model(model).train()
    training.train(control, train_set, epochs=epochs, seed=seed, **train_kwargs)
    prepared = deploy.prepare_qat(model).train()
    training.train(prepared, train_set, epochs=epochs, seed=seed, **train_kwargs)
    variants["fine-tuned + dynamic int8"] = deploy.quantize_dynamic_int8(control)
    variants["QAT + int8"] = deploy.convert_qat(prepared)
    return variants
