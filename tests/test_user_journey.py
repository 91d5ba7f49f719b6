"""Issue 12 as a new user meets it: a model of one's own, end to end, with nothing silently wrong.

A CNN that defines its classifier before its encoder, with BatchNorm, trained on a ``Subset`` through
a ``DataLoader``; measured; structurally pruned; shrunk; fine-tuned; saved and loaded into a fresh
instance. Each step's own tests live beside its module; this file checks that they compose.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import companion as cp
from companion import io, masks, pruning, speed, surgery


class ClassifierFirst(nn.Module):
    """A user's model: the head is defined first, so definition order says nothing about outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(16, 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


def data(n: int = 96) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 12, 12, generator=generator)
    return TensorDataset(x, (x[:, 0].mean((1, 2)) * 8).long().clamp(0, 3))


def test_a_users_cnn_from_training_to_a_saved_shrunk_model(tmp_path):
    torch.manual_seed(0)
    model = ClassifierFirst()
    dataset = data()
    loader = DataLoader(Subset(dataset, range(64)), batch_size=16, shuffle=False)
    cp.train(model, loader, epochs=2, lr=0.05, progress=False)
    assert model.training  # train leaves it in train mode, as before

    # Measuring keeps BatchNorm statistics and needs the real input shape (no MNIST default).
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = dataset.tensors[0][:8]
    dense_flops = speed.flops(model, example_input=x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())

    # The output layer comes from the graph: all 4 class rows survive structured pruning.
    assert masks.output_layers(model) == ["classifier"]
    structured = pruning.magnitude_masks(model, 0.5, structured=True)
    assert "classifier" not in structured
    masks.apply_masks(model, structured, structured=True)
    model.eval()
    # A pruned channel is really dead: after its BatchNorm and ReLU it outputs exactly zero.
    dead = structured["encoder.0"].flatten(1).sum(1) == 0
    assert dead.any()
    activations = model.encoder[:3](x)
    assert torch.equal(activations[:, dead], torch.zeros_like(activations[:, dead]))

    small = surgery.shrink(model, example_inputs=x)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    assert cp.metrics.count_parameters(small) < cp.metrics.count_parameters(model)
    assert speed.flops(small, example_input=x) < dense_flops
    assert pruning.is_pruned(model)  # shrink worked on a copy

    # Fine-tune the shrunk model on a map-style dataset, then save and restore it into an instance.
    cp.train(small, Subset(dataset, range(64)), epochs=1, lr=0.01, batch_size=16, progress=False)
    small.eval()
    path = io.save(small, tmp_path / "small.pt")
    restored = io.load(path, model=surgery.shrink(model, example_inputs=x))
    assert torch.equal(restored(x), small(x))
    accuracy = cp.evaluate(small, Subset(dataset, range(64, 96)))["accuracy"]
    assert 0.0 <= accuracy <= 1.0
