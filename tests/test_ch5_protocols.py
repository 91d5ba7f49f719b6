"""Chapter 5's multi-seed protocols and stability statistics, on tiny synthetic data."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from companion import analysis, pruning
from companion.models import MLP
from companion.utils import make_generator, seed_everything

FAST = dict(lr=0.1, momentum=0.9, batch_size=32, progress=False)


def tiny_data(n: int = 256, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.flatten(1)[:, :8].sum(1) > x.flatten(1)[:, 8:].sum(1)).long()
    return TensorDataset(x, y)


def tiny_mlp(seed: int = 0) -> MLP:
    seed_everything(seed)
    return MLP((16, 12, 2))


def test_csr_bytes_charges_nonzeros_only():
    dense = nn.Sequential(nn.Linear(200, 200))
    sparse = nn.Sequential(nn.Linear(200, 200))
    pruning.apply_masks(sparse, pruning.magnitude_masks(sparse, 0.9))
    assert analysis.csr_bytes(sparse) < analysis.csr_bytes(dense) / 3
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        analysis.csr_bytes("model")


def test_kept_per_input_and_shuffled_mask_keep_counts():
    mask = (torch.rand(30, 20, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    counts = analysis.kept_per_input(mask)
    assert counts.shape == (20,) and counts.sum() == mask.sum()
    shuffled = analysis.shuffled_mask(mask, make_generator(3))
    assert shuffled.shape == mask.shape and shuffled.sum() == mask.sum()
    assert not torch.equal(shuffled, mask)
    assert torch.equal(shuffled, analysis.shuffled_mask(mask, make_generator(3)))
    with pytest.raises(ValueError, match="mask must be 2-D"):
        analysis.kept_per_input(torch.ones(3))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        analysis.shuffled_mask(mask, 3)


def test_leave_one_out_correlation_is_one_for_a_shared_pattern_and_near_zero_by_chance():
    pattern = torch.arange(50.0)
    same = torch.stack([pattern * (1 + i) + 0.01 * i for i in range(4)])
    assert all(r == pytest.approx(1.0) for r in analysis.leave_one_out_correlation(same))
    noise = torch.rand(5, 5000, generator=torch.Generator().manual_seed(0))
    assert all(abs(r) < 0.1 for r in analysis.leave_one_out_correlation(noise))
    with pytest.raises(ValueError, match="at least 2 rows"):
        analysis.leave_one_out_correlation(torch.ones(1, 5))


def test_prune_and_finetune_leaves_the_model_and_keeps_the_masks():
    data = tiny_data()
    model = tiny_mlp()
    before = model.fc1.weight.detach().clone()
    pruned, masks, history = analysis.prune_and_finetune(
        model, data, amount=0.5, epochs=2, scope="global", **FAST
    )
    assert torch.equal(model.fc1.weight, before)  # the original is untouched
    assert len(history["epoch"]) == 2
    for name, mask in masks.items():
        assert torch.equal(getattr(pruned, name).weight_mask, mask)
        assert (getattr(pruned, name).weight[mask == 0] == 0).all()
    random_a = analysis.prune_and_finetune(
        model, data, amount=0.5, epochs=0, criterion="random", generator=make_generator(0)
    )[1]
    random_b = analysis.prune_and_finetune(
        model, data, amount=0.5, epochs=0, criterion="random", generator=make_generator(0)
    )[1]
    assert all(torch.equal(random_a[k], random_b[k]) for k in random_a)
    with pytest.raises(ValueError, match="criterion must be"):
        analysis.prune_and_finetune(model, data, amount=0.5, epochs=0, criterion="best")
    with pytest.raises(ValueError, match="amount"):
        analysis.prune_and_finetune(model, data, amount=1.5, epochs=0)


def test_student_pipeline_shrinks_and_quantises_with_and_without_a_teacher():
    data = tiny_data()
    teacher = tiny_mlp(1)
    results = {}
    for arm, t in (("distilled", teacher), ("alone", None)):
        student = tiny_mlp(0)
        results[arm] = analysis.student_pipeline(
            student, data, teacher=t, epochs=1, finetune_epochs=1, amount=0.5, **FAST
        )
        out = results[arm]
        assert out["shrunk"].sizes == (16, 6, 2)
        assert pruning.is_pruned(out["masked"]) and not pruning.is_pruned(out["student"])
        x = data.tensors[0][:64]
        with torch.no_grad():
            assert torch.allclose(out["shrunk"](x), out["masked"](x), atol=1e-5)
            assert (out["int8"](x) - out["shrunk"](x)).abs().max() < 0.1
        assert len(out["train_history"]["epoch"]) == 1
        assert len(out["finetune_history"]["epoch"]) == 1
    # same seed, different loss: the arms differ after training
    assert not torch.equal(
        results["distilled"]["student"].fc1.weight, results["alone"]["student"].fc1.weight
    )


def test_student_pipeline_exports_float_and_int8_files_checked_against_the_float_model(tmp_path):
    from companion import deploy

    data = tiny_data()
    out = analysis.student_pipeline(
        tiny_mlp(0), data, teacher=None, epochs=1, finetune_epochs=0, export_to=tmp_path, **FAST
    )
    assert set(out["onnx"]) == {"shrunk", "int8 dynamic", "int8 static"}
    assert {p.name for p in tmp_path.iterdir()} == {
        "shrunk.onnx",
        "int8_dynamic.onnx",
        "int8_static.onnx",
    }
    x = data.tensors[0]
    exact = deploy.check_export(out["shrunk"], out["onnx"]["shrunk"], x)
    assert exact["agreement"] == 1.0 and exact["max_abs_diff"] < 1e-5
    for kind in ("int8 dynamic", "int8 static"):
        file = out["onnx"][kind]
        assert file.stat().st_size < out["onnx"]["shrunk"].stat().st_size
        rounded = deploy.check_export(out["shrunk"], file, x)
        assert 0 < rounded["max_abs_diff"] < 0.2
    with pytest.raises(FileNotFoundError, match="export_to must be an existing folder"):
        analysis.student_pipeline(
            tiny_mlp(0), data, teacher=None, epochs=1, finetune_epochs=0, export_to=tmp_path / "no"
        )


def test_quantization_variants_share_the_budget_and_leave_the_model_alone():
    from companion import deploy

    data = tiny_data()
    model = tiny_mlp(0)
    before = model.fc1.weight.detach().clone()
    variants = analysis.quantization_variants(model, data, epochs=1, seed=0, **FAST)
    assert list(variants) == [
        "float",
        "dynamic int8",
        "weight-only int8",
        "fine-tuned + dynamic int8",
        "QAT + int8",
    ]
    assert torch.equal(model.fc1.weight, before)
    assert not deploy.is_quantized(variants["float"])
    assert all(deploy.is_quantized(m) for k, m in variants.items() if k != "float")
    x = data.tensors[0]
    with torch.no_grad():
        reference = variants["float"](x)
        untrained = (variants["dynamic int8"](x) - reference).abs().max()
        assert untrained < 0.1  # rounding only
        # the two fine-tuned variants moved away from the reference, by training
        for name in ("fine-tuned + dynamic int8", "QAT + int8"):
            assert (variants[name](x) - reference).abs().max() > untrained
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        analysis.quantization_variants(nn.Sequential(nn.Conv2d(1, 1, 3)), data, epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        analysis.quantization_variants(model, data, epochs=0)


def test_student_pipeline_rejects_bad_arguments():
    data = tiny_data(64)
    with pytest.raises(TypeError, match="student must be a companion.models.MLP"):
        analysis.student_pipeline(nn.Linear(16, 2), data, teacher=None, epochs=1, finetune_epochs=0)
    with pytest.raises(TypeError, match="teacher must be None"):
        analysis.student_pipeline(tiny_mlp(), data, teacher="t", epochs=1, finetune_epochs=0)
    with pytest.raises(ValueError, match="epochs"):
        analysis.student_pipeline(tiny_mlp(), data, teacher=None, epochs=0, finetune_epochs=0)
    with pytest.raises(ValueError, match="amount"):
        analysis.student_pipeline(
            tiny_mlp(), data, teacher=None, epochs=1, finetune_epochs=0, amount=1.0
        )
