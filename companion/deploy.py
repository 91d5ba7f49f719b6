"""Quantisation and export: the last steps before a model leaves the notebook.

Quantisation with ``torchao``, PyTorch's quantisation library (the eager-mode
quantisation API inside ``torch.ao`` is deprecated), on a CPU copy of the model:

* :func:`quantize_dynamic_int8`: int8 weights (one scale per output channel)
  and int8 activations, quantised on the fly per example (per token);
* :func:`quantize_weight_only_int8`: int8 weights, float activations;
* :func:`prepare_qat` / :func:`convert_qat`: quantisation-aware training, i.e.
  fine-tuning with the same int8 rounding simulated in the forward pass
  ("fake quantisation"), then the real conversion.

Export with ONNX, the format read by ONNX Runtime and most edge runtimes:

* :func:`export_onnx` writes one self-contained ``.onnx`` file with a dynamic
  batch axis (``torch.onnx.export`` on ``torch.export``; TorchScript, the
  older route, is in maintenance);
* :func:`quantize_onnx` quantises such a file with ONNX Runtime's quantiser,
  dynamically or statically with a calibration set;
* :func:`onnx_session`, :func:`run_onnx`, :func:`check_export` and
  :func:`onnx_latency` load a file, run it, compare it with the *float* eager
  model it replaces, and time it.

Every function works on a copy: the caller's model is never changed, and masks
from ``torch.nn.utils.prune`` are folded into the copy first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .io import atomic_write
from .pruning import make_permanent
from .utils import check_positive_int, clone_model

__all__ = [
    "quantize_dynamic_int8",
    "quantize_weight_only_int8",
    "prepare_qat",
    "convert_qat",
    "is_quantized",
    "export_onnx",
    "quantize_onnx",
    "onnx_session",
    "run_onnx",
    "evaluate_onnx",
    "check_export",
    "onnx_latency",
]


# --------------------------------------------------------------------------- helpers


def _check_model(model: nn.Module, name: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


def _check_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_has_linear(model: nn.Module) -> None:
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError("model has no nn.Linear layer; int8 quantisation would change nothing")


def _without_masks(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with any pruning masks folded in."""
    return make_permanent(clone_model(model).cpu().eval())


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the named loggers' warnings for the duration (their levels are restored after).

    ONNX Runtime's quantiser logs advice ("consider pre-processing") on the root
    logger on every call; it does not concern the reader.
    """
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _DropEnumRegistrationNote(logging.Filter):
    """Drops torch's note that torchao registers its Enums with pytree (a torchao detail).

    torchao registers some Enums on import and some lazily, the first time a
    quantised or fake-quantised layer runs, so silencing the import alone is not enough;
    the filter drops that one message and nothing else.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported" not in record.getMessage()


def _torchao_quantization():
    pytree_log = logging.getLogger("torch.utils._pytree")
    if not any(isinstance(f, _DropEnumRegistrationNote) for f in pytree_log.filters):
        pytree_log.addFilter(_DropEnumRegistrationNote())
    import torchao.quantization as quantization
    import torchao.quantization.qat as qat

    return quantization, qat


def _dynamic_config():
    """int8 weights per output channel, int8 activations per example (asymmetric).

    Asymmetric activations: after a ReLU they are non-negative, and a zero point
    lets the 256 levels cover ``[0, max]`` instead of wasting half of them; it is
    also the per-example scheme torchao's fake quantisation supports, so
    :func:`convert_qat` lands on exactly the rounding that was trained.
    ``set_inductor_config=False``: nothing here is compiled, and the flag would
    change global ``torch._inductor`` settings.
    """
    quantization, _ = _torchao_quantization()
    return quantization.Int8DynamicActivationInt8WeightConfig(
        act_mapping_type=quantization.MappingType.ASYMMETRIC, set_inductor_config=False
    )


def is_quantized(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a quantised (tensor-subclass) weight.

    torchao stores quantised weights as tensor subclasses (for int8, a
    ``qdata`` tensor of int8 values and its scales) in place of the float
    parameters.

    Args:
        model: Any module.

    Returns:
        ``True`` if at least one parameter is not a plain float tensor.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.

    Example:
        >>> layer = nn.Sequential(nn.Linear(4, 2))
        >>> is_quantized(layer), is_quantized(quantize_dynamic_int8(layer))
        (False, True)
    """
    _check_model(model)
    return any(type(p) not in (nn.Parameter, torch.Tensor) for p in model.parameters())


# --------------------------------------------------------------------------- torchao


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    r"""Return a CPU copy of ``model`` whose ``nn.Linear`` layers compute in int8.

    torchao's ``Int8DynamicActivationInt8WeightConfig``: each weight row (output
    channel) is stored as int8 with one float scale,
    :math:`W_{j\cdot} \approx s_j\, q_{j\cdot}` with :math:`s_j = \max_i |W_{ji}| / 127`;
    at inference each input row is quantised on the fly with its own scale and
    zero point, and the matrix product runs on int8 values. Masks from
    ``torch.nn.utils.prune`` are folded in first (on the copy); the original
    model is not modified. Convolutions stay in float32.

    Args:
        model: A trained model.

    Returns:
        The quantised model, in eval mode, on the CPU.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` has no ``nn.Linear`` layer to quantise.

    Example:
        >>> q = quantize_dynamic_int8(nn.Sequential(nn.Linear(4, 2)))
        >>> type(q[0]).__name__, q[0].weight.qdata.dtype
        ('Linear', torch.int8)
    """
    _check_model(model)
    _check_has_linear(model)
    plain = _without_masks(model)
    quantization, _ = _torchao_quantization()
    quantization.quantize_(plain, _dynamic_config())
    return plain


def quantize_weight_only_int8(model: nn.Module) -> nn.Module:
    """Return a CPU copy of ``model`` whose ``nn.Linear`` weights are stored in int8.

    torchao's ``Int8WeightOnlyConfig``: weights as in
    :func:`quantize_dynamic_int8` (int8, one scale per output channel), but the
    activations stay in float and the weights are converted back to float for
    the product. It saves memory and bandwidth, not arithmetic.

    Args:
        model: A trained model (masks are folded into the copy).

    Returns:
        The quantised model, in eval mode, on the CPU.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` has no ``nn.Linear`` layer to quantise.

    Example:
        >>> q = quantize_weight_only_int8(nn.Sequential(nn.Linear(4, 2)))
        >>> q[0].weight.qdata.dtype
        torch.int8
    """
    _check_model(model)
    _check_has_linear(model)
    plain = _without_masks(model)
    quantization, _ = _torchao_quantization()
    quantization.quantize_(plain, quantization.Int8WeightOnlyConfig(set_inductor_config=False))
    return plain


def prepare_qat(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` that simulates :func:`quantize_dynamic_int8` while training.

    Every ``nn.Linear`` becomes torchao's ``FakeQuantizedLinear``: the forward
    pass rounds the weights (int8 per output channel) and the inputs (int8 per
    example, asymmetric) exactly as the converted model will, but keeps the
    values in float; the backward pass treats the rounding as the identity
    (the straight-through estimator), so training learns weights that survive
    it. Train the copy with :func:`companion.training.train` or
    :func:`companion.distillation.distill`, then call :func:`convert_qat`.

    Args:
        model: A trained float model (masks are folded into the copy); the copy
            stays on the model's device, in the model's mode.

    Returns:
        The prepared copy.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` has no ``nn.Linear`` layer.

    Example:
        >>> prepared = prepare_qat(nn.Sequential(nn.Linear(4, 2)))
        >>> type(prepared[0]).__name__
        'FakeQuantizedLinear'
    """
    _check_model(model)
    _check_has_linear(model)
    copy = make_permanent(clone_model(model))
    copy.train(model.training)
    quantization, qat = _torchao_quantization()
    int8 = torch.int8
    config = qat.QATConfig(
        activation_config=qat.IntxFakeQuantizeConfig(int8, "per_token", is_symmetric=False),
        weight_config=qat.IntxFakeQuantizeConfig(int8, "per_channel", is_symmetric=True),
        step="prepare",
    )
    quantization.quantize_(copy, config)
    return copy


def convert_qat(model: nn.Module) -> nn.Module:
    """Turn a model trained after :func:`prepare_qat` into a real int8 model (a CPU copy).

    The fake quantisers are removed and the layers quantised as by
    :func:`quantize_dynamic_int8`, with the same rounding the training simulated.

    Args:
        model: The prepared, trained model (not modified).

    Returns:
        The int8 model, in eval mode, on the CPU.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``.
        ValueError: If ``model`` has no fake-quantised layer (it was not prepared).

    Example:
        >>> q = convert_qat(prepare_qat(nn.Sequential(nn.Linear(4, 2))))
        >>> type(q[0]).__name__, q[0].weight.qdata.dtype
        ('Linear', torch.int8)
    """
    _check_model(model)
    quantization, qat = _torchao_quantization()
    if not any(isinstance(m, qat.FakeQuantizedLinear) for m in model.modules()):
        raise ValueError(
            "model has no fake-quantised layer; call prepare_qat on it before training"
        )
    copy = clone_model(model).cpu().eval()
    quantization.quantize_(copy, qat.QATConfig(step="convert"))
    quantization.quantize_(copy, _dynamic_config())
    return copy


# --------------------------------------------------------------------------- ONNX


def _onnx_path(path: str | os.PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at {path}")
    return path


def export_onnx(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """Export ``model`` as one self-contained ONNX file with a dynamic batch axis, atomically.

    ``torch.onnx.export(..., dynamo=True)``: the model is captured with
    ``torch.export`` and translated to ONNX operators (opset 18 or later); the
    weights are stored inside the file. The first axis of the input (named
    ``"input"``) and of the output (``"logits"``) may take any size, so the file
    serves batch 1 and batch 256 alike. Export the **float** model; to ship
    int8, quantise the file with :func:`quantize_onnx` (torchao's quantised
    weights do not export).

    Args:
        model: The model to export (masks are folded into a CPU copy first; the
            caller's model is not modified).
        path: Destination file (conventionally ``*.onnx``).
        example_input: One representative input batch (any batch size).

    Returns:
        The path written.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module``, ``example_input``
            is not a tensor, or ``path`` is not a ``str`` or ``os.PathLike``.
        ValueError: If ``model`` holds torchao-quantised weights.
        FileNotFoundError: If the destination folder does not exist.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> file = export_onnx(net, Path(folder) / "net.onnx", torch.rand(3, 4))
        >>> run_onnx(file, torch.rand(5, 4)).shape
        torch.Size([5, 2])
    """
    _check_model(model)
    x = _check_tensor("example_input", example_input).detach().cpu()
    if x.dim() < 1:
        raise ValueError(f"example_input must have a batch axis, got shape {tuple(x.shape)}")
    if is_quantized(model):
        raise ValueError(
            "model holds quantised weights, which do not export to ONNX; export the float model "
            "and quantise the file with quantize_onnx"
        )
    plain = _without_masks(model)
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: str) -> None:
        torch.onnx.export(
            plain,
            (x,),
            tmp,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )

    return atomic_write(path, write)


def quantize_onnx(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_inputs: torch.Tensor | None = None,
    *,
    batch_size: int = 256,
) -> Path:
    """Quantise an ONNX file to int8 with ONNX Runtime's quantiser, atomically.

    * Without ``calibration_inputs``: *dynamic* quantisation
      (``onnxruntime.quantization.quantize_dynamic``), int8 weights, activations
      quantised on the fly (``MatMulInteger``), as :func:`quantize_dynamic_int8`.
    * With ``calibration_inputs``: *static* post-training quantisation
      (``quantize_static``): the file is run on the calibration inputs, the
      range of every activation is recorded (min/max), and fixed scales are
      written into the graph (``QGemm``), so nothing is measured at inference.
      Calibrate on training or validation images, never on the test set.

    Weights are quantised per output channel in both cases.

    Args:
        path: A float ONNX file (:func:`export_onnx`).
        out_path: Destination of the int8 file.
        calibration_inputs: Inputs for static quantisation, or ``None`` for dynamic.
        batch_size: Calibration batch size, >= 1.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: If a path is not a ``str`` or ``os.PathLike`` or
            ``calibration_inputs`` is neither ``None`` nor a tensor.
        FileNotFoundError: If ``path`` does not exist or the folder of
            ``out_path`` does not exist.
        ValueError: If ``calibration_inputs`` is empty.
    """
    source = _onnx_path(path)
    batch_size = check_positive_int("batch_size", batch_size)
    if calibration_inputs is not None:
        calibration = _check_tensor("calibration_inputs", calibration_inputs).detach().cpu()
        if calibration.dim() < 1 or len(calibration) == 0:
            raise ValueError("calibration_inputs must hold at least one input")
    from onnxruntime import quantization as ortq

    def write(tmp: str) -> None:
        with _quiet_loggers("root"):
            if calibration_inputs is None:
                ortq.quantize_dynamic(
                    str(source), tmp, per_channel=True, weight_type=ortq.QuantType.QInt8
                )
                return
            ortq.quantize_static(
                str(source),
                tmp,
                _Calibration(calibration, batch_size),
                quant_format=ortq.QuantFormat.QOperator,
                per_channel=True,
                activation_type=ortq.QuantType.QUInt8,
                weight_type=ortq.QuantType.QInt8,
            )

    return atomic_write(out_path, write)


class _Calibration:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a tensor, in batches."""

    def __init__(self, inputs: torch.Tensor, batch_size: int) -> None:
        batches = inputs.float().numpy()
        self._batches = iter(
            [{"input": batches[i : i + batch_size]} for i in range(0, len(batches), batch_size)]
        )

    def get_next(self) -> dict[str, Any] | None:
        return next(self._batches, None)


def onnx_session(path: str | os.PathLike, threads: int = 1) -> Any:
    """Open an ONNX file in ONNX Runtime on the CPU, with an explicit thread count.

    Args:
        path: An ONNX file.
        threads: Threads of one operator (``intra_op_num_threads``), >= 1;
            operators run one after another (``inter_op_num_threads = 1``).

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a valid ONNX model, or ``threads < 1``.
    """
    source = _onnx_path(path)
    threads = check_positive_int("threads", threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{source} is not an ONNX file ONNX Runtime can run: {exc}") from exc


def run_onnx(
    session: Any, inputs: torch.Tensor, *, batch_size: int = 2048, threads: int = 1
) -> torch.Tensor:
    """Run an ONNX model on ``inputs`` (in batches) and return its outputs as a tensor.

    Args:
        session: An ``onnxruntime.InferenceSession`` (:func:`onnx_session`) or
            the path of an ONNX file.
        inputs: The inputs, with a batch axis first.
        batch_size: Inputs per call, >= 1.
        threads: Threads when ``session`` is a path.

    Returns:
        The first output (logits), a float tensor on the CPU.

    Raises:
        TypeError: If ``inputs`` is not a tensor.
        FileNotFoundError: If ``session`` is a path that does not exist.
        ValueError: If ``session`` is a path to a file that is not an ONNX model.
    """
    x = _check_tensor("inputs", inputs).detach().cpu().float()
    batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(session, (str, os.PathLike)):
        session = onnx_session(session, threads)
    name = session.get_inputs()[0].name
    outputs = [
        torch.from_numpy(session.run(None, {name: x[i : i + batch_size].numpy()})[0])
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outputs)


def evaluate_onnx(path: str | os.PathLike, dataset: TensorDataset, *, threads: int = 1) -> float:
    """Accuracy of an ONNX file on a labelled data set, run in ONNX Runtime.

    Args:
        path: An ONNX file.
        dataset: ``TensorDataset(inputs, labels)`` (any device; moved to the CPU).
        threads: ``intra_op_num_threads`` of the session, >= 1.

    Returns:
        The fraction of inputs whose largest output is the label.

    Raises:
        TypeError: If ``dataset`` is not a two-tensor ``TensorDataset``.
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not an ONNX model.
    """
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) != 2:
        raise TypeError(
            f"dataset must be a TensorDataset of (inputs, labels), got {type(dataset).__name__}"
        )
    inputs, labels = dataset.tensors
    predicted = run_onnx(onnx_session(path, threads), inputs).argmax(1)
    return float((predicted == labels.cpu()).float().mean())


@torch.no_grad()
def check_export(
    reference: nn.Module, path: str | os.PathLike, inputs: torch.Tensor
) -> dict[str, float]:
    """Run an exported file in ONNX Runtime and compare it with the *float* eager ``reference``.

    Pass the float model the file is meant to stand in for (for an int8 file,
    the float model before quantisation): agreement with the model that was
    validated is what matters when a model is shipped. A quantised reference
    is refused, because comparing an int8 file with an int8 model would hide
    what quantisation changed.

    Args:
        reference: The float model to compare against (masks are folded into a copy).
        path: The ONNX file (:func:`export_onnx`, :func:`quantize_onnx`).
        inputs: The inputs, e.g. the whole test set.

    Returns:
        A dict with ``"max_abs_diff"`` (largest absolute difference between
        the file's and the reference's outputs, i.e. logits) and
        ``"agreement"`` (fraction of inputs with the same predicted class).

    Raises:
        TypeError: If ``reference`` is not an ``nn.Module`` or ``inputs`` is not a tensor.
        ValueError: If ``reference`` is quantised, or ``path`` is not an ONNX file.
        FileNotFoundError: If ``path`` does not exist.
    """
    _check_model(reference, "reference")
    x = _check_tensor("inputs", inputs).detach().cpu().float()
    if is_quantized(reference):
        raise ValueError("reference must be the float model the file replaces, not a quantised one")
    actual = run_onnx(onnx_session(path), x)
    expected = _without_masks(reference)(x)
    return {
        "max_abs_diff": float((expected - actual).abs().max()),
        "agreement": float((expected.argmax(1) == actual.argmax(1)).float().mean()),
    }


def onnx_latency(
    path: str | os.PathLike,
    batch_size: int = 1,
    *,
    threads: int = 1,
    min_run_time: float = 0.2,
    warmup: int = 10,
) -> float:
    """Median wall-clock seconds of one ONNX Runtime call on a random batch.

    Each call is timed on its own (``time.perf_counter``) after ``warmup``
    untimed calls, until ``min_run_time`` seconds have passed (at least 10
    calls); the median resists the outliers of a shared machine. The input
    shape is read from the file (the batch axis set to ``batch_size``).

    Args:
        path: An ONNX file with a dynamic batch axis (:func:`export_onnx`).
        batch_size: Examples per call, >= 1.
        threads: ``intra_op_num_threads`` of the session, >= 1.
        min_run_time: Seconds of timed calls, > 0.
        warmup: Untimed calls first, >= 0.

    Returns:
        The median seconds per call.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a count is out of range, ``min_run_time <= 0``, or the
            file's input has an unknown non-batch dimension.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    warmup = check_positive_int("warmup", warmup, allow_zero=True)
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time}")
    session = onnx_session(path, threads)
    spec = session.get_inputs()[0]
    shape = list(spec.shape[1:])
    if not all(isinstance(d, int) for d in shape):
        raise ValueError(f"the input {spec.name!r} has an unknown dimension: {spec.shape}")
    feed = {spec.name: torch.rand(batch_size, *shape).numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    deadline = time.perf_counter() + min_run_time
    while len(times) < 10 or time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
