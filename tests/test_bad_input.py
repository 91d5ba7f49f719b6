"""Invalid arguments to the public API fail early, with a message naming the argument.

One table drives one test: each row calls the API with one bad argument and
states the exception and a regular expression that the message must match.
The expression names the argument and, where there is one, the allowed range,
so an error that merely happens to have the right type (a bare ``RuntimeError``
from deep inside PyTorch, an ``IndexError`` on a label) does not pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import companion as cp
from companion import (
    analysis,
    deploy,
    distillation,
    io,
    metrics,
    penalties,
    pruning,
    report,
    soft,
    speed,
    surgery,
    training,
    utils,
)
from companion.convnets import LeNet5, shrink_lenet5
from companion.data import (
    MNISTError,
    fetch_mnist,
    iterate_batches,
    num_batches,
    raw_folder,
    train_val_split,
    verify_mnist,
)
from companion.models import MLP

NOWHERE = Path("/nonexistent-companion-folder/model.pt")


# --------------------------------------------------------------------------- tiny inputs


def mlp() -> MLP:
    return MLP((4, 3, 2))


def seq() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def no_layers() -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Flatten())


def masked_mlp() -> MLP:
    net = mlp()
    pruning.apply_masks(net, {"fc1": torch.ones(3, 4)})
    return net


def data(n: int = 8, classes: int = 2) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 4, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def empty() -> TensorDataset:
    return TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def train(**kwargs):
    """``train`` on the tiny data set, with any argument overridden."""
    args = {"model": mlp(), "dataset": data(), "epochs": 1, "batch_size": 4, "progress": False}
    args.update(kwargs)
    return training.train(args.pop("model"), args.pop("dataset"), **args)


def prune_loop(**kwargs):
    """``iterative_prune`` with valid defaults, any argument overridden."""
    args = {"evaluate": lambda m: 1.0, "step": 0.25, "target": 0.5, "tolerance": 0.0}
    args.update(kwargs)
    return pruning.iterative_prune(args.pop("model", mlp()), args.pop("evaluate"), **args)


def distill(**kwargs):
    args = {"student": mlp(), "teacher": mlp(), "dataset": data(), "epochs": 1}
    args.update(kwargs)
    return distillation.distill(
        args.pop("student"), args.pop("teacher"), args.pop("dataset"), progress=False, **args
    )


class Records(torch.utils.data.Dataset):
    """A map-style data set whose items are dicts (batches collate to dicts)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.zeros(4), "y": torch.tensor(0)}


class Pair(nn.Module):
    """A model returning ``(logits, a 1-d score)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.fc(x)
        return logits, logits.sum(1)


def written(tmp: Path, payload: object | bytes) -> Path:
    """A file holding raw bytes, or a ``torch.save`` archive of ``payload``."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(payload, bytes):
        tmp.write_bytes(payload)
    else:
        torch.save(payload, tmp)
    return tmp


_SCRATCH = {"dir": Path()}


@pytest.fixture(autouse=True)
def _fresh_scratch(tmp_path):
    """Rows that need a file write it under a fresh folder per row."""
    _SCRATCH["dir"] = tmp_path


def scratch(name: str) -> Path:
    return _SCRATCH["dir"] / name


def saved_sparse_mlp() -> Path:
    return soft.save_sparse(mlp(), scratch("sparse.pt"))


# --------------------------------------------------------------------------- the table

CASES = [
    # ---- utils
    pytest.param(
        lambda: utils.seed_everything(-1),
        ValueError,
        r"seed must be an integer >= 0",
        id="seed-negative",
    ),
    pytest.param(
        lambda: utils.seed_everything(2**32),
        ValueError,
        r"seed must be in \[0, 2\*\*32 - 1\]",
        id="seed-too-large",
    ),
    pytest.param(
        lambda: utils.seed_everything("0"), TypeError, r"seed must be an int", id="seed-str"
    ),
    pytest.param(
        lambda: utils.seed_everything(1.5), TypeError, r"seed must be an int", id="seed-float"
    ),
    pytest.param(
        lambda: utils.get_device("tpu"),
        ValueError,
        r"prefer must be None, 'cpu' or 'cuda'",
        id="device-unknown",
    ),
    pytest.param(
        lambda: utils.clone_model("net"),
        TypeError,
        r"model must be a torch.nn.Module",
        id="clone-not-module",
    ),
    pytest.param(
        lambda: utils.check_in_range("amount", float("nan"), 0.0, 1.0),
        ValueError,
        r"amount must be in \[0.0, 1.0\], got nan",
        id="check-range-nan",
    ),
    pytest.param(
        lambda: utils.check_positive_int("epochs", True),
        TypeError,
        r"epochs must be an int, got bool",
        id="check-int-bool",
    ),
    # ---- models
    pytest.param(
        lambda: MLP((4,)),
        ValueError,
        r"sizes must list at least an input and an output",
        id="mlp-one-size",
    ),
    pytest.param(
        lambda: MLP((4, 0, 2)), ValueError, r"sizes must be positive ints", id="mlp-zero-width"
    ),
    pytest.param(
        lambda: MLP((4, 2.5, 2)), ValueError, r"sizes must be positive ints", id="mlp-float-width"
    ),
    pytest.param(
        lambda: MLP((4, 2), dropout=1.0),
        ValueError,
        r"dropout must be in \[0.0, 1.0\)",
        id="mlp-dropout-one",
    ),
    pytest.param(
        lambda: LeNet5(channels=(6,)),
        ValueError,
        r"channels must be 2 positive int",
        id="lenet-channels",
    ),
    pytest.param(
        lambda: LeNet5(num_classes=0),
        ValueError,
        r"num_classes must be 1 positive int",
        id="lenet-classes",
    ),
    # ---- pruning: masks
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 1.5),
        ValueError,
        r"amount must be in \[0.0, 1.0\], got 1.5",
        id="magnitude-amount-above-1",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), -0.1),
        ValueError,
        r"amount must be in \[0.0, 1.0\]",
        id="magnitude-amount-negative",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), "half"),
        TypeError,
        r"amount must be a real number",
        id="magnitude-amount-str",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 0.5, scope="model"),
        ValueError,
        r"scope must be 'layer' or 'global'",
        id="magnitude-scope",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 0.5, structured=True, norm=0),
        ValueError,
        r"norm must be a positive number",
        id="magnitude-norm-zero",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 0.5, norm="fro"),
        ValueError,
        r"norm must be a positive number",
        id="magnitude-norm-str",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(no_layers(), 0.5),
        ValueError,
        r"model has no prunable \(Linear or Conv\) layers",
        id="magnitude-no-layers",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(MLP((4, 2)), 0.5, structured=True),
        ValueError,
        r"structured pruning needs a hidden layer",
        id="magnitude-structured-no-hidden",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks("model", 0.5),
        TypeError,
        r"model must be a torch.nn.Module",
        id="magnitude-not-module",
    ),
    pytest.param(
        lambda: pruning.random_masks(mlp(), 2.0),
        ValueError,
        r"amount must be in \[0.0, 1.0\]",
        id="random-amount",
    ),
    pytest.param(
        lambda: pruning.random_masks(mlp(), 0.5, scope="all"),
        ValueError,
        r"scope must be 'layer' or 'global'",
        id="random-scope",
    ),
    pytest.param(
        lambda: pruning.random_masks(mlp(), 0.5, generator=0),
        TypeError,
        r"generator must be a torch.Generator or None",
        id="random-generator",
    ),
    pytest.param(
        lambda: pruning.structured_sparsity(nn.Linear(4, 2)),
        ValueError,
        r"structured pruning needs a hidden layer",
        id="structured-sparsity-one-layer",
    ),
    # ---- pruning: applying masks
    pytest.param(
        lambda: pruning.apply_masks(mlp(), {"fc9": torch.ones(3, 4)}),
        ValueError,
        r"masks names 'fc9', which is not a prunable layer",
        id="masks-missing-module",
    ),
    pytest.param(
        lambda: pruning.apply_masks(mlp(), {"fc1": torch.ones(4, 3)}),
        ValueError,
        r"masks\['fc1'\] has shape \(4, 3\), but the weight of 'fc1' has shape \(3, 4\)",
        id="masks-wrong-shape",
    ),
    pytest.param(
        lambda: pruning.apply_masks(mlp(), {"fc1": torch.full((3, 4), 0.5)}),
        ValueError,
        r"masks\['fc1'\] must contain only 0 and 1",
        id="masks-not-binary",
    ),
    pytest.param(
        lambda: pruning.apply_masks(mlp(), [("fc1", torch.ones(3, 4))]),
        TypeError,
        r"masks must be a dict",
        id="masks-not-dict",
    ),
    pytest.param(
        lambda: pruning.apply_masks(mlp(), {"fc1": [[1.0] * 4] * 3}),
        TypeError,
        r"masks\['fc1'\] must be a tensor",
        id="masks-not-tensor",
    ),
    pytest.param(
        lambda: pruning.apply_masks(no_layers(), {"0": torch.ones(1)}),
        ValueError,
        r"masks names '0', which is not a prunable layer",
        id="masks-no-layers",
    ),
    # ---- pruning: the iterative loop
    pytest.param(
        lambda: prune_loop(step=0.0),
        ValueError,
        r"step must be in \(0.0, 1.0\]",
        id="loop-step-zero",
    ),
    pytest.param(
        lambda: prune_loop(target=1.2),
        ValueError,
        r"target must be in \[0.0, 1.0\]",
        id="loop-target",
    ),
    pytest.param(
        lambda: prune_loop(tolerance=-0.1),
        ValueError,
        r"tolerance must be in \[0.0, 1.0\]",
        id="loop-tolerance",
    ),
    pytest.param(
        lambda: prune_loop(min_step=0.5),
        ValueError,
        r"min_step must be in \(0.0, 0.25\]",
        id="loop-min-step",
    ),
    pytest.param(
        lambda: prune_loop(criterion="taylor"),
        ValueError,
        r"criterion must be 'magnitude' or 'random'",
        id="loop-criterion",
    ),
    pytest.param(
        lambda: prune_loop(mode="medium"),
        ValueError,
        r"mode must be 'hard' or 'soft'",
        id="loop-mode",
    ),
    pytest.param(
        lambda: prune_loop(scope="net"),
        ValueError,
        r"scope must be 'layer' or 'global'",
        id="loop-scope",
    ),
    pytest.param(
        lambda: prune_loop(evaluate=0.9),
        TypeError,
        r"evaluate must be callable",
        id="loop-evaluate",
    ),
    pytest.param(
        lambda: prune_loop(finetune="sgd"),
        TypeError,
        r"finetune must be callable or None",
        id="loop-finetune",
    ),
    pytest.param(
        lambda: prune_loop(max_rounds=0),
        ValueError,
        r"max_rounds must be an integer >= 1",
        id="loop-max-rounds",
    ),
    pytest.param(
        lambda: prune_loop(reference=float("nan")),
        ValueError,
        r"reference must be in \[0.0, 1.0\]",
        id="loop-reference-nan",
    ),
    pytest.param(
        lambda: prune_loop(optimizer="sgd"),
        TypeError,
        r"optimizer must be a torch.optim.Optimizer or None",
        id="loop-optimizer",
    ),
    pytest.param(
        lambda: prune_loop(model=no_layers()),
        ValueError,
        r"model has no prunable",
        id="loop-no-layers",
    ),
    # ---- surgery
    pytest.param(
        lambda: surgery.shrink(seq()),
        TypeError,
        r"model must be a companion.models.MLP",
        id="shrink-not-mlp",
    ),
    pytest.param(
        lambda: shrink_lenet5(mlp()),
        TypeError,
        r"model must be a companion.convnets.LeNet5",
        id="shrink-lenet-not-lenet",
    ),
    pytest.param(
        lambda: surgery.shrink(seq(), example_inputs=[[0.0] * 4]),
        TypeError,
        r"example_inputs must be a torch.Tensor batch or a tuple of tensors",
        id="shrink-example-inputs-not-tensor",
    ),
    pytest.param(
        lambda: surgery.shrink(seq(), torch.zeros(2, 4), rtol=-1.0),
        ValueError,
        r"rtol must be a float in \(0, inf\)",
        id="shrink-rtol-negative",
    ),
    pytest.param(
        lambda: surgery.shrink("model", torch.zeros(2, 4)),
        TypeError,
        r"model must be a torch.nn.Module",
        id="shrink-not-a-module",
    ),
    # ---- distillation
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), temperature=0.0),
        ValueError,
        r"temperature must be in \(0.0, inf\)",
        id="kd-temperature-zero",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), temperature=-2.0),
        ValueError,
        r"temperature must be in \(0.0, inf\)",
        id="kd-temperature-negative",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), temperature=float("inf")),
        ValueError,
        r"temperature must be in \(0.0, inf\)",
        id="kd-temperature-inf",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), alpha=1.5),
        ValueError,
        r"alpha must be in \[0.0, 1.0\]",
        id="kd-alpha-above-1",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), alpha=-0.1),
        ValueError,
        r"alpha must be in \[0.0, 1.0\]",
        id="kd-alpha-negative",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 2)),
        ValueError,
        r"student_logits has 3 classes but teacher_logits has 2",
        id="kd-class-mismatch",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(5, 3)),
        ValueError,
        r"student_logits and teacher_logits must have the same batch size",
        id="kd-batch-mismatch",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), torch.zeros(3, dtype=torch.long)),
        ValueError,
        r"targets must have shape \[4\]",
        id="kd-targets-length",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), torch.tensor([0, 1, 2, 3])),
        ValueError,
        r"targets must be class indices in \[0, 2\]",
        id="kd-targets-range",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), torch.zeros(4)),
        TypeError,
        r"targets must hold integer class indices",
        id="kd-targets-float",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), logits(4, 3), [0, 1, 2, 0]),
        TypeError,
        r"targets must be a torch.Tensor or None",
        id="kd-targets-list",
    ),
    pytest.param(
        lambda: distillation.kd_loss(torch.full((4, 3), float("nan")), logits(4, 3)),
        ValueError,
        r"student_logits contains NaN or infinite values",
        id="kd-student-nan",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), torch.full((4, 3), float("inf"))),
        ValueError,
        r"teacher_logits contains NaN or infinite values",
        id="kd-teacher-inf",
    ),
    pytest.param(
        lambda: distillation.kd_loss([[0.0, 1.0]], logits(1, 2)),
        TypeError,
        r"student_logits must be a torch.Tensor",
        id="kd-student-list",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4), logits(4)),
        ValueError,
        r"student_logits must have shape \[batch, classes\]",
        id="kd-1d-logits",
    ),
    pytest.param(
        lambda: distillation.kd_loss(logits(4, 3), torch.zeros(4, 3, device="meta")),
        ValueError,
        r"teacher_logits is on meta but student_logits is on cpu",
        id="kd-device-mismatch",
    ),
    pytest.param(
        lambda: distillation.kd_loss(
            logits(4, 3), logits(4, 3), torch.zeros(4, dtype=torch.long, device="meta")
        ),
        ValueError,
        r"targets is on meta but student_logits is on cpu",
        id="kd-targets-device",
    ),
    pytest.param(
        lambda: distillation.soft_targets(logits(2, 3), temperature=0),
        ValueError,
        r"temperature must be in \(0.0, inf\)",
        id="soft-targets-temperature",
    ),
    pytest.param(
        lambda: distillation.soft_targets(torch.tensor([[float("nan"), 0.0]])),
        ValueError,
        r"logits contains NaN",
        id="soft-targets-nan",
    ),
    pytest.param(
        lambda: distillation.KDLoss(alpha=2.0),
        ValueError,
        r"alpha must be in \[0.0, 1.0\]",
        id="kdloss-alpha",
    ),
    pytest.param(
        lambda: distillation.KDLoss(temperature=0),
        ValueError,
        r"temperature must be in \(0.0, inf\)",
        id="kdloss-temperature",
    ),
    pytest.param(
        lambda: distill(teacher="teacher"),
        TypeError,
        r"teacher must be a torch.nn.Module",
        id="distill-teacher-type",
    ),
    pytest.param(
        lambda: distill(student="student"),
        TypeError,
        r"model must be a torch.nn.Module",
        id="distill-student-type",
    ),
    pytest.param(
        lambda: distill(loss_fn=lambda z, b: z.sum()),
        ValueError,
        r"distill sets loss_fn itself",
        id="distill-loss-fn",
    ),
    pytest.param(
        lambda: distill(epochs=0),
        ValueError,
        r"epochs must be an integer >= 1",
        id="distill-epochs",
    ),
    pytest.param(
        lambda: distill(temperature=-1.0),
        ValueError,
        r"temperature must be in \(0.0, inf\)",
        id="distill-temperature",
    ),
    pytest.param(
        lambda: distill(dataset=empty()), ValueError, r"dataset is empty", id="distill-empty"
    ),
    pytest.param(
        lambda: distill(dataset=TensorDataset(torch.randn(8, 4))),
        ValueError,
        r"dataset must hold \(inputs, targets\)",
        id="distill-no-targets",
    ),
    pytest.param(
        lambda: distill(teacher=MLP((4, 3))),
        ValueError,
        r"student_logits has 2 classes but teacher_logits has 3",
        id="distill-teacher-classes",
    ),
    # ---- training
    pytest.param(
        lambda: train(epochs=0),
        ValueError,
        r"epochs must be an integer >= 1, got 0",
        id="train-epochs-zero",
    ),
    pytest.param(
        lambda: train(epochs=1.5), TypeError, r"epochs must be an int", id="train-epochs-float"
    ),
    pytest.param(
        lambda: train(batch_size=0),
        ValueError,
        r"batch_size must be an integer >= 1",
        id="train-batch-zero",
    ),
    pytest.param(
        lambda: train(batch_size=-8),
        ValueError,
        r"batch_size must be an integer >= 1",
        id="train-batch-negative",
    ),
    pytest.param(
        lambda: train(lr=0.0), ValueError, r"lr must be in \(0.0, inf\)", id="train-lr-zero"
    ),
    pytest.param(
        lambda: train(lr=-0.1), ValueError, r"lr must be in \(0.0, inf\)", id="train-lr-negative"
    ),
    pytest.param(
        lambda: train(lr=float("nan")), ValueError, r"lr must be in \(0.0, inf\)", id="train-lr-nan"
    ),
    pytest.param(
        lambda: train(momentum=1.0),
        ValueError,
        r"momentum must be in \[0.0, 1.0\)",
        id="train-momentum",
    ),
    pytest.param(
        lambda: train(weight_decay=-1e-4),
        ValueError,
        r"weight_decay must be in \[0.0, inf\)",
        id="train-weight-decay",
    ),
    pytest.param(
        lambda: train(optimizer="rmsprop"),
        ValueError,
        r"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer",
        id="train-optimizer-name",
    ),
    pytest.param(
        lambda: train(optimizer=3),
        TypeError,
        r"optimizer must be 'sgd', 'adam' or a torch.optim.Optimizer",
        id="train-optimizer-type",
    ),
    pytest.param(
        lambda: train(penalty="l1"),
        TypeError,
        r"penalty must be callable or None",
        id="train-penalty",
    ),
    pytest.param(
        lambda: train(penalty_weight=-1.0),
        ValueError,
        r"penalty_weight must be in \[0.0, inf\)",
        id="train-penalty-weight",
    ),
    pytest.param(
        lambda: train(loss_fn="mse"),
        TypeError,
        r"loss_fn must be callable or None",
        id="train-loss-fn",
    ),
    pytest.param(
        lambda: train(on_step=1), TypeError, r"on_step must be callable or None", id="train-on-step"
    ),
    pytest.param(
        lambda: train(on_epoch_end="print"),
        TypeError,
        r"on_epoch_end must be callable or None",
        id="train-on-epoch-end",
    ),
    pytest.param(
        lambda: train(seed=-1),
        ValueError,
        r"seed must be an integer >= 0",
        id="train-seed-negative",
    ),
    pytest.param(lambda: train(seed="0"), TypeError, r"seed must be an int", id="train-seed-str"),
    pytest.param(
        lambda: train(model="mlp"),
        TypeError,
        r"model must be a torch.nn.Module",
        id="train-model-type",
    ),
    pytest.param(
        lambda: train(dataset=empty()),
        ValueError,
        r"dataset is empty; it must hold at least one example",
        id="train-empty",
    ),
    pytest.param(
        lambda: train(dataset=data().tensors),
        TypeError,
        r"dataset must be a torch.utils.data.TensorDataset",
        id="train-dataset-tuple",
    ),
    pytest.param(
        lambda: train(dataset=TensorDataset(torch.randn(8, 4))),
        ValueError,
        r"dataset must hold \(inputs, targets\)",
        id="train-no-targets",
    ),
    pytest.param(
        lambda: train(eval_set=empty()), ValueError, r"eval_set is empty", id="train-eval-empty"
    ),
    pytest.param(
        lambda: train(dataset=data(classes=5)),
        ValueError,
        r"dataset targets must be class indices in \[0, 1\]",
        id="train-labels-out-of-range",
    ),
    pytest.param(
        lambda: train(dataset=TensorDataset(torch.randn(8, 4), torch.rand(8))),
        TypeError,
        r"dataset targets must hold integer class indices",
        id="train-labels-float",
    ),
    pytest.param(
        lambda: train(
            dataset=TensorDataset(
                torch.full((8, 4), float("nan")), torch.zeros(8, dtype=torch.long)
            )
        ),
        FloatingPointError,
        r"training loss became nan at epoch 1, step 1",
        id="train-nan-inputs",
    ),
    pytest.param(
        lambda: train(lr=1e30, momentum=0.9, dataset=data(64), epochs=3),
        FloatingPointError,
        r"training loss became (nan|inf).*lower the learning rate",
        id="train-diverges",
    ),
    pytest.param(
        lambda: train(model=mlp().to("meta")),
        ValueError,
        r"model is on meta but dataset is on cpu",
        id="train-device-mismatch",
    ),
    pytest.param(
        lambda: training.evaluate(mlp(), empty()),
        ValueError,
        r"dataset is empty",
        id="evaluate-empty",
    ),
    pytest.param(
        lambda: training.evaluate(mlp(), data(classes=3)),
        ValueError,
        r"dataset targets must be class indices in \[0, 1\]",
        id="evaluate-labels-out-of-range",
    ),
    pytest.param(
        lambda: training.evaluate(mlp(), data(), batch_size=0),
        ValueError,
        r"batch_size must be an integer >= 1",
        id="evaluate-batch",
    ),
    pytest.param(
        lambda: training.evaluate(mlp().to("meta"), data()),
        ValueError,
        r"model is on meta but dataset is on cpu",
        id="evaluate-device-mismatch",
    ),
    pytest.param(
        lambda: training.predict(mlp(), [[0.0] * 4]),
        TypeError,
        r"inputs must be a torch.Tensor",
        id="predict-inputs-list",
    ),
    pytest.param(
        lambda: training.make_optimizer(mlp(), "sgd", lr=0),
        ValueError,
        r"lr must be in \(0.0, inf\)",
        id="optimizer-lr",
    ),
    pytest.param(
        lambda: training.make_optimizer(mlp(), "lbfgs"),
        ValueError,
        r"optimizer must be 'sgd', 'adam'",
        id="optimizer-name",
    ),
    # ---- data
    pytest.param(
        lambda: iterate_batches(data(), 0),
        ValueError,
        r"batch_size must be an integer >= 1",
        id="batches-zero-eager",
    ),
    pytest.param(
        lambda: iterate_batches(data(), 2, shuffle=True, generator=42),
        TypeError,
        r"generator must be a torch.Generator or None",
        id="batches-generator",
    ),
    pytest.param(
        lambda: iterate_batches(empty(), 2), ValueError, r"dataset is empty", id="batches-empty"
    ),
    pytest.param(
        lambda: num_batches(data(), -1),
        ValueError,
        r"batch_size must be an integer >= 1",
        id="num-batches",
    ),
    pytest.param(
        lambda: train_val_split(data(), 0.0),
        ValueError,
        r"val_fraction must be in \(0.0, 1.0\)",
        id="split-zero",
    ),
    pytest.param(
        lambda: train_val_split(data(), 1.0),
        ValueError,
        r"val_fraction must be in \(0.0, 1.0\)",
        id="split-one",
    ),
    pytest.param(
        lambda: train_val_split(data(2), 0.1),
        ValueError,
        r"val_fraction=0.1 leaves an empty part of a data set of 2",
        id="split-empty-part",
    ),
    pytest.param(
        lambda: train_val_split(data(), 0.5, seed=-3),
        ValueError,
        r"seed must be an integer >= 0",
        id="split-seed",
    ),
    pytest.param(
        lambda: fetch_mnist(sources=[]),
        ValueError,
        r"sources must be a non-empty sequence",
        id="fetch-no-sources",
    ),
    pytest.param(
        lambda: fetch_mnist(sources=["kaggle"]),
        ValueError,
        r"sources must be a non-empty sequence of \['npm', 'torchvision'\]",
        id="fetch-unknown-source",
    ),
    pytest.param(
        lambda: raw_folder(123), TypeError, r"root must be a path or None", id="root-type"
    ),
    pytest.param(
        lambda: verify_mnist(NOWHERE.parent),
        MNISTError,
        r"MNIST file .* is missing; run `python -m companion.data fetch",
        id="mnist-missing",
    ),
    # ---- penalties
    pytest.param(
        lambda: penalties.l1_penalty(no_layers()),
        ValueError,
        r"model has no prunable \(Linear or Conv\) layers",
        id="l1-no-layers",
    ),
    pytest.param(
        lambda: penalties.l2_penalty("model"),
        TypeError,
        r"model must be a torch.nn.Module",
        id="l2-not-module",
    ),
    pytest.param(
        lambda: penalties.group_lasso_penalty(no_layers()),
        ValueError,
        r"model has no prunable",
        id="group-lasso-no-layers",
    ),
    pytest.param(
        lambda: penalties.soft_threshold_(mlp(), -0.1),
        ValueError,
        r"threshold must be in \[0.0, inf\)",
        id="threshold-negative",
    ),
    pytest.param(
        lambda: penalties.soft_threshold_(mlp(), float("inf")),
        ValueError,
        r"threshold must be in \[0.0, inf\)",
        id="threshold-inf",
    ),
    pytest.param(
        lambda: penalties.soft_threshold_(no_layers(), 0.1),
        ValueError,
        r"model has no prunable",
        id="threshold-no-layers",
    ),
    # ---- soft pruning, schedules, sparse storage
    pytest.param(
        lambda: soft.cubic_sparsity(0, final=1.5, duration=10),
        ValueError,
        r"final must be in \[0.0, 1.0\]",
        id="cubic-final",
    ),
    pytest.param(
        lambda: soft.cubic_sparsity(0, final=0.5, initial=0.8, duration=10),
        ValueError,
        r"initial must be in \[0.0, 0.5\]",
        id="cubic-initial",
    ),
    pytest.param(
        lambda: soft.cubic_sparsity(-1, final=0.5, duration=10),
        ValueError,
        r"step must be an integer >= 0",
        id="cubic-step",
    ),
    pytest.param(
        lambda: soft.cubic_sparsity(0, final=0.5, duration=0),
        ValueError,
        r"duration must be an integer >= 1",
        id="cubic-duration",
    ),
    pytest.param(
        lambda: soft.SoftPruner(mlp(), 1.5),
        ValueError,
        r"amount must be in \[0.0, 1.0\]",
        id="soft-pruner-amount",
    ),
    pytest.param(
        lambda: soft.SoftPruner(mlp(), 0.5, scope="net"),
        ValueError,
        r"scope must be 'layer' or 'global'",
        id="soft-pruner-scope",
    ),
    pytest.param(
        lambda: soft.SoftPruner(masked_mlp(), 0.5),
        ValueError,
        r"model already carries pruning masks",
        id="soft-pruner-masked",
    ),
    pytest.param(
        lambda: soft.SoftPruner(no_layers(), 0.5),
        ValueError,
        r"model has no prunable",
        id="soft-pruner-no-layers",
    ),
    pytest.param(
        lambda: soft.SoftPruner("model", 0.5),
        TypeError,
        r"model must be a torch.nn.Module",
        id="soft-pruner-not-module",
    ),
    pytest.param(
        lambda: soft.SoftPruner(mlp(), 0.5).finalize(),
        RuntimeError,
        r"finalize\(\) needs at least one on_epoch_end\(\) call",
        id="soft-pruner-finalize-early",
    ),
    pytest.param(
        lambda: soft.GradualPruner(mlp(), final=0.5, duration=10, every=0),
        ValueError,
        r"every must be an integer >= 1",
        id="gradual-every",
    ),
    pytest.param(
        lambda: soft.GradualPruner(mlp(), final=0.5, duration=0),
        ValueError,
        r"duration must be an integer >= 1",
        id="gradual-duration",
    ),
    pytest.param(
        lambda: soft.GradualPruner(no_layers(), final=0.5, duration=10),
        ValueError,
        r"model has no prunable",
        id="gradual-no-layers",
    ),
    pytest.param(
        lambda: soft.save_sparse("model", scratch("s.pt")),
        TypeError,
        r"model must be a torch.nn.Module",
        id="save-sparse-not-module",
    ),
    pytest.param(
        lambda: soft.load_sparse(NOWHERE),
        FileNotFoundError,
        r"no model file at",
        id="load-sparse-missing",
    ),
    pytest.param(
        lambda: soft.load_sparse(saved_sparse_mlp(), model=MLP((4, 5, 2))),
        ValueError,
        r"model does not match the file",
        id="load-sparse-wrong-model",
    ),
    pytest.param(
        lambda: soft.load_sparse(io.save(mlp(), scratch("dense.pt"))),
        io.ModelFileError,
        r"is not a 'companion-sparse' file",
        id="load-sparse-dense-file",
    ),
    # ---- io
    pytest.param(
        lambda: io.load(NOWHERE),
        FileNotFoundError,
        r"no model file at /nonexistent-companion-folder/model.pt",
        id="load-missing",
    ),
    pytest.param(
        lambda: io.load(None), TypeError, r"path must be a str or os.PathLike", id="load-path-none"
    ),
    pytest.param(
        lambda: io.load(written(scratch("junk.pt"), b"not an archive")),
        io.ModelFileError,
        r"could not be read as a torch archive",
        id="load-corrupt",
    ),
    pytest.param(
        lambda: io.load(written(scratch("other.pt"), {"weights": torch.ones(2)})),
        io.ModelFileError,
        r"is not a 'companion-model' file",
        id="load-foreign",
    ),
    pytest.param(
        lambda: io.load(written(scratch("v9.pt"), {"format": io.FORMAT, "version": 9})),
        io.ModelFileError,
        r"has format version 9; this companion reads 1",
        id="load-version",
    ),
    pytest.param(
        lambda: io.architecture(seq()),
        TypeError,
        r"model must be a companion MLP or LeNet5",
        id="architecture-plain-sequential",
    ),
    pytest.param(
        lambda: io.save("model", scratch("x.pt")),
        TypeError,
        r"model must be a torch.nn.Module",
        id="save-not-module",
    ),
    pytest.param(
        lambda: io.save(mlp(), NOWHERE),
        FileNotFoundError,
        r"the folder /nonexistent-companion-folder does not exist",
        id="save-missing-folder",
    ),
    pytest.param(
        lambda: io.save(mlp(), 3.5),
        TypeError,
        r"path must be a str or os.PathLike",
        id="save-path-float",
    ),
    # ---- metrics (read-only here)
    pytest.param(
        lambda: metrics.compressed_bytes(mlp(), level=10),
        ValueError,
        r"level must be an int in \[0, 9\]",
        id="zlib-level",
    ),
    pytest.param(
        lambda: speed.flops(mlp(), (4,), batch_size=0),
        ValueError,
        r"batch_size must be an integer >= 1",
        id="flops-batch",
    ),
    pytest.param(
        lambda: speed.latency(mlp(), input_shape=(4,), min_run_time=0),
        ValueError,
        r"min_run_time must be > 0",
        id="latency-min-run-time",
    ),
    pytest.param(
        lambda: speed.latency(mlp(), input_shape=(4,), warmup=-1),
        ValueError,
        r"warmup must be an integer >= 0",
        id="latency-warmup",
    ),
    pytest.param(
        lambda: report.compare_models({}),
        ValueError,
        r"models must be a non-empty mapping",
        id="compare-empty",
    ),
    pytest.param(
        lambda: metrics.sparsity(no_layers()),
        ValueError,
        r"model has no prunable",
        id="sparsity-no-layers",
    ),
    pytest.param(
        lambda: metrics.count_parameters([1, 2]),
        TypeError,
        r"model must be a torch.nn.Module",
        id="count-not-module",
    ),
    # ---- analysis, report, deploy
    pytest.param(
        lambda: analysis.pareto_front([1, 2], [0.5]),
        ValueError,
        r"costs and scores must be non-empty and of equal length",
        id="pareto-lengths",
    ),
    pytest.param(
        lambda: analysis.pareto_front([], []),
        ValueError,
        r"costs and scores must be non-empty",
        id="pareto-empty",
    ),
    pytest.param(
        lambda: analysis.pareto_front([float("nan")], [1.0]),
        ValueError,
        r"costs and scores must not contain NaN",
        id="pareto-nan",
    ),
    pytest.param(
        lambda: analysis.mask_jaccard({"fc1": torch.ones(2)}, {"fc2": torch.ones(2)}),
        ValueError,
        r"mask sets name different layers",
        id="jaccard-layers",
    ),
    pytest.param(
        lambda: analysis.mask_jaccard({"fc1": torch.ones(2)}, {"fc1": torch.ones(3)}),
        ValueError,
        r"masks for 'fc1' differ in shape",
        id="jaccard-shapes",
    ),
    pytest.param(
        lambda: analysis.dead_inputs(torch.zeros(3)),
        ValueError,
        r"first_layer_weight must be 2-D",
        id="dead-inputs-1d",
    ),
    pytest.param(
        lambda: analysis.dead_inputs([[0.0, 1.0]]),
        TypeError,
        r"first_layer_weight must be a torch.Tensor",
        id="dead-inputs-list",
    ),
    pytest.param(
        lambda: analysis.train_step_flops("m", torch.zeros(1, 4), torch.zeros(1)),
        TypeError,
        r"model must be a torch.nn.Module",
        id="train-step-flops",
    ),
    pytest.param(
        lambda: report.headline("", {"accuracy": "97%"}),
        ValueError,
        r"chapter must be a non-empty string",
        id="headline-chapter",
    ),
    pytest.param(
        lambda: report.headline("01", {}),
        ValueError,
        r"results must be a non-empty mapping",
        id="headline-empty",
    ),
    pytest.param(
        lambda: report.headline("01", {"accuracy": 0.97}),
        TypeError,
        r"results must map str to str",
        id="headline-number",
    ),
    pytest.param(
        lambda: deploy.quantize_dynamic_int8(nn.Sequential(nn.Conv2d(1, 1, 3))),
        ValueError,
        r"model has no nn.Linear layer",
        id="quantize-no-linear",
    ),
    pytest.param(
        lambda: deploy.quantize_dynamic_int8("model"),
        TypeError,
        r"model must be a torch.nn.Module",
        id="quantize-not-module",
    ),
    pytest.param(
        lambda: deploy.export_onnx(mlp(), scratch("m.onnx"), [[0.0] * 4]),
        TypeError,
        r"example_input must be a torch.Tensor",
        id="export-input-list",
    ),
    pytest.param(
        lambda: deploy.export_onnx(mlp(), NOWHERE, torch.zeros(1, 4)),
        FileNotFoundError,
        r"the folder /nonexistent-companion-folder does not exist",
        id="export-missing-folder",
    ),
    pytest.param(
        lambda: deploy.onnx_session(NOWHERE),
        FileNotFoundError,
        r"no exported model at",
        id="onnx-session-missing",
    ),
    pytest.param(
        lambda: deploy.onnx_session(written(scratch("junk.onnx"), b"junk")),
        ValueError,
        r"is not an ONNX file",
        id="onnx-session-junk",
    ),
    pytest.param(
        lambda: deploy.check_export(mlp(), NOWHERE, [[0.0] * 4]),
        TypeError,
        r"inputs must be a torch.Tensor",
        id="check-export-inputs",
    ),
    # ---- the top-level shortcuts are the same functions
    pytest.param(
        lambda: cp.sparsity("model"),
        TypeError,
        r"model must be a torch.nn.Module",
        id="shortcut-sparsity",
    ),
    pytest.param(
        lambda: cp.seed_everything(-5),
        ValueError,
        r"seed must be an integer >= 0",
        id="shortcut-seed",
    ),
    # ---- any data set, model outputs, saving any module (issue 12, items 5 and 6)
    pytest.param(
        lambda: train(dataset=[(torch.zeros(4), 0)] * 8),
        TypeError,
        r"dataset must be a torch.utils.data.TensorDataset, a map-style "
        r"torch.utils.data.Dataset or a torch.utils.data.DataLoader, got list",
        id="train-dataset-list",
    ),
    pytest.param(
        lambda: train(dataset=Subset(data(), [])),
        ValueError,
        r"dataset is empty; it must hold at least one example",
        id="train-empty-subset",
    ),
    pytest.param(
        lambda: train(dataset=DataLoader(Records(), batch_size=4)),
        TypeError,
        r"dataset must yield \(inputs, targets, \.\.\.\) tuples or tensors, got a batch of type dict",
        id="train-dict-batches",
    ),
    pytest.param(
        lambda: train(dataset=Subset(TensorDataset(torch.randn(8, 4)), range(8))),
        ValueError,
        r"dataset must hold \(inputs, targets\) tensors, got batches of 1 item",
        id="train-subset-no-targets",
    ),
    pytest.param(
        lambda: train(dataset=Subset(TensorDataset(torch.randn(8, 4), torch.rand(8)), range(8))),
        TypeError,
        r"dataset targets must hold integer class indices \(e.g. torch.int64\), got torch.float32",
        id="train-subset-float-targets",
    ),
    pytest.param(
        lambda: train(dataset=Subset(data(classes=5), range(8))),
        ValueError,
        r"dataset targets must be class indices in \[0, 1\]",
        id="train-subset-labels-out-of-range",
    ),
    pytest.param(
        lambda: train(output="logits"),
        TypeError,
        r"output must be callable or None",
        id="train-output-not-callable",
    ),
    pytest.param(
        lambda: train(model=Pair()),
        TypeError,
        r"model returned a tuple, not a tensor of shape \[batch, classes\]; pass output=",
        id="train-model-returns-tuple",
    ),
    pytest.param(
        lambda: train(model=Pair(), output=lambda out: out[1]),
        ValueError,
        r"model output must have shape \[batch, classes\] = \[4, classes\].*got \(4,\)",
        id="train-output-wrong-shape",
    ),
    pytest.param(
        lambda: training.evaluate(Pair(), data()),
        TypeError,
        r"model returned a tuple.*pass output=",
        id="evaluate-model-returns-tuple",
    ),
    pytest.param(
        lambda: training.evaluate(mlp(), data(), loss_fn=3),
        TypeError,
        r"loss_fn must be callable or None",
        id="evaluate-loss-fn",
    ),
    pytest.param(
        lambda: training.predict(Pair(), torch.randn(3, 4), output=0),
        TypeError,
        r"output must be callable or None",
        id="predict-output",
    ),
    pytest.param(
        lambda: distill(dataset=Subset(data(), range(8)), teacher_logits=logits(8, 2)),
        ValueError,
        r"teacher_logits needs a TensorDataset",
        id="distill-teacher-logits-subset",
    ),
    pytest.param(
        lambda: distill(teacher_output="logits"),
        TypeError,
        r"teacher_output must be callable or None",
        id="distill-teacher-output",
    ),
    pytest.param(
        lambda: distill(teacher=Pair(), dataset=Subset(data(), range(8))),
        TypeError,
        r"teacher returned a tuple.*pass teacher_output=",
        id="distill-teacher-returns-tuple",
    ),
    pytest.param(
        lambda: distill(teacher=mlp().to("meta"), dataset=Subset(data(), range(8))),
        ValueError,
        r"teacher is on meta but student is on cpu",
        id="distill-teacher-device",
    ),
    pytest.param(
        lambda: io.load(io.save(seq(), scratch("seq.pt"))),
        ValueError,
        r"Sequential, which is not one of the book's architectures.*model=Sequential\(\.\.\.\)",
        id="load-user-model-without-instance",
    ),
    pytest.param(
        lambda: io.load(io.save(seq(), scratch("seq.pt")), model=mlp()),
        ValueError,
        r"model does not match .*nothing was loaded\. missing keys .*fc1\.weight.*"
        r"unexpected keys .*0\.weight",
        id="load-instance-mismatch",
    ),
    pytest.param(
        lambda: io.load(io.save(seq(), scratch("seq.pt")), model="Sequential"),
        TypeError,
        r"model must be a torch.nn.Module or None, got str",
        id="load-instance-type",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), CASES)
def test_bad_input_fails_early_with_a_message_naming_the_argument(call, error, message):
    # ``match`` is ``re.search`` on the message; an error of another type (an IndexError from
    # torch where the row asks for a ValueError) is not caught and fails the row.
    with pytest.raises(error, match=message):
        result = call()
        if hasattr(result, "__next__"):  # a lazy generator must not hide the error
            pytest.fail("the error was deferred to the first next() of a generator")


def test_the_table_is_broad():
    """At least 45 distinct rows, and every row has a unique id."""
    ids = [case.id for case in CASES]
    assert len(ids) >= 45
    assert len(set(ids)) == len(ids)


# --------------------------------------------------------------------------- output layers, exclude, scores


class _Untraceable(nn.Module):
    """torch.fx cannot trace it (control flow on a tensor value) and it declares no input shape."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.body = nn.Linear(3, 2), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.head(h if h.sum() > 0 else -h)


OUTPUT_LAYER_CASES = [
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 0.5, structured=True, exclude=["fc9"]),
        ValueError,
        r"exclude names 'fc9', which is not a prunable layer",
        id="magnitude-exclude-unknown",
    ),
    pytest.param(
        lambda: pruning.random_masks(mlp(), 0.5, exclude="fc1"),
        TypeError,
        r"exclude must be a list of layer names",
        id="random-exclude-str",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 0.5, exclude=[1]),
        TypeError,
        r"exclude must hold layer names",
        id="magnitude-exclude-int",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(mlp(), 0.5, exclude=["fc1", "fc2"]),
        ValueError,
        r"exclude=\['fc1', 'fc2'\] leaves no layer to prune",
        id="magnitude-exclude-everything",
    ),
    pytest.param(
        lambda: pruning.magnitude_masks(_Untraceable(), 0.5, structured=True),
        ValueError,
        r"cannot find the output layers.*pass exclude=",
        id="magnitude-structured-untraceable",
    ),
    pytest.param(
        lambda: pruning.masks_from_scores(mlp(), {"fc1": torch.ones(4, 3)}, 0.5),
        ValueError,
        r"scores\['fc1'\] has shape \(4, 3\), but the weight of 'fc1' has shape \(3, 4\)",
        id="scores-shape",
    ),
    pytest.param(
        lambda: pruning.masks_from_scores(mlp(), {"fc1": torch.ones(3, 4)}, 1.5),
        ValueError,
        r"amount must be in \[0.0, 1.0\]",
        id="scores-amount",
    ),
    pytest.param(
        lambda: pruning.masks_from_scores(mlp(), torch.ones(3, 4), 0.5),
        TypeError,
        r"scores must be a dict",
        id="scores-not-dict",
    ),
    pytest.param(
        lambda: pruning.iterative_prune(
            mlp(), lambda m: 1.0, step=0.5, target=0.5, tolerance=0.0, exclude=["fc3"]
        ),
        ValueError,
        r"exclude names 'fc3'",
        id="iterative-exclude-unknown",
    ),
    pytest.param(
        lambda: soft.SoftPruner(mlp(), 0.5, structured=True, exclude=["fc1"]),
        ValueError,
        r"structured pruning needs a hidden layer",
        id="soft-pruner-exclude-all-hidden",
    ),
    pytest.param(
        lambda: penalties.group_soft_threshold_(mlp(), 0.1, exclude=["fc9"]),
        ValueError,
        r"exclude names 'fc9'",
        id="group-threshold-exclude-unknown",
    ),
    pytest.param(
        lambda: pruning.apply_masks(mlp(), {"fc1": torch.ones(3, 4)}, structured=1),
        TypeError,
        r"structured must be a bool",
        id="apply-masks-structured-int",
    ),
    pytest.param(
        lambda: cp.masks.output_layers(_Untraceable(), example_input=[[0.0] * 4]),
        TypeError,
        r"example_input must be a torch.Tensor",
        id="output-layers-example-list",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), OUTPUT_LAYER_CASES)
def test_output_layer_and_exclude_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
