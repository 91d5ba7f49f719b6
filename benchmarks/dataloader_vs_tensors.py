"""One epoch of the article's MNIST set-up: ``DataLoader(ToTensor)`` versus tensors in memory.

The article trains its 784-128-10 network with SGD (lr 0.01, batch 64) on
``torchvision.datasets.MNIST(transform=ToTensor())`` through a ``DataLoader``: every
sample is a PIL image converted to a tensor by Python code, then collated. The
companion decodes the IDX files once into a tensor and slices batches out of it
(:func:`companion.data.iterate_batches`). Same model, same optimiser, same batch
size, same machine; only the input pipeline differs.

Run::

    make data && .venv/bin/python benchmarks/dataloader_vs_tensors.py

This is a measurement, not a test: it prints times and their ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from companion.data import default_root, iterate_batches, load_mnist
from companion.models import article_mlp
from companion.utils import seed_everything


def epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer) -> None:
    """The article's training loop, as written (one epoch), over either input pipeline."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    for images, labels in batches:
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per loop (best kept)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(0)

    root = default_root()  # torchvision reads <root>/MNIST/raw
    mnist = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(mnist, batch_size=64, shuffle=True)
    train_set, _ = load_mnist()
    generator = torch.Generator().manual_seed(0)

    model = article_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    t_loader = best_of(lambda: epoch(model, loader, optimizer), args.repeats)

    model = article_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    t_tensor = best_of(
        lambda: epoch(
            model, iterate_batches(train_set, 64, shuffle=True, generator=generator), optimizer
        ),
        args.repeats,
    )

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64, 60,000 images")
    print(f"article loop  (DataLoader + ToTensor): {t_loader:7.2f} s / epoch")
    print(f"companion loop (tensors in memory)    : {t_tensor:7.2f} s / epoch")
    print(f"speed-up: {t_loader / t_tensor:.1f}x")


if __name__ == "__main__":
    main()
