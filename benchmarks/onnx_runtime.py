"""Dense, masked, shrunk and int8 LeNet-300-100 in ONNX Runtime next to eager PyTorch, batch 1 and 256.

Trains LeNet-300-100 briefly, prunes 75% of the neurons of each hidden layer
(masks, L2 norm of the incoming weights), fine-tunes, and removes the dead
neurons with :func:`companion.surgery.shrink`, as ``shrink_latency.py`` does.
Then every model is exported with :func:`companion.deploy.export_onnx` (the
masked one with its masks folded in: zeros in dense matrices), the shrunk file
is quantised with ONNX Runtime (dynamic, and static calibrated on 1,000
training images), and the int8 model is also built with torchao
(:func:`companion.deploy.quantize_dynamic_int8`) for eager PyTorch. Each file
is checked against its float eager model on the whole test set (agreement,
largest logit difference).

Latency is the median of single calls, both runtimes on the same number of
threads (``--threads``, default 1): ONNX Runtime's ``intra_op_num_threads`` and
``torch.set_num_threads``. At batch 1 eager PyTorch's per-call overhead hides
much of what shrinking saves; ONNX Runtime's smaller overhead shows it.

Run::

    make data && .venv/bin/python benchmarks/onnx_runtime.py

This is a measurement, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import companion as cp
from companion import deploy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the dense model")
    parser.add_argument(
        "--amount", type=float, default=0.75, help="fraction of hidden neurons pruned"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes")
    parser.add_argument(
        "--min-run-time", type=float, default=1.0, help="seconds per latency figure"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cp.seed_everything(0)
    train_set, test_set = cp.load_mnist()
    train = dict(momentum=0.9, batch_size=128, progress=False)
    dense = cp.lenet_300_100()
    cp.train(dense, train_set, epochs=args.epochs, lr=0.05, **train)
    masked = cp.utils.clone_model(dense)
    cp.pruning.apply_masks(
        masked, cp.pruning.magnitude_masks(masked, args.amount, structured=True, norm=2)
    )
    cp.train(masked, train_set, epochs=1, lr=0.01, **train)
    shrunk = cp.surgery.shrink(cp.pruning.make_permanent(cp.utils.clone_model(masked)))
    eager = {
        "dense": dense.eval(),
        "masked": masked.eval(),
        "shrunk": shrunk.eval(),
        "int8 (torchao dynamic)": deploy.quantize_dynamic_int8(shrunk),
    }
    x_test = test_set.tensors[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s); shrunk sizes {shrunk.sizes}")

    with tempfile.TemporaryDirectory() as folder:
        files = {
            name: deploy.export_onnx(model, Path(folder) / f"{name}.onnx", x_test[:2])
            for name, model in eager.items()
            if not deploy.is_quantized(model)
        }
        files["int8 (ORT dynamic)"] = deploy.quantize_onnx(
            files["shrunk"], Path(folder) / "int8_dynamic.onnx"
        )
        files["int8 (ORT static)"] = deploy.quantize_onnx(
            files["shrunk"], Path(folder) / "int8_static.onnx", train_set.tensors[0][:1000]
        )
        float_of = {name: eager[name] for name in ("dense", "masked", "shrunk")}
        float_of.update({name: shrunk for name in files if name.startswith("int8")})
        print("\nONNX files checked against the float eager model on the 10,000 test images")
        for name, path in files.items():
            check = deploy.check_export(float_of[name], path, x_test)
            accuracy = deploy.evaluate_onnx(path, test_set)
            print(
                f"  {name:20s} {path.stat().st_size / 1024:7.1f} KiB  accuracy {accuracy:.2%}  "
                f"agreement {check['agreement']:.2%}  max logit diff {check['max_abs_diff']:.2e}"
            )

        rows = []
        for name in list(eager) + [n for n in files if n not in eager]:
            row = {"model": name}
            for batch in (1, 256):
                if name in eager:
                    seconds = cp.speed.latency(
                        eager[name],
                        batch,
                        num_threads=args.threads,
                        min_run_time=args.min_run_time,
                    )
                    row[f"eager b{batch} (us)"] = 1e6 * seconds
                if name in files:
                    seconds = deploy.onnx_latency(
                        files[name], batch, threads=args.threads, min_run_time=args.min_run_time
                    )
                    row[f"ORT b{batch} (us)"] = 1e6 * seconds
            rows.append(row)
    columns = ["eager b1 (us)", "ORT b1 (us)", "eager b256 (us)", "ORT b256 (us)"]
    print("\nmedian latency per call (microseconds)")
    print(f"  {'model':24s}" + "".join(f"{c:>17s}" for c in columns))
    for row in rows:
        cells = "".join(f"{row[c]:17.1f}" if c in row else f"{'-':>17s}" for c in columns)
        print(f"  {row['model']:24s}{cells}")
    by_name = {r["model"]: r for r in rows}
    for column in columns:
        ratio = by_name["dense"][column] / by_name["shrunk"][column]
        print(f"dense / shrunk, {column[:-5]}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
