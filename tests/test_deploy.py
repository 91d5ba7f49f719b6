"""Dynamic int8 quantisation and TorchScript export round trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from companion.convnets import LeNet5
from companion.deploy import check_export, export_torchscript, quantize_dynamic_int8
from companion.metrics import model_bytes
from companion.models import lenet_300_100


def test_quantized_model_is_smaller_and_close():
    torch.manual_seed(0)
    model = lenet_300_100().eval()
    quantized = quantize_dynamic_int8(model)
    assert model_bytes(quantized) < model_bytes(model) / 3
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        diff = (quantized(x) - model(x)).abs().max().item()
    assert diff < 0.05  # int8 weights: small but nonzero error
    assert diff > 0
    assert (
        isinstance(model.fc1, nn.Linear) and model.fc1.weight.dtype == torch.float32
    )  # original untouched


def test_quantize_folds_masks_on_a_copy():
    model = lenet_300_100()
    prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    quantized = quantize_dynamic_int8(model)
    assert prune.is_pruned(model)
    weight = quantized.fc1.weight().dequantize()
    assert int((weight == 0).sum()) >= 300 * 784 // 2


@pytest.mark.parametrize("make", [lenet_300_100, LeNet5])
def test_export_round_trip_gives_identical_predictions(tmp_path, make):
    torch.manual_seed(0)
    model = make().eval()
    path = export_torchscript(model, tmp_path / "model.pt", torch.rand(2, 1, 28, 28))
    assert path.is_file()
    x = torch.rand(50, 1, 28, 28)
    result = check_export(model, path, x)
    assert result["max_abs_diff"] == 0.0
    assert result["agreement"] == 1.0


def test_export_of_quantized_model_is_compared_with_the_float_reference(tmp_path):
    torch.manual_seed(0)
    model = lenet_300_100().eval()
    quantized = quantize_dynamic_int8(model)
    path = export_torchscript(quantized, tmp_path / "q.pt", torch.rand(2, 1, 28, 28))
    x = torch.rand(200, 1, 28, 28)
    # against the model that was exported: the round trip alone, identical by construction
    assert check_export(quantized, path, x) == {"max_abs_diff": 0.0, "agreement": 1.0}
    # against the float reference: int8 rounding shows up in the logits
    vs_float = check_export(model, path, x)
    with torch.no_grad():
        expected_diff = (quantized(x) - model(x)).abs().max().item()
        expected_agreement = (quantized(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert vs_float["max_abs_diff"] == pytest.approx(expected_diff)
    assert 0 < vs_float["max_abs_diff"] < 0.05
    assert vs_float["agreement"] == pytest.approx(expected_agreement)


def test_check_export_detects_a_different_reference(tmp_path):
    torch.manual_seed(0)
    exported, other = lenet_300_100().eval(), lenet_300_100().eval()
    path = export_torchscript(exported, tmp_path / "m.pt", torch.rand(2, 1, 28, 28))
    result = check_export(other, path, torch.rand(100, 1, 28, 28))
    assert result["max_abs_diff"] > 0
    assert result["agreement"] < 1.0


def test_failed_export_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_torchscript(lenet_300_100(), path, torch.rand(1, 1, 28, 28))
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
