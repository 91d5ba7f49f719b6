"""Structured pruning of LeNet-300-100 made physical: parameters and CPU latency, dense vs shrunk.

Trains LeNet-300-100 briefly, prunes 75% of the neurons of each hidden layer by
the L2 norm of their incoming weights (masks), fine-tunes, folds the masks in
and removes the dead neurons with :func:`companion.surgery.shrink`. Prints
parameters, test accuracy and the median latency of one forward pass
(``torch.utils.benchmark``, after warm-up) for the dense, the masked and the
shrunk model at several batch sizes.

Run::

    make data && .venv/bin/python benchmarks/shrink_latency.py

This is a measurement, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse

import torch

import companion as cp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of the dense model")
    parser.add_argument(
        "--amount", type=float, default=0.75, help="fraction of hidden neurons pruned"
    )
    parser.add_argument(
        "--min-run-time", type=float, default=1.0, help="seconds per latency figure"
    )
    args = parser.parse_args()

    cp.seed_everything(0)
    train_set, test_set = cp.load_mnist()
    dense = cp.lenet_300_100()
    cp.train(
        dense, train_set, epochs=args.epochs, lr=0.05, momentum=0.9, batch_size=128, progress=False
    )

    masked = cp.utils.clone_model(dense)
    masks = cp.pruning.magnitude_masks(masked, args.amount, structured=True, norm=2)
    cp.pruning.apply_masks(masked, masks)
    cp.train(masked, train_set, epochs=2, lr=0.01, momentum=0.9, batch_size=128, progress=False)
    shrunk = cp.surgery.shrink(masked)

    models = {"dense": dense, "masked": masked, "shrunk": shrunk}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shrunk sizes {shrunk.sizes}"
    )
    for name, model in models.items():
        params = cp.metrics.count_parameters(model)
        accuracy = cp.evaluate(model, test_set)["accuracy"]
        print(f"{name:7s} parameters {params:8,d}   test accuracy {accuracy:.2%}")
    print(
        f"parameters: dense / shrunk = {cp.metrics.count_parameters(dense) / cp.metrics.count_parameters(shrunk):.2f}x"
    )
    print("median latency per forward pass (ms); speedup = dense / shrunk")
    print(cp.speed.latency_by_batch(models, min_run_time=args.min_run_time))


if __name__ == "__main__":
    main()
