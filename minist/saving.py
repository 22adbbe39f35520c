"""Write a model folder in sentence-transformers' layout, all or nothing, keeping what else the folder holds.

The layout: ``modules.json`` lists the steps and their subfolders (``""`` for the transformer, then
``1_Pooling``, ``2_Dense``, ``3_Normalize``, ...), ``config_sentence_transformers.json`` records versions and
the similarity function, and each step writes its own files (see its ``save``).

``save_folder`` writes everything into a hidden folder beside the target and renames it into place only
when complete, so a failed save leaves no half-written model. Saving over an existing model replaces that
model's files; any other files there (an evaluator's ``eval/`` results, your notes) are moved into the new
folder, never deleted. Left out: sharded weights and model cards.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# The files a model folder may hold (besides the step subfolders that its modules.json lists).
MODEL_FILES = {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "config.json",
               "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
               "added_tokens.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "README.md",
               "generation_config.json"}


def model_entries(folder: Path) -> set[str]:
    """The names in ``folder`` that belong to a saved model (so that saving over it may replace them)."""
    steps = set()
    if (folder / "modules.json").is_file():
        steps = {entry["path"].split("/")[0] for entry in json.loads((folder / "modules.json").read_text())}
    return (MODEL_FILES | steps) - {""}


def write_modules_json(folder: Path, steps: list[tuple[str, str]]) -> None:
    """``steps``: (subfolder, sentence-transformers type) per step, in order. Written last: it marks a model."""
    entries = [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(steps)]
    (folder / "modules.json").write_text(json.dumps(entries, indent=2))


def save_folder(write: Callable[[Path], None], target: str | Path) -> None:
    """Call ``write(folder)`` on a fresh hidden folder, then put that folder in place at ``target``."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file; a model is saved as a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        write(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not target.exists():
        partial.rename(target)
        return
    old = partial.with_suffix(".old")
    target.rename(old)
    try:
        partial.rename(target)
    except BaseException:
        old.rename(target)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    # The new model stands; now bring over whatever in the old folder was not part of the old model.
    replaced = model_entries(old)
    for entry in old.iterdir():
        if entry.name not in replaced and not (target / entry.name).exists():
            entry.rename(target / entry.name)
    shutil.rmtree(old)
