"""The fast paths: token-budget batches and ONNX Runtime (same numbers); int8 and 16-bit autocast (close numbers)."""

import logging
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES
from scipy.stats import spearmanr
from test_real_model import SENTENCES
from torch.utils.data import DataLoader

from minist import InputExample, SentenceTransformer, losses
from minist.cpu import FEATURES, choose_path, instruction_sets
from minist.encoding import token_batches
from minist.measure import FAITHFUL, PATHS, fastest_path, fresh_process_cost
from minist.quantization import Int8Linear, quantize_linear_layers, quantize_rows


# --- batches by token budget ----------------------------------------------------------------------------
@pytest.mark.parametrize(("batch_size", "budget"), [(None, 64), (4, 64), (None, 1), (3, 10**6)])
def test_token_batches_are_greedy_longest_first_and_within_budget(batch_size, budget):
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(300)]
    batches = token_batches(lengths, batch_size, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(300))  # each text exactly once
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(lengths, reverse=True)  # longest first throughout
    for batch, following in zip(batches, [*batches[1:], []], strict=True):
        padded = len(batch) * lengths[batch[0]]  # padded to the batch's longest, its first
        assert len(batch) == 1 or padded <= budget
        assert batch_size is None or len(batch) <= batch_size
        if following:  # greedy: the next text did not fit
            assert (len(batch) + 1) * lengths[batch[0]] > budget or len(batch) == batch_size
    assert token_batches([3, 9, 5, 4], None, 10) == [[1], [2, 3], [0]]  # worked by hand


def test_any_token_budget_gives_the_same_embeddings(tiny_st_dir):
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    reference = model.encode(TINY_SENTENCES, batch_size=1)
    for budget in (1, 16, 10**6):
        np.testing.assert_allclose(model.encode(TINY_SENTENCES, max_batch_tokens=budget), reference, atol=1e-6)
    with pytest.raises(ValueError, match="max_batch_tokens must be at least 1"):
        model.encode(TINY_SENTENCES, max_batch_tokens=0)


# --- int8 linear layers ---------------------------------------------------------------------------------
def test_quantize_rows_by_hand():
    values, scales = quantize_rows(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [127.0, 1.0, -0.4]]))
    assert values.tolist() == [[64, -127, 32], [0, 0, 0], [127, 1, 0]]  # 0.5 * 127 = 63.5 rounds to even
    torch.testing.assert_close(scales.squeeze(1), torch.tensor([1 / 127, 1e-12 / 127, 1.0]))


def test_int8_linear_is_the_integer_product_rescaled():
    """Against the same arithmetic in float64 (exact for these integer sums), and close to the float layer."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    x = torch.randn(3, 17, 96) * torch.rand(3, 17, 1) * 10  # tokens of very different sizes
    x_int8, x_scale = quantize_rows(x.reshape(-1, 96))
    w_int8, w_scale = quantize_rows(linear.weight.detach())
    expected = (x_int8.double() @ w_int8.double().T) * x_scale.double() * w_scale.double().T + linear.bias.double()
    got = Int8Linear(linear)(x)
    assert got.shape == (3, 17, 40) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected.reshape(3, 17, 40), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        reference = linear(x)
    assert ((got - reference).norm(dim=-1) / reference.norm(dim=-1)).max() < 0.02  # each token within 2%


def test_every_linear_layer_is_replaced(tiny_hf_dir, fake_cpu):
    fake_cpu("AVX2", "AVX-512", "AVX-512 VNNI")  # torch's int8 product is fast: minist uses it
    model = SentenceTransformer(tiny_hf_dir, device="cpu", quantize="int8")
    auto_model = model[0].auto_model
    assert not any(type(m) is torch.nn.Linear for m in auto_model.modules())
    layers = auto_model.config.num_hidden_layers
    assert sum(isinstance(m, Int8Linear) for m in auto_model.modules()) == 6 * layers + 1  # + the pooler
    assert quantize_linear_layers(auto_model) == 0  # already done


@pytest.mark.real_model
def test_int8_and_bf16_stay_close_to_float32(real_model_dir, real_model, fake_cpu):
    fake_cpu("AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16")  # torch's kernels, even where they are slow
    reference = real_model.encode(SENTENCES, convert_to_tensor=True)
    for quantize, mean, worst in (("int8", 0.99, 0.95), ("bf16", 0.999, 0.99)):
        got = SentenceTransformer(real_model_dir, device="cpu", quantize=quantize).encode(
            SENTENCES, convert_to_tensor=True)
        cosine = torch.nn.functional.cosine_similarity(got, reference)
        assert got.dtype == torch.float32 and got.shape == reference.shape
        assert cosine.mean() >= mean and cosine.min() >= worst, (quantize, cosine.mean(), cosine.min())
        assert (got - reference).abs().max() > 1e-5  # really computed another way


def test_bf16_autocast_keeps_float32_outputs(tiny_st_dir, fake_cpu):
    fake_cpu("AVX2", "AVX-512", "AVX-512 BF16")
    model = SentenceTransformer(tiny_st_dir, device="cpu", quantize="bf16")
    assert model.encode(TINY_SENTENCES).dtype == np.float32
    assert {t.dtype for t in model.encode(TINY_SENTENCES, output_value="token_embeddings")} == {torch.float32}
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves the weights alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_is_within_a_hundredth_of_float32(tiny_st_dir):
    reference = SentenceTransformer(tiny_st_dir, device="cuda").encode(TINY_SENTENCES, convert_to_tensor=True)
    got = SentenceTransformer(tiny_st_dir, device="cuda", quantize="fp16").encode(TINY_SENTENCES,
                                                                                  convert_to_tensor=True)
    assert got.dtype == torch.float32
    assert (1 - torch.nn.functional.cosine_similarity(got, reference)).max() <= 1e-2


def test_bad_quantize_requests_are_refused(tmp_path, tiny_st_dir, fake_cpu):
    fake_cpu("AVX2", "AVX-512", "AVX-512 VNNI")
    with pytest.raises(ValueError, match="quantize must be None, 'int8', 'bf16' or 'fp16', not 'int4'"):
        SentenceTransformer(tiny_st_dir, device="cpu", quantize="int4")
    with pytest.raises(ValueError, match="quantize='int8' and backend='onnx' run on the CPU, not meta"):
        SentenceTransformer(tiny_st_dir, device="meta", quantize="int8")
    with pytest.raises(ValueError, match=r"backend must be 'hf' .*, 'minist' .* or 'onnx' .*, not 'openvino'"):
        SentenceTransformer(tiny_st_dir, device="cpu", backend="openvino")
    model = SentenceTransformer(tiny_st_dir, device="cpu", quantize="int8")
    with pytest.raises(ValueError, match="int8-quantized or ONNX model cannot be saved"):
        model.save(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()
    loader = DataLoader([InputExample(texts=["a", "b"], label=1.0)], batch_size=1)
    with pytest.raises(ValueError, match="int8-quantized or ONNX model cannot be trained"):
        model.fit([(loader, losses.CosineSimilarityLoss(model))])


# --- which kernel runs, per CPU (minist.cpu) --------------------------------------------------------------
AVX2 = ("AVX2",)
VNNI = ("AVX2", "AVX-512", "AVX-512 VNNI")
SAPPHIRE_RAPIDS = ("AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AVX-512 FP16", "AMX-INT8", "AMX-BF16")
# (CPU, onnxruntime installed, asked (quantize, backend, device)) -> what runs, and a word of the reason
CHOICES = [
    (AVX2, True, ("int8", "hf", "cpu"), ("int8", "onnx"), "runs on ONNX Runtime: this CPU has no AVX-512 VNNI"),
    (AVX2, False, ("int8", "hf", "cpu"), (None, "hf"), "pip install 'minist[onnx]'. Running float32."),
    (AVX2, True, ("int8", "minist", "cpu"), (None, "minist"), "load with backend='hf' to use it"),
    (AVX2, True, ("int8", "onnx", "cpu"), ("int8", "onnx"), ""),
    (AVX2, True, ("bf16", "hf", "cpu"), (None, "hf"), "no AVX-512 BF16 or AMX-BF16). Running float32."),
    (AVX2, True, ("fp16", "hf", "cpu"), (None, "hf"), "no AVX-512 FP16 or AMX-FP16). Running float32."),
    (AVX2, True, (None, "hf", "cpu"), (None, "hf"), ""),
    (AVX2, True, ("bf16", "hf", "cuda"), ("bf16", "hf"), ""),  # a GPU's units are not the CPU's business
    (VNNI, False, ("int8", "hf", "cpu"), ("int8", "hf"), ""),
    (VNNI, True, ("int8", "minist", "cpu"), ("int8", "minist"), ""),
    (VNNI, True, ("bf16", "hf", "cpu"), (None, "hf"), "no AVX-512 BF16"),
    (("AVX2", "AMX-INT8"), True, ("int8", "hf", "cpu"), ("int8", "hf"), ""),
    (("AVX2", "AMX-BF16"), True, ("bf16", "hf", "cpu"), ("bf16", "hf"), ""),
    (("AVX2", "AMX-FP16"), True, ("fp16", "hf", "cpu"), ("fp16", "hf"), ""),
    (SAPPHIRE_RAPIDS, True, ("bf16", "minist", "cpu"), ("bf16", "minist"), ""),
]


@pytest.mark.parametrize(("cpu", "onnxruntime", "asked", "runs", "why"), CHOICES)
def test_each_cpu_gets_the_fastest_kernel_it_has(fake_cpu, cpu, onnxruntime, asked, runs, why):
    fake_cpu(*cpu, onnxruntime=onnxruntime)
    quantize, backend, note = choose_path(*asked)
    assert (quantize, backend) == runs
    assert why in note and bool(note) == bool(why)


@pytest.mark.slow
def test_the_choice_is_what_the_model_runs_shows_and_logs_once(tiny_st_dir, onnx_cache, fake_cpu, caplog):
    fake_cpu("AVX2")
    with caplog.at_level(logging.INFO, logger="minist"):
        model = SentenceTransformer(tiny_st_dir, device="cpu", quantize="int8")
        again = SentenceTransformer(tiny_st_dir, device="cpu", quantize="int8")
    assert (model.quantize, model.backend) == ("int8", "onnx") and "AVX-512 VNNI" in model.path_note
    assert type(model[0].auto_model).__name__ == "OnnxModel"
    assert repr(model).splitlines()[1] == "  quantize='int8', backend='onnx'"
    assert [r.levelname for r in caplog.records] == ["INFO"] and caplog.records[0].message == model.path_note
    explicit = SentenceTransformer(tiny_st_dir, device="cpu", backend="onnx", quantize="int8")
    np.testing.assert_array_equal(again.encode(TINY_SENTENCES), explicit.encode(TINY_SENTENCES))


@pytest.mark.parametrize("quantize", ["int8", "bf16"])
def test_without_a_fast_kernel_it_warns_and_runs_float32(tmp_path, tiny_st_dir, fake_cpu, caplog, quantize):
    fake_cpu("AVX2", onnxruntime=False)
    with caplog.at_level(logging.INFO, logger="minist"):
        model = SentenceTransformer(tiny_st_dir, device="cpu", quantize=quantize)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "Running float32" in caplog.text
    assert model.quantize is None and repr(model) == repr(SentenceTransformer(tiny_st_dir, device="cpu"))
    reference = SentenceTransformer(tiny_st_dir, device="cpu").encode(TINY_SENTENCES)
    np.testing.assert_array_equal(model.encode(TINY_SENTENCES), reference)  # float32 exactly
    model.save(tmp_path / "saved")  # a float32 model saves as one
    np.testing.assert_array_equal(SentenceTransformer(tmp_path / "saved", device="cpu").encode(TINY_SENTENCES),
                                  reference)


def test_instruction_sets_from_torch_agree_with_linux_flags(monkeypatch):
    """torch's cpuinfo (read where torch has it, >= 2.9) against /proc/cpuinfo (the fallback), both ways."""
    flags = Path("/proc/cpuinfo").read_text().split("\nflags")[1].split("\n")[0].split()
    expected = {name: flag in flags for name, (_, flag) in FEATURES.items()}
    assert instruction_sets() == expected
    monkeypatch.delattr(torch.cpu, "get_capabilities")  # as on an older torch
    assert instruction_sets() == expected


@pytest.mark.slow
def test_fastest_path_times_every_path_and_keeps_the_faithful(tiny_st_dir, onnx_cache, fake_cpu, monkeypatch):
    fake_cpu("AVX2")  # int8 runs on ONNX Runtime, bf16 as float32: timed once each
    texts = TINY_SENTENCES * 4
    pairs = (TINY_SENTENCES[:5], TINY_SENTENCES[5:], [0.1, 0.9, 0.3, 0.5, 0.7])
    monkeypatch.setitem(FAITHFUL, "cosine worst", 1 - 1e-5)  # only exact paths can pass: int8 must not
    report = fastest_path(tiny_st_dir, texts, sts=pairs, repeats=1, show_progress_bar=False)
    runs = {row["path"]: row["runs"] for row in report.rows}
    assert runs == {"float32": "float32", "onnx": "onnx", "int8": "onnx int8", "onnx int8": "onnx int8",
                    "bf16": "float32"}
    reference = SentenceTransformer(tiny_st_dir, device="cpu").encode(texts, convert_to_tensor=True)
    for row in report.rows:
        got = SentenceTransformer(tiny_st_dir, device="cpu", **PATHS[row["runs"]]).encode(texts, convert_to_tensor=True)
        cosine = torch.nn.functional.cosine_similarity(got, reference)
        assert row["cosine mean"] == pytest.approx(cosine.mean().item(), abs=1e-6)
        assert row["cosine worst"] == pytest.approx(cosine.min().item(), abs=1e-6)
        a, b = (SentenceTransformer(tiny_st_dir, device="cpu", **PATHS[row["runs"]]).encode(part) for part in pairs[:2])
        cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert row["spearman"] == pytest.approx(100 * spearmanr(pairs[2], cosines).statistic, abs=1e-4)
        assert row["faithful"] == (row["runs"] in ("float32", "onnx"))
    fastest = max((row for row in report.rows if row["faithful"]), key=lambda row: row["texts/s"])
    assert report.best == PATHS[fastest["runs"]] and report.rows[0]["speed-up"] == 1.0
    assert "AVX2" in str(report) and "onnx int8" in str(report)


@pytest.mark.slow
def test_peak_rss_is_the_high_water_mark():
    """In a fresh Python, touching 300 MB raises the peak by about 300 MB, and freeing them does not lower it."""
    script = ("import numpy as np\nfrom minist.measure import peak_rss_mb\nbefore = peak_rss_mb()\n"
              "block = np.ones(300 * 2**20, np.uint8)\ndel block\nprint(before, peak_rss_mb())")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after = map(float, run.stdout.split())
    assert 295 <= after - before <= 330


@pytest.mark.slow
def test_fresh_process_cost_measures_a_new_python_and_names_its_failure(tiny_st_dir):
    cost = fresh_process_cost(tiny_st_dir, TINY_SENTENCES)
    assert set(cost) == {"load (s)", "peak RSS (MB)"}
    assert cost["load (s)"] > 0 and cost["peak RSS (MB)"] > 100  # torch and transformers alone weigh more
    with pytest.raises(RuntimeError, match=r"(?s)'nope'.*failed in a fresh process.*backend"):  # options reach it
        fresh_process_cost(tiny_st_dir, TINY_SENTENCES, backend="nope")


# --- the ONNX Runtime backend ---------------------------------------------------------------------------
@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.mark.parametrize("family", ["bert", "distilbert"])  # with and without token_type_ids
@pytest.mark.slow
def test_onnx_backend_equals_sentence_transformers_and_is_cached(family, tmp_path, onnx_cache, monkeypatch):
    from model_families import build
    from sentence_transformers import SentenceTransformer as STModel

    folder = build(family, tmp_path / family)
    expected = STModel(str(folder), device="cpu").encode(TINY_SENTENCES)
    model = SentenceTransformer(folder, device="cpu", backend="onnx")
    assert type(model[0].auto_model).__name__ == "OnnxModel" and model.device.type == "cpu"
    np.testing.assert_allclose(model.encode(TINY_SENTENCES, max_batch_tokens=16), expected, atol=1e-5)
    assert [p.name for p in onnx_cache.glob("*/*")] == ["model.onnx"]

    def no_second_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr("minist.ort.export", no_second_export)
    again = SentenceTransformer(folder, device="cpu", backend="onnx")  # from the cache
    np.testing.assert_allclose(again.encode(TINY_SENTENCES), expected, atol=1e-5)


@pytest.mark.slow
def test_a_wrong_export_is_refused_and_not_cached(tiny_hf_dir, onnx_cache, monkeypatch):
    monkeypatch.setattr("minist.ort.OnnxModel.forward", lambda self, *inputs: torch.zeros(1))
    with pytest.raises(RuntimeError, match="ONNX export differs from the torch model"):
        SentenceTransformer(tiny_hf_dir, device="cpu", backend="onnx")
    assert not list(onnx_cache.glob("*/*"))


@pytest.mark.real_model
@pytest.mark.slow
def test_onnx_int8_stays_close_to_float32(real_model_dir, real_model, real_onnx_cache, monkeypatch):
    monkeypatch.setenv("MINIST_CACHE", str(real_onnx_cache))  # exported here, or by the README's snippet
    reference = real_model.encode(SENTENCES, convert_to_tensor=True)
    got = SentenceTransformer(real_model_dir, device="cpu", backend="onnx", quantize="int8").encode(
        SENTENCES, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(got, reference)
    assert cosine.mean() >= 0.99 and cosine.min() >= 0.95, (cosine.mean(), cosine.min())
    assert sorted(p.name for p in (real_onnx_cache / "onnx").glob("*/*")) == ["model.onnx", "model_int8.onnx"]


def test_onnx_backend_without_onnxruntime_names_the_extra(tiny_hf_dir, onnx_cache, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "minist\[onnx\]"'):
        SentenceTransformer(tiny_hf_dir, device="cpu", backend="onnx")


@pytest.mark.slow
def test_onnx_backend_refuses_what_it_cannot_do(tmp_path, tiny_st_dir, onnx_cache):
    with pytest.raises(ValueError, match="backend='onnx' takes None or 'int8'"):
        SentenceTransformer(tiny_st_dir, device="cpu", backend="onnx", quantize="bf16")
    with pytest.raises(ValueError, match="run on the CPU, not meta"):
        SentenceTransformer(tiny_st_dir, device="meta", backend="onnx")
    model = SentenceTransformer(tiny_st_dir, device="cpu", backend="onnx")
    with pytest.raises(ValueError, match="ONNX model cannot be saved"):
        model.save(tmp_path / "onnx")
    with pytest.raises(ValueError, match="ONNX model cannot be trained"):
        model.fit([(DataLoader([InputExample(texts=["a", "b"], label=1.0)]), losses.CosineSimilarityLoss(model))])
