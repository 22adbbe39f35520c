"""Run notebooks and write them as JupyterLab saves them, tidied for a reader's first open.

    .venv/bin/python notebooks/execute.py notebooks/01_tokenization.ipynb [...]   # run, tidy, write
    .venv/bin/python notebooks/execute.py --tidy-only notebooks/*.ipynb           # tidy what is committed

A notebook run by nbconvert/nbclient is committed with its outputs, and a reader first meets it on GitHub,
nbviewer or in an untrusted JupyterLab, where a widget shows only the text it had when it appeared.
So before writing, `tidy`:

- drops the saved views of `interact` cells: without a kernel they are a dead box (trusted) or the text
  `interactive(children=(Text(...` (untrusted). The prose above such a cell says to run it.
- gives each tqdm bar the text of its last state ("Epoch 1/2: 100%|██████████| 23/23 ..."), read from the
  saved widget state, instead of the "0%| | 0/23" it had when it appeared; a trusted JupyterLab draws
  the finished bar from the same state.
- keeps in the widget state only the models that the remaining views use.
- sets the kernelspec to the one this environment's kernel has (ipykernel's "Python 3 (ipykernel)"),
  which JupyterLab writes on every save: opening and saving a notebook then leaves `git diff` empty.

The file is written as JupyterLab saves it (whole numbers without ".0", nbformat's one-space indent and
sorted keys, a final newline), so opening and saving it in JupyterLab changes nothing. It is written to a
temporary file beside it and renamed over it, so a kill or a full disk leaves the old notebook, not half of one.
Left out: widgets other than `interact` and tqdm's bar keep their saved views as they are (these notebooks
have no others), and the Python version in `language_info` stays the one of the machine that ran it.
"""

from __future__ import annotations

import argparse
import html
import os
import shutil
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from tqdm.std import Bar

VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"


def kernelspec(name: str = "python3") -> dict:
    """The kernelspec metadata JupyterLab writes for kernel ``name``: its name, display name and language."""
    spec = KernelSpecManager().get_kernel_spec(name)
    return {"display_name": spec.display_name, "language": spec.language, "name": name}


def _tqdm_text(box: dict, state: dict) -> str | None:
    """The text of a tqdm notebook bar at its last saved state, or None if ``box`` is not one.

    tqdm draws an HBox of [HTML "desc: pct", FloatProgress, HTML "n/total [time, rate]"], with spaces as
    U+2007 and the text HTML-escaped.
    """
    children = [state.get(ref.removeprefix("IPY_MODEL_"), {}) for ref in box["state"].get("children", [])]
    if box["model_name"] != "HBoxModel" or [c.get("model_name") for c in children] != [
            "HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    left, right = (html.unescape(children[i]["state"].get("value", "")).replace("\u2007", " ") for i in (0, 2))
    progress = children[1]["state"]
    fraction = progress["value"] / progress["max"] if progress.get("max") else 0.0
    return f"{left}|{format(Bar(fraction, 10, charset=Bar.UTF))}|{right}"


def _used_models(roots: list[str], state: dict) -> set[str]:
    """Every model id reachable from ``roots`` through IPY_MODEL_ references (children, layout, style)."""
    seen, todo = set(), list(roots)
    while todo:
        model_id = todo.pop()
        if model_id in seen or model_id not in state:
            continue
        seen.add(model_id)
        stack = [state[model_id]["state"]]
        while stack:
            value = stack.pop()
            if isinstance(value, str) and value.startswith("IPY_MODEL_"):
                todo.append(value.removeprefix("IPY_MODEL_"))
            elif isinstance(value, list | tuple):
                stack.extend(value)
            elif isinstance(value, dict):
                stack.extend(value.values())
    return seen


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Tidy ``nb`` in place for a first open (see the module docstring) and return it."""
    nb.metadata["kernelspec"] = kernelspec()
    saved = nb.metadata.get("widgets", {}).get(STATE, {})
    state = saved.get("state", {})
    views = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            view = output.get("data", {}).get(VIEW)
            model = state.get(view["model_id"]) if view else None
            if model is not None and "widget-interact" in model["state"].get("_dom_classes", []):
                continue  # an interact cell: live only with a kernel
            if model is not None and (bar := _tqdm_text(model, state)) is not None:
                output["data"]["text/plain"] = bar
            if view:
                views.append(view["model_id"])
            kept.append(output)
        cell.outputs = kept
    used = _used_models(views, state)
    if used:
        saved["state"] = {k: v for k, v in state.items() if k in used}
    else:
        nb.metadata.pop("widgets", None)
    return nb


def _as_javascript_numbers(value):
    """``value`` with whole floats as ints (23.0 -> 23): JupyterLab's JSON.stringify writes them so."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_as_javascript_numbers(v) for v in value]
    if isinstance(value, dict):
        return type(value)({k: _as_javascript_numbers(v) for k, v in value.items()})
    return value


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write ``nb`` byte for byte as JupyterLab saves it: nbformat.writes of its JSON, then a final newline.

    Through a temporary file beside ``path``, flushed to disk, then renamed over it in one step: a reader, a
    kill or a full disk sees the old notebook or the new one, never an empty or a partial one.
    """
    text = nbformat.writes(_as_javascript_numbers(nb)) + "\n"
    path = path.resolve()  # a symlinked notebook: replace the file it points to, not the link
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, temporary)  # mkstemp's file is private (0o600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--tidy-only", action="store_true", help="tidy the saved outputs, run nothing")
    args = parser.parse_args()
    if missing := next((path for path in args.notebooks if not path.is_file()), None):
        parser.exit(2, f"{parser.prog}: error: {missing}: no such notebook\n")  # one line: no usage, no traceback
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if not args.tidy_only:
            # A cell may take minutes (fine-tuning), never twenty: past that the run fails rather than hangs (a
            # reply the kernel never sends would otherwise be awaited for ever).
            NotebookClient(nb, timeout=1200, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent)}}).execute()
        write(tidy(nb), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
