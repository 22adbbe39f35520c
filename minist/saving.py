"""Write a model folder in sentence-transformers' layout, all or nothing, keeping what else the folder holds.

The layout: ``modules.json`` lists the steps and their subfolders (``""`` for the transformer, then
``1_Pooling``, ``2_Dense``, ``3_Normalize``, ...), ``config_sentence_transformers.json`` records versions and
the similarity function, and each step writes its own files (see its ``save``).

``save_folder`` never leaves the path without a loadable model, old or new, and never loses a file it did
not write:

1. Before anything changes: a symlink is followed to its real folder (the link stays a link), a path the
   process may not write is a PermissionError, and leftovers of earlier saves that crashed are cleaned up.
2. The new model is written into a fresh hidden folder beside the target, ``.NAME.PID.RANDOM.partial``;
   the target's files that are not a model's (your README.md, notes, an ``eval/`` folder) are hard-linked
   into it (copied where links are not possible), so they are in both.
3. One atomic exchange of the two folders (Linux's ``renameat2(RENAME_EXCHANGE)``) puts the new model in
   place: at every instant the path holds the old folder or the new one, each complete.
4. Anything created in the old folder meanwhile is moved over, then the old folder is removed.

A crash leaves at most a hidden leftover beside the target, which the next save removes. Where the system
has no atomic exchange (macOS, Windows, some network file systems), step 3 is two renames: a crash between
them leaves the old model in ``.NAME.PID.RANDOM.old``, and the next save puts it back first.
Folders get 0755 and files 0644 (under the usual umask 022), as ``mkdir`` and ``open`` make them.
Left out: sharded weights and model cards.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from minist.dense import Dense
from minist.loading import quiet_progress_bars
from minist.normalize import Normalize
from minist.transformer import Transformer

# The files a model folder may hold (besides the step subfolders that its modules.json lists). README.md is
# not among them: minist writes none, so a README there is yours and is kept.
MODEL_FILES = {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "config.json",
               "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
               "added_tokens.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
               "generation_config.json", "chat_template.jinja"}
# The sentence-transformers class that modules.json names for each step minist writes.
ST_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
STEP_FOLDER = re.compile(r"\d+_[A-Za-z]\w*")  # 1_Pooling, 2_Dense: the names sentence-transformers gives steps


def model_entries(folder: Path) -> set[str]:
    """The names in ``folder`` that belong to a saved model (so that saving over it may replace them)."""
    steps = set()
    try:
        entries = json.loads((folder / "modules.json").read_text())
        steps = {entry["path"].split("/")[0] for entry in entries}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # none, or damaged: only the known files
        pass
    return (MODEL_FILES | steps) - {""}


def is_model(folder: Path) -> bool:
    return (folder / "modules.json").is_file() or (folder / "config.json").is_file()


def write_model(model, folder: Path, safe_serialization: bool = True) -> None:
    """Write ``model`` (a ``SentenceTransformer``) into the empty ``folder``: each step's files in its
    subfolder, ``config_sentence_transformers.json``, then ``modules.json``. ``save_folder`` makes it atomic."""
    steps = []
    for idx, step in enumerate(model):
        kind = type(step).__name__
        path = "" if idx == 0 else f"{idx}_{kind}"
        (folder / path).mkdir(exist_ok=True)
        if isinstance(step, Transformer):
            write_transformer(step, folder / path)
        elif isinstance(step, Dense):
            step.save(folder / path, safe_serialization)
        elif not isinstance(step, Normalize):
            step.save(folder / path)
        steps.append((path, ST_TYPES[kind]))
    config = {  # the version from the installed metadata: importing the package would import this module again
        "__version__": {"minist": importlib.metadata.version("minist"), "transformers": transformers.__version__,
                        "pytorch": torch.__version__},
        "prompts": model.prompts,
        "default_prompt_name": model.default_prompt_name,
        "similarity_fn_name": model.similarity_fn_name,
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2))
    write_modules_json(folder, steps)


def write_transformer(step: Transformer, folder: Path) -> None:
    """The transformer's files, as transformers writes them, and ``sentence_bert_config.json`` beside them."""
    with quiet_progress_bars():
        step.auto_model.save_pretrained(folder, safe_serialization=True)
        step.tokenizer.save_pretrained(folder)
    options = {"max_seq_length": step.max_seq_length, "do_lower_case": step.do_lower_case}
    (folder / "sentence_bert_config.json").write_text(json.dumps(options, indent=2))


def write_modules_json(folder: Path, steps: list[tuple[str, str]]) -> None:
    """``steps``: (subfolder, sentence-transformers type) per step, in order. Written last: it marks a model."""
    entries = [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(steps)]
    (folder / "modules.json").write_text(json.dumps(entries, indent=2))


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Python's ``os`` has no such call, so it is reached through the C library. Returns False where the system
    or the file system has none; raises OSError for real failures.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # no RENAME_EXCHANGE here
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def save_folder(write: Callable[[Path], None], target: str | Path) -> None:
    """Call ``write(folder)`` on a fresh hidden folder, then put that folder in place at ``target``."""
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))  # save into the real folder; the link keeps pointing at it
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file; a model is saved as a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    for folder in (target.parent, target):
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"Cannot save to {target}: this process may not write {folder}.")
    clean_leftovers(target)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".partial", dir=target.parent))
    old_model = model_entries(target) if is_model(target) else set()
    try:
        theirs = [entry for entry in target.iterdir() if entry.name not in old_model] if target.exists() else []
        write(partial)
        _usual_permissions(partial)
        clash = sorted(entry.name for entry in theirs if os.path.lexists(partial / entry.name))
        if clash:
            raise FileExistsError(f"{target} holds {', '.join(clash)}, which the model would overwrite but which "
                                  "are not a saved model's files. Move them, or save to another folder.")
        for entry in theirs:
            _link_tree(entry, partial / entry.name)
        if not target.exists():
            os.rename(partial, target)
            return
        if not exchange(partial, target):
            _swap_by_renames(partial, target)
            partial = partial.with_suffix(".old")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _move_new_entries(partial, target, old_model)  # ``partial`` now holds the old folder
    shutil.rmtree(partial)


def _usual_permissions(folder: Path) -> None:
    """Folders 0777 and files 0666 less the umask (0755 and 0644 as a rule), as a plain ``mkdir`` and ``open``
    give. ``mkdtemp`` makes the folder private (0700), and transformers writes weights through a private
    temporary file (0600): a model that others on the machine cannot read would be a surprise."""
    umask = os.umask(0o022)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _swap_by_renames(partial: Path, target: Path) -> None:
    old = partial.with_suffix(".old")
    os.rename(target, old)
    try:
        os.rename(partial, target)
    except BaseException:
        os.rename(old, target)
        raise


def _link_tree(source: Path, destination: Path) -> None:
    """Hard-link a file (or every file of a folder) at ``destination``; copy where links are not possible."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
    elif source.is_dir():
        shutil.copytree(source, destination, symlinks=True, copy_function=link_or_copy)
    else:
        link_or_copy(str(source), str(destination))


def _move_new_entries(old: Path, target: Path, model: set[str]) -> None:
    """Move into ``target`` what ``old`` holds and ``target`` lacks, other than the model's own entries."""
    for entry in old.iterdir():
        if entry.name in model:
            continue
        if not os.path.lexists(target / entry.name):
            os.rename(entry, target / entry.name)
        elif entry.is_dir() and not entry.is_symlink() and (target / entry.name).is_dir():
            _move_new_entries(entry, target / entry.name, set())


def clean_leftovers(target: Path) -> None:
    """Finish what crashed saves of ``target`` left beside it (those of processes that no longer run).

    A ``.old`` folder while ``target`` is missing is the old model, put aside by two-rename saving: it goes
    back. Any other leftover is removed, after the entries that only it holds, other than a model's own,
    are moved into ``target``.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[^.]+\.(partial|old)")
    leftovers = []
    for entry in target.parent.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_dir() and not _running(int(match.group(1))):
            leftovers.append((match.group(2), entry))
    for kind, entry in sorted(leftovers, key=lambda item: item[1].name):
        try:
            if kind == "old" and not target.exists():
                os.rename(entry, target)
                continue
            if target.is_dir():
                model = model_entries(entry) | {e.name for e in entry.iterdir() if STEP_FOLDER.fullmatch(e.name)}
                _move_new_entries(entry, target, model)
            shutil.rmtree(entry)
        except FileNotFoundError:  # another save is cleaning up the same leftover
            continue


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process's own save, perhaps in another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
