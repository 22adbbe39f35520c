"""notebooks/execute.py under faults: a kill or a full disk while it writes a notebook, a path that is not there.

A writer is a forked child (cheap: execute.py and nbformat are imported once, here), killed with SIGKILL or
given a file size limit (RLIMIT_FSIZE, what a full disk does to a write). The notebooks are big (about 4 MB,
as a long training log makes them) so that a write takes long enough to be caught in the middle.
"""

import importlib.util
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def execute():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def big_notebook(letter: str, size: int):
    """A notebook whose one cell printed ``size`` times ``letter``."""
    return new_notebook(cells=[new_code_cell("print(...)", outputs=[
        new_output("stream", name="stdout", text=letter * size)])])


def in_child(action) -> int:
    """Fork; the child runs ``action`` and exits with 0, or 1 if it raised. Returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            action()
            code = 0
        finally:
            os._exit(code)
    return pid


def written(execute, nb, path: Path) -> bytes:
    execute.write(nb, path)
    return path.read_bytes()


def test_a_kill_while_the_notebook_is_written_leaves_the_old_or_the_new_one(tmp_path, execute):
    path = tmp_path / "nb.ipynb"
    old, new = big_notebook("x", 4_000_000), big_notebook("y", 4_100_000)
    both = {written(execute, nb, tmp_path / name) for name, nb in [("old", old), ("new", new)]}
    rng = random.Random(0)

    def write_both_for_ever():
        while True:
            execute.write(new, path)
            execute.write(old, path)

    def state():  # the notebook's inode, size and time, and the other files beside it (a temporary one)
        return (stat := os.stat(path)).st_ino, stat.st_size, stat.st_mtime_ns, len(os.listdir(tmp_path))

    for moment in ["as soon as a write begins"] * 3 + [rng.uniform(0.0, 0.2) for _ in range(3)]:
        execute.write(old, path)
        before = state()
        pid = in_child(write_both_for_ever)
        if moment == "as soon as a write begins":  # the notebook is truncated (as it was), or a temporary file made
            deadline = time.monotonic() + 10
            while state() == before and time.monotonic() < deadline:
                pass
        else:
            time.sleep(moment)
        os.kill(pid, signal.SIGKILL)
        assert os.waitpid(pid, 0)[1] == signal.SIGKILL
        assert path.read_bytes() in both, f"killed {moment}: {path.stat().st_size} bytes, neither notebook"


def test_a_full_disk_while_the_notebook_is_written_leaves_it_as_it_was(tmp_path, execute):
    path = tmp_path / "nb.ipynb"
    before = written(execute, big_notebook("x", 4_000_000), path)

    def write_on_a_full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with pytest.raises(OSError, match="File too large"):
            execute.write(big_notebook("y", 4_100_000), path)

    assert os.waitpid(in_child(write_on_a_full_disk), 0)[1] == 0
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["nb.ipynb"]  # no temporary file left


@pytest.mark.slow  # a fresh process that imports nbformat
def test_a_missing_notebook_is_one_line_and_nothing_is_written(tmp_path, execute):
    present, missing = tmp_path / "present.ipynb", tmp_path / "missing.ipynb"
    kernelspec = {"display_name": "Python 3 (old)", "language": "python", "name": "python3"}
    before = written(execute, new_notebook(metadata={"kernelspec": kernelspec}), present)  # --tidy-only rewrites it
    run = subprocess.run([sys.executable, str(NOTEBOOKS / "execute.py"), "--tidy-only", str(present), str(missing)],
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stderr) == (2, f"execute.py: error: {missing}: no such notebook\n")
    assert present.read_bytes() == before  # every path is checked before any is run or written
