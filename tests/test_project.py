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
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python", "pip"))]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip, "environment.yml must install minist itself"
    listed = [*conda, *(r for r in pip if r != "-e .")]
    assert dict(map(normalize, listed)) == dict(map(normalize, wanted))
    assert len(listed) == len(wanted), "a dependency is listed twice"
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


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_snippets_run_and_print_what_they_say(tmp_path):
    for snippet in readme_blocks("python"):
        run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, check=True,
                             env=os.environ | {"MINIST_CACHE": str(tmp_path / "cache")})  # ONNX exports go there
        promised = re.findall(r"#\s*(.+)$", snippet, flags=re.M)
        assert run.stdout.split("\n")[: len(promised)] == promised


def test_readme_quick_start_output_is_what_python_m_minist_prints(tmp_path):
    run = subprocess.run([sys.executable, "-m", "minist"], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert run.stdout.strip() in [block.strip() for block in readme_blocks("text")]


def test_ci_runs_exactly_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    extractor = re.search(r"^readme_command\(\) \{.*?^\}", ci, flags=re.S | re.M).group(0)
    bash_blocks = readme_blocks("bash")
    for tag, block in (("setup", bash_blocks[0]), ("test", bash_blocks[1])):
        assert f"<!-- ci: {tag} -->\n```bash\n{block}" in (ROOT / "README.md").read_text()
        run = subprocess.run(["bash", "-c", f"{extractor}\nreadme_command {tag}"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        assert run.stdout == block
    assert 'bash -c "$setup"' in ci and 'bash -c "$tests"' in ci


def copy_cells() -> list[tuple[str, str]]:
    """(notebook, code) of each cookbook cell marked "copy this cell into your project"."""
    found = []
    for path in sorted((ROOT / "notebooks" / "cookbook").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for marker, cell in itertools.pairwise(cells):
            if marker["cell_type"] == "markdown" and "copy this cell" in "".join(marker["source"]):
                found.append((path.name, "".join(cell["source"])))
    return found


@pytest.mark.parametrize(("notebook", "code"), [
    pytest.param(name, code, marks=pytest.mark.xfail(strict=True, reason="its recipes use the notebook's model "
                                                     "and corpus; issue 14 makes them stand alone"))
    if name.startswith("05_") else (name, code) for name, code in copy_cells()])
def test_a_copy_cell_names_nothing_it_does_not_define_or_import(tmp_path, notebook, code):
    (tmp_path / "cell.py").write_text(code)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F821",
                           str(tmp_path / "cell.py")], capture_output=True, text=True)
    assert lint.returncode == 0, f"{notebook}: {lint.stdout}"
