"""Today's sentence-transformers names (issues 13 and 24), each compared with sentence-transformers 6 on the same
inputs: the same numbers, and the same exception type and message, or warning, where a user would match on it."""

import json
import logging
import shutil
import warnings

import numpy as np
import pytest
import sentence_transformers
import torch
from conftest import TINY_SENTENCES
from sentence_transformers import SentenceTransformer as STModel
from sentence_transformers import util as st_util

from minist import SentenceTransformer, SimilarityFunction, losses, util
from minist.encoding import TRUNCATED
from minist.inputs import log_once


@pytest.fixture(scope="module")
def pair(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu"), STModel(str(tiny_st_dir), device="cpu")


def test_similarity_function_enum_is_upstreams():
    upstream = sentence_transformers.SimilarityFunction
    late_interaction = {"MAXSIM", "MEAN_MAXSIM"}  # multi-vector models: not in minist (the README's "left out")
    assert {m.name: m.value for m in SimilarityFunction} == {m.name: m.value for m in upstream
                                                             if m.name not in late_interaction}
    assert SimilarityFunction.DOT is SimilarityFunction.DOT_PRODUCT and upstream.DOT is upstream.DOT_PRODUCT
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    for name in SimilarityFunction.possible_values():
        torch.testing.assert_close(SimilarityFunction.to_similarity_fn(name)(a, b),
                                   upstream.to_similarity_fn(name)(a, b))
        torch.testing.assert_close(SimilarityFunction.to_similarity_pairwise_fn(name)(a, b),
                                   upstream.to_similarity_pairwise_fn(name)(a, b))
    for module in (SimilarityFunction, upstream):
        with pytest.raises(ValueError):
            module.to_similarity_fn("cos")
    torch.testing.assert_close(util.pytorch_cos_sim(a, b), st_util.pytorch_cos_sim(a, b))


@pytest.mark.parametrize("name", ["cosine", "dot", "euclidean", "manhattan", SimilarityFunction.MANHATTAN])
def test_similarity_and_similarity_pairwise_follow_similarity_fn_name(pair, name):
    ours, theirs = pair
    upstream_name = name.value if isinstance(name, SimilarityFunction) else name
    ours.similarity_fn_name, theirs.similarity_fn_name = name, upstream_name
    assert ours.similarity_fn_name == theirs.similarity_fn_name == upstream_name
    a, b = ours.encode(TINY_SENTENCES[:4]), ours.encode(TINY_SENTENCES[4:8])
    torch.testing.assert_close(ours.similarity(a, b), theirs.similarity(a, b))
    torch.testing.assert_close(ours.similarity_pairwise(a, b), theirs.similarity_pairwise(a, b))
    ours.similarity_fn_name = theirs.similarity_fn_name = "cosine"


def test_an_unknown_similarity_fn_name_is_refused_when_set(pair, tiny_st_dir):
    ours, theirs = pair
    for model in (ours, theirs):
        with pytest.raises(ValueError, match="cos"):
            model.similarity_fn_name = "cos"
    assert ours.similarity_fn_name == "cosine"  # unchanged by the refusal
    with pytest.raises(ValueError, match="similarity_fn_name must be one of"):
        SentenceTransformer(tiny_st_dir, device="cpu", similarity_fn_name="cos")


def test_similarity_fn_name_argument_overrides_the_saved_one_and_is_saved(tmp_path, tiny_st_dir):
    ours = SentenceTransformer(tiny_st_dir, device="cpu", similarity_fn_name="dot")
    theirs = STModel(str(tiny_st_dir), device="cpu", similarity_fn_name="dot")
    assert ours.similarity_fn_name == theirs.similarity_fn_name == "dot"
    ours.save_pretrained(tmp_path / "saved")  # the other name of save
    assert STModel(str(tmp_path / "saved"), device="cpu").similarity_fn_name == "dot"
    assert SentenceTransformer(tmp_path / "saved", device="cpu").similarity_fn_name == "dot"


def test_truncate_dim_in_the_constructor_in_encode_and_in_a_with_block(tiny_st_dir):
    ours = SentenceTransformer(tiny_st_dir, device="cpu", truncate_dim=4)
    theirs = STModel(str(tiny_st_dir), device="cpu", truncate_dim=4)
    np.testing.assert_allclose(ours.encode(TINY_SENTENCES), theirs.encode(TINY_SENTENCES), atol=1e-5)
    assert ours.get_embedding_dimension() == theirs.get_embedding_dimension() == 4
    assert ours.get_sentence_embedding_dimension() == 4
    np.testing.assert_allclose(ours.encode(TINY_SENTENCES, truncate_dim=2),  # the call's own truncate_dim wins
                               theirs.encode(TINY_SENTENCES, truncate_dim=2), atol=1e-5)
    with ours.truncate_embeddings(3), theirs.truncate_embeddings(3):
        assert ours.encode(TINY_SENTENCES).shape == theirs.encode(TINY_SENTENCES).shape == (len(TINY_SENTENCES), 3)
        assert ours.get_embedding_dimension() == theirs.get_embedding_dimension() == 3
    assert ours.truncate_dim == theirs.truncate_dim == 4  # restored after the block
    assert "truncate_dim=4" in repr(ours)  # the cache fingerprint reads repr: truncated embeddings are others
    with pytest.raises(ValueError, match=r"truncate_dim must be from 1 to 8 \(the embedding size\)"):
        SentenceTransformer(tiny_st_dir, device="cpu", truncate_dim=10**6)


def test_transformers_model_is_the_hugging_face_model(pair, tiny_st_dir):
    ours, theirs = pair
    assert ours.transformers_model is ours[0].auto_model
    assert type(ours.transformers_model) is type(theirs.transformers_model)
    assert SentenceTransformer(tiny_st_dir, device="cpu", backend="minist").transformers_model is None


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_encode_precision_quantizes_as_upstream(pair, precision):
    ours, theirs = pair
    got, expected = ours.encode(TINY_SENTENCES, precision=precision), theirs.encode(TINY_SENTENCES, precision=precision)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if precision == "float32":
        np.testing.assert_allclose(got, expected, atol=1e-5)
    else:  # integer buckets: a float difference of 1e-7 at a bucket's edge may move one value by one
        assert np.abs(got.astype(np.int16) - expected.astype(np.int16)).max() <= 1
        assert (got != expected).mean() < 0.01
    as_tensor = ours.encode(TINY_SENTENCES, precision=precision, convert_to_tensor=True)
    assert as_tensor.dtype == theirs.encode(TINY_SENTENCES, precision=precision, convert_to_tensor=True).dtype


def test_an_unknown_precision_is_refused_by_both(pair):
    for model in pair:
        with pytest.raises(ValueError, match="int4"):
            model.encode(TINY_SENTENCES, precision="int4")


def test_int8_precision_of_one_text_is_refused_not_garbage(pair):
    ours, theirs = pair
    with pytest.raises(ValueError, match="needs two texts or more"):
        ours.encode("the cat", precision="int8")
    assert ours.encode("the cat", precision="binary").shape == theirs.encode("the cat", precision="binary").shape


def test_pooling_and_dense_take_upstreams_argument_names():
    from sentence_transformers.base.modules import Dense as STDense
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    from minist.dense import Dense
    from minist.pooling import Pooling

    torch.manual_seed(0)
    features = {"token_embeddings": torch.randn(3, 5, 4), "attention_mask": torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])}  # the last row all padding
    # Not max here: of a padding-only row it gives -1e9, sentence-transformers -inf (both meaningless).
    for mode in ["lasttoken", "cls", ("cls", "mean"), ["weightedmean", "mean_sqrt_len_tokens"]]:
        ours, theirs = Pooling(4, pooling_mode=mode), STPooling(4, pooling_mode=mode)
        assert ours.pooling_mode == theirs.pooling_mode
        assert ours.get_embedding_dimension() == theirs.get_embedding_dimension()
        torch.testing.assert_close(ours(dict(features))["sentence_embedding"],
                                   theirs(dict(features))["sentence_embedding"])
    given = dict(features, cls_token_embeddings=torch.randn(3, 4))  # a model's own CLS vector wins, as upstream
    torch.testing.assert_close(Pooling(4, "cls")(dict(given))["sentence_embedding"], given["cls_token_embeddings"])
    torch.testing.assert_close(Pooling(4, ("cls", "mean"))(dict(given))["sentence_embedding"],
                               STPooling(4, ("cls", "mean"))(dict(given))["sentence_embedding"])
    # the older names, read as sentence-transformers 6 reads them (it warns that they are deprecated)
    for flags in ({"pooling_mode_cls_token": True}, {"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True},
                  {"pooling_mode_mean_tokens": False}, {"pooling_mode_lasttoken": True}):
        with pytest.warns(FutureWarning):
            expected = STPooling(word_embedding_dimension=4, **flags)
        with pytest.warns(FutureWarning):
            ours = Pooling(word_embedding_dimension=4, **flags)
        assert ours.pooling_mode == expected.pooling_mode
        assert ours.get_embedding_dimension() == expected.get_embedding_dimension()
    for cls in (Pooling, STPooling):  # an unknown keyword, or the size given twice, is a TypeError in both
        with pytest.raises(TypeError, match="pooling_mode_median"):
            cls(4, pooling_mode_median=True)
        with pytest.raises(TypeError, match="multiple values for argument 'embedding_dimension'"):
            cls(4, word_embedding_dimension=4)

    x = {"sentence_embedding": torch.randn(3, 4)}
    for activation in (None, torch.nn.ReLU()):
        ours, theirs = Dense(4, 2, bias=False, activation_function=activation), STDense(4, 2, bias=False,
                                                                                       activation_function=activation)
        ours.linear.load_state_dict(theirs.linear.state_dict())
        torch.testing.assert_close(ours(dict(x))["sentence_embedding"], theirs(dict(x))["sentence_embedding"])
    assert isinstance(Dense(4, 2).activation_function, torch.nn.Tanh)


def test_no_duplicates_dataloader_gives_upstreams_batches_and_trains(tiny_st_dir):
    import random

    from sentence_transformers.sentence_transformer.datasets import NoDuplicatesDataLoader as STNoDuplicates

    from minist import InputExample, losses
    from minist.datasets import NoDuplicatesDataLoader

    texts = ["the cat", "a dog", "The cat ", "a bird", "the mat", "A DOG", "fast", "slow", "the dog", "sings"]
    examples = [InputExample(texts=[a, b]) for a, b in zip(texts, texts[3:] + texts[:3], strict=True)]
    def three_epochs(loader):  # the reshuffles at the end of the data must agree too
        return [[[example.texts for example in batch] for batch in loader] for _ in range(3)]

    random.seed(0)
    ours = NoDuplicatesDataLoader(list(examples), batch_size=3)
    ours.collate_fn = list
    got = three_epochs(ours)
    random.seed(0)  # the same draws from Python's random, each library in turn
    assert got == three_epochs(STNoDuplicates(list(examples), batch_size=3))
    assert [len(epoch) for epoch in got] == [3, 3, 3]
    for batch in (batch for epoch in got for batch in epoch):
        keys = [text.strip().lower() for pair in batch for text in pair]
        assert len(keys) == len(set(keys))
    model = SentenceTransformer(tiny_st_dir, device="cpu")
    loader = NoDuplicatesDataLoader(examples, batch_size=3)
    model.fit([(loader, losses.MultipleNegativesRankingLoss(model))], epochs=1, show_progress_bar=False)
    assert len(model.training_history) == 3
    stuck = NoDuplicatesDataLoader([InputExample(texts=["same", t]) for t in texts], batch_size=2)
    with pytest.raises(ValueError, match="no 2 examples that share no text"):
        next(iter(stuck))


def test_a_model_with_pytorch_model_bin_weights_loads_as_upstream(tmp_path, tiny_st_dir):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "bin_model"
    shutil.copytree(tiny_st_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")  # the pre-2023 format
    (folder / "model.safetensors").unlink()
    expected = STModel(str(folder), device="cpu").encode(TINY_SENTENCES)
    np.testing.assert_allclose(SentenceTransformer(folder, device="cpu").encode(TINY_SENTENCES), expected, atol=1e-6)
    np.testing.assert_allclose(SentenceTransformer(tiny_st_dir, device="cpu").encode(TINY_SENTENCES), expected,
                               atol=1e-6)  # and the same numbers as the safetensors original


@pytest.mark.parametrize("relevant", ["d00", "d07", "d19"])
def test_information_retrieval_ranks_ties_by_corpus_id_as_upstream(pair, relevant):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as STIR

    from minist.evaluation import InformationRetrievalEvaluator

    ours, theirs = pair
    corpus = {f"d{i:02d}": "the cat sat on the mat" for i in reversed(range(20))}  # 20 identical documents
    corpus |= {"e1": "a bird sings", "e2": "The dogs run fast!"}
    queries = {"q1": "the cat sat on the mat", "q2": "a bird sings"}  # each equal to documents: cosine 1
    relevant_docs = {"q1": {relevant}, "q2": {"e1"}}
    expected = STIR(queries, corpus, relevant_docs, write_csv=False)(theirs)
    for chunk in (3, 7, 50000):  # the corpus chunk size must not change a metric
        got = InformationRetrievalEvaluator(queries, corpus, relevant_docs, corpus_chunk_size=chunk,
                                            write_csv=False)(ours)
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (chunk, key)
    # By hand: q2 finds e1 first; q1's 20 tied documents rank by id, so only d00 is found first.
    assert got["cosine_accuracy@1"] == expected["cosine_accuracy@1"] == (1.0 if relevant == "d00" else 0.5)
    assert got["cosine_accuracy@10"] == (0.5 if relevant == "d19" else 1.0)  # d19 is 20th of the ties


# --- prompts (point 1) ----------------------------------------------------------------------------------
PROMPTS = {"query": "query: ", "document": "passage: ", "short": "a "}


@pytest.fixture(scope="module", params=[True, False], ids=["include_prompt", "exclude_prompt"])
def prompt_pair(request, tmp_path_factory, tiny_hf_dir):
    """A model whose pooling counts the prompt's tokens, or leaves them out (INSTRUCTOR-style), saved by
    sentence-transformers with prompts and a default, then loaded by both libraries."""
    from conftest import build_st_model

    folder = tmp_path_factory.mktemp("prompted") / "model"
    upstream = build_st_model(tiny_hf_dir, dense=False)
    upstream.prompts, upstream.default_prompt_name = dict(PROMPTS), "short"
    upstream.set_pooling_include_prompt(request.param)
    upstream.save(str(folder))
    return SentenceTransformer(folder, device="cpu"), STModel(str(folder), device="cpu")


@pytest.mark.parametrize("call", [
    {}, {"prompt_name": "query"}, {"prompt": "the cat "}, {"prompt": ""}, {"prompt_name": "document"},
    {"prompt": "x ", "prompt_name": "query"}])  # both: the prompt wins, with a warning
@pytest.mark.parametrize("method", ["encode", "encode_query", "encode_document"])
def test_prompts_give_upstreams_embeddings(prompt_pair, method, call):
    ours, theirs = prompt_pair
    assert ours.prompts == theirs.prompts and ours.default_prompt_name == theirs.default_prompt_name == "short"
    assert ours[1].include_prompt == theirs[1].include_prompt
    got = getattr(ours, method)(TINY_SENTENCES, **call)
    np.testing.assert_allclose(got, getattr(theirs, method)(TINY_SENTENCES, **call), atol=1e-5)
    if not call and method == "encode":  # the default prompt is used: not the same as no prompt at all
        assert not np.allclose(got, ours.encode(TINY_SENTENCES, prompt=""), atol=1e-3)


def test_pooling_leaves_the_prompt_out_as_upstream_in_every_mode_and_padding_side():
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    from minist.pooling import MODES, Pooling

    torch.manual_seed(0)
    tokens = torch.randn(4, 7, 5)
    right = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4, [1] * 2 + [0] * 5])  # last two: prompt only
    for mask in (right, right.flip(dims=[1])):  # right padding, then left padding
        for mode in MODES:
            features = {"token_embeddings": tokens, "attention_mask": mask, "prompt_length": 3}
            ours = Pooling(5, mode, include_prompt=False)(dict(features))["sentence_embedding"]
            theirs = STPooling(5, mode, include_prompt=False)(dict(features))["sentence_embedding"]
            if mode == "max":  # a row of prompt only: upstream gives -inf, minist -1e9 (finite, same ranking)
                assert (ours[2:] == -1e9).all() and (theirs[2:] == -torch.inf).all()
                ours, theirs = ours[:2], theirs[:2]
            torch.testing.assert_close(ours, theirs, msg=f"{mode}, padding {'right' if mask is right else 'left'}")


def test_prompts_given_in_the_constructor_win_over_the_saved_ones_and_are_saved(tmp_path, tiny_st_dir):
    ours = SentenceTransformer(tiny_st_dir, device="cpu", prompts={"query": "query: "}, default_prompt_name="query")
    theirs = STModel(str(tiny_st_dir), device="cpu", prompts={"query": "query: "}, default_prompt_name="query")
    assert ours.prompts == theirs.prompts == {"query": "query: ", "document": ""}
    assert "prompts={'query': 'query: '}, default_prompt_name='query'" in repr(ours)  # and so in cache fingerprints
    ours.save(tmp_path / "ours")
    reloaded = STModel(str(tmp_path / "ours"), device="cpu", prompts={"query": "q: "})
    assert reloaded.prompts == {"query": "q: ", "document": ""} and reloaded.default_prompt_name == "query"
    mine = SentenceTransformer(tmp_path / "ours", device="cpu", prompts={"query": "q: "})
    assert mine.prompts == reloaded.prompts and mine.default_prompt_name == "query"
    np.testing.assert_allclose(mine.encode(TINY_SENTENCES), reloaded.encode(TINY_SENTENCES), atol=1e-5)


def test_unknown_prompt_names_are_refused_by_both(pair, tiny_st_dir):
    for model in pair:
        with pytest.raises(ValueError, match="nope"):
            model.encode(TINY_SENTENCES, prompt_name="nope")
    for model_class in (SentenceTransformer, STModel):
        with pytest.raises(ValueError, match="nope"):
            model_class(str(tiny_st_dir), device="cpu", prompts={"query": "q: "}, default_prompt_name="nope")
    with pytest.raises(TypeError, match="prompt must be a string"):
        pair[0].encode(TINY_SENTENCES, prompt=3)


def test_set_pooling_include_prompt_as_upstream(tiny_st_dir):
    ours = SentenceTransformer(tiny_st_dir, device="cpu", prompts=PROMPTS)
    theirs = STModel(str(tiny_st_dir), device="cpu", prompts=PROMPTS)
    for model in (ours, theirs):
        model.set_pooling_include_prompt(False)
    assert ours[1].include_prompt is theirs[1].include_prompt is False
    np.testing.assert_allclose(ours.encode_query(TINY_SENTENCES), theirs.encode_query(TINY_SENTENCES), atol=1e-5)


@pytest.mark.parametrize("safe", [True, False])
def test_save_safe_serialization_writes_upstreams_files(tmp_path, tiny_st_dir, safe):
    ours, theirs = SentenceTransformer(tiny_st_dir, device="cpu"), STModel(str(tiny_st_dir), device="cpu")
    ours.save(tmp_path / "ours", safe_serialization=safe)
    theirs.save(str(tmp_path / "theirs"), safe_serialization=safe)
    for step in ("", "2_Dense"):
        weights = {p.name for p in (tmp_path / "ours" / step).iterdir() if p.suffix in (".bin", ".safetensors")}
        assert weights == {p.name for p in (tmp_path / "theirs" / step).iterdir()
                           if p.suffix in (".bin", ".safetensors")}
    assert (tmp_path / "ours" / "2_Dense" / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    np.testing.assert_allclose(STModel(str(tmp_path / "ours"), device="cpu").encode(TINY_SENTENCES),
                               theirs.encode(TINY_SENTENCES), atol=1e-5)


# --- issue 24: the last mile of drop-in ------------------------------------------------------------------------
@pytest.fixture
def heard(caplog):
    """``heard("minist")``: the warnings logged so far by that library (each "once" message heard afresh), but
    minist's own count of truncated texts, which upstream does not log."""
    log_once.cache_clear()
    logging.Logger.warning_once.cache_clear()  # transformers' once-per-process, which upstream logs through
    caplog.set_level(logging.WARNING)
    yield lambda library: [r.getMessage() for r in caplog.records
                           if r.name.split(".")[0] == library and r.msg != TRUNCATED]
    log_once.cache_clear()


def raised(function, *args, **kwargs) -> tuple[type, str] | None:
    """The type and message of what ``function(*args, **kwargs)`` raises, or None."""
    try:
        function(*args, **kwargs)
    except Exception as error:
        return type(error), str(error)
    return None


def test_encode_takes_inputs_and_the_older_sentences_with_upstreams_warning_once(pair, heard):
    ours, theirs = pair
    for method in ("encode", "encode_query", "encode_document"):
        np.testing.assert_allclose(getattr(ours, method)(inputs=TINY_SENTENCES),
                                   getattr(theirs, method)(inputs=TINY_SENTENCES), atol=1e-5)
        for _ in range(2):
            np.testing.assert_allclose(getattr(ours, method)(sentences=TINY_SENTENCES[:3]),
                                       getattr(theirs, method)(sentences=TINY_SENTENCES[:3]), atol=1e-5)
    assert heard("minist") == heard("sentence_transformers") == [
        "The `sentences` argument was renamed and is now deprecated. Please use `inputs` instead."]


def test_none_means_what_it_means_upstream(pair):
    ours, theirs = pair
    for name in ("precision", "prompt_name", "prompt", "truncate_dim", "chunk_size"):  # None: the default
        np.testing.assert_allclose(ours.encode(TINY_SENTENCES, **{name: None}),
                                   theirs.encode(TINY_SENTENCES, **{name: None}), atol=1e-5)
    # output_value=None: every feature of every text, as a dict; minist cuts each to the text's own tokens
    ours_all, theirs_all = ours.encode(TINY_SENTENCES, output_value=None), theirs.encode(TINY_SENTENCES,
                                                                                         output_value=None)
    assert isinstance(ours_all, list) and len(ours_all) == len(theirs_all) == len(TINY_SENTENCES)
    for mine, upstream in zip(ours_all, theirs_all, strict=True):
        assert set(mine) == set(upstream) - {"modality"}  # upstream's multimodal tag: minist reads text only
        real = upstream["attention_mask"].bool()
        assert mine["attention_mask"].all() and len(mine["attention_mask"]) == real.sum()
        assert mine["input_ids"].tolist() == upstream["input_ids"][real].tolist()
        torch.testing.assert_close(mine["token_embeddings"], upstream["token_embeddings"][real], atol=1e-5, rtol=0)
        torch.testing.assert_close(mine["sentence_embedding"], upstream["sentence_embedding"], atol=1e-5, rtol=0)
    single = ours.encode(TINY_SENTENCES[0], output_value=None, truncate_dim=3)
    assert isinstance(single, dict) and single["sentence_embedding"].shape == (3,)
    with pytest.raises(ValueError, match="output_value=None"):
        ours.encode(TINY_SENTENCES, output_value=None, precision="int8")


def test_util_truncate_embeddings_and_quantize_embeddings_are_upstreams(pair):
    ours, _ = pair
    embeddings = ours.encode(TINY_SENTENCES)
    for given in (embeddings, torch.from_numpy(embeddings)):
        for dim in (None, 3, 8):
            got, expected = util.truncate_embeddings(given, dim), st_util.truncate_embeddings(given, dim)
            assert type(got) is type(expected) and got.shape == expected.shape and (got == expected).all()
    for bad in (0, -2, 9):  # upstream gives an empty, a cut-from-the-end or an uncut matrix: minist says why not
        with pytest.raises(ValueError, match="truncate_dim must be from 1 to 8"):
            util.truncate_embeddings(embeddings, bad)
    np.testing.assert_array_equal(util.quantize_embeddings(embeddings, "int8"),
                                  st_util.quantize_embeddings(embeddings, "int8"))


def test_pooling_legacy_keywords_and_invalid_modes_as_upstream(heard):
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    from minist.pooling import Pooling

    for kwargs in ({"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True},
                   {"pooling_mode": "max", "pooling_mode_cls_token": True},  # pooling_mode wins, with the warning
                   {"pooling_mode_mean_tokens": False}):
        with warnings.catch_warnings(record=True) as ours_warned:
            warnings.simplefilter("always")
            ours = Pooling(4, **kwargs)
        with warnings.catch_warnings(record=True) as theirs_warned:
            warnings.simplefilter("always")
            theirs = STPooling(4, **kwargs)
        assert ours.pooling_mode == theirs.pooling_mode
        assert [(w.category, str(w.message)) for w in ours_warned] == [(w.category, str(w.message))
                                                                      for w in theirs_warned]
        assert ours_warned[0].category is FutureWarning and ours_warned[0].filename == __file__  # the caller's line
    ours, theirs = Pooling(word_embedding_dimension=4), STPooling(word_embedding_dimension=4)
    assert ours.get_embedding_dimension() == theirs.get_embedding_dimension() == 4
    assert heard("minist") == heard("sentence_transformers") == [
        "The `word_embedding_dimension` argument was renamed and is now deprecated. Please use `embedding_dimension` "
        "instead."]
    for mode in ("median", ("cls", "median"), ["MEAN"]):
        assert raised(Pooling, 4, mode) == raised(STPooling, 4, mode) == (ValueError, (
            f"Invalid pooling mode: {'MEAN' if mode == ['MEAN'] else 'median'!r}. Valid pooling modes are: ('cls', "
            "'max', 'mean', 'mean_sqrt_len_tokens', 'weightedmean', 'lasttoken')."))


def test_matryoshka_loss_checks_as_upstream(tiny_st_dir, heard):
    from sentence_transformers.sentence_transformer import losses as st_losses

    for truncate_dim in (None, 4):  # the model's own size counts, whatever its truncate_dim
        ours = SentenceTransformer(tiny_st_dir, device="cpu", truncate_dim=truncate_dim)
        theirs = STModel(str(tiny_st_dir), device="cpu", truncate_dim=truncate_dim)
        for dims, weights in [([], None), ([0, 4], None), ([8, -1], None), ([8, 4], [1.0]), ([16, 4], None),
                              ([8, 4], [2, 1]), ([4, 2], None)]:
            assert raised(losses.MatryoshkaLoss, ours, losses.CoSENTLoss(ours), dims, weights) == \
                raised(st_losses.MatryoshkaLoss, theirs, st_losses.CoSENTLoss(theirs), dims, weights)
    assert heard("minist") == heard("sentence_transformers")[-2:] == 2 * [  # [4, 2] lacks the full 8
        "The model's embedding dimension 8 is not included in matryoshka_dims: [4, 2]. This means that the full model "
        "dimension won't be trained, which may lead to degraded performance when using the model without specifying "
        "a lower truncation dimension. It is strongly recommended to include 8 in matryoshka_dims."]


def test_contrastive_loss_checks_labels_on_the_first_batch_only_as_upstream(pair):
    from sentence_transformers.sentence_transformer import losses as st_losses

    embeddings = [torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    for first, second in (([1.0, 0.0, 1.0], [0.5, 0.2, 1.0]), ([0.5, 1.0, 0.0], [0.5, 0.0, 1.0])):
        caught = []
        for library, model in ((losses, pair[0]), (st_losses, pair[1])):
            loss = library.ContrastiveLoss(model)
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                values = [loss.compute_loss_from_embeddings(embeddings, torch.tensor(labels))
                          for labels in (first, second)]
            caught.append(([str(w.message) for w in warned], [v.item() for v in values]))
        assert caught[0][0] == caught[1][0] and caught[0][1] == pytest.approx(caught[1][1], abs=1e-6)
        assert len(caught[0][0]) == (first[0] == 0.5)  # only the first batch is looked at
    mismatch = [torch.randn(3, 8), torch.randn(3, 8)], torch.tensor([1.0, 0.0])
    assert raised(losses.ContrastiveLoss(pair[0]).compute_loss_from_embeddings, *mismatch) == \
        raised(st_losses.ContrastiveLoss(pair[1]).compute_loss_from_embeddings, *mismatch) == (
            ValueError, "ContrastiveLoss expects 3 labels (one per example), but got 2 labels with shape (2,).")


def test_prompt_warnings_and_errors_as_upstream(pair, tiny_st_dir, heard):
    ours, theirs = pair
    np.testing.assert_allclose(ours.encode(TINY_SENTENCES, prompt="q: ", prompt_name="query"),
                               theirs.encode(TINY_SENTENCES, prompt="q: ", prompt_name="query"), atol=1e-5)
    assert raised(ours.encode, ["a"], prompt_name="nope") == raised(theirs.encode, ["a"], prompt_name="nope")
    assert raised(SentenceTransformer, tiny_st_dir, device="cpu", default_prompt_name="nope") == \
        raised(STModel, str(tiny_st_dir), device="cpu", default_prompt_name="nope")
    kwargs = {"prompts": {"q": "query: ", "none": None}, "default_prompt_name": "q"}
    ours_q, theirs_q = SentenceTransformer(tiny_st_dir, device="cpu", **kwargs), STModel(str(tiny_st_dir),
                                                                                        device="cpu", **kwargs)
    assert ours_q.prompts == theirs_q.prompts  # None read as no prompt
    np.testing.assert_allclose(ours_q.encode(TINY_SENTENCES), theirs_q.encode(TINY_SENTENCES), atol=1e-5)
    assert heard("minist") == [m for m in heard("sentence_transformers") if "Loaded" not in m] == [
        "Provide either a `prompt`, a `prompt_name`, or neither, but not both. Ignoring the `prompt_name` in favor "
        "of `prompt`.",
        "Default prompt name is set to 'q'. This prompt applies unless overridden by `prompt`, `prompt_name`, or a "
        "method-specific prompt, including an empty prompt."]


def dense_folder(tmp_path, tiny_st_dir, **changes):
    folder = shutil.copytree(tiny_st_dir, tmp_path / "model")
    config_file = folder / "2_Dense" / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | changes))
    return folder


@pytest.mark.parametrize(("changes", "warned"), [
    ({"pooling": "mean", "version": 3}, "Ignoring unrecognized Dense config key(s) ['pooling', 'version']"),
    ({"activation_function": "os.system"}, "Activation function path 'os.system' is not trusted, falling back to "
                                           "the default activation function (Tanh)."),
    ({"use_residual": False, "module_input_name": "sentence_embedding", "module_output_name": None}, None),
])
def test_dense_config_loads_as_upstream(tmp_path, tiny_st_dir, heard, changes, warned):
    folder = dense_folder(tmp_path, tiny_st_dir, **changes)
    ours, theirs = SentenceTransformer(folder, device="cpu"), STModel(str(folder), device="cpu")
    np.testing.assert_allclose(ours.encode(TINY_SENTENCES), theirs.encode(TINY_SENTENCES), atol=1e-5)
    mine, upstream = heard("minist"), [m for m in heard("sentence_transformers") if "Dense" in m or "Activ" in m]
    assert [m[:len(warned)] for m in mine] == [m[:len(warned)] for m in upstream] == ([warned] if warned else [])


def test_dense_config_refusals(tmp_path, tiny_st_dir):
    folder = dense_folder(tmp_path, tiny_st_dir, activation_function="torch.tanh")  # a function, not a module
    assert raised(SentenceTransformer, folder, device="cpu")[1].endswith(
        raised(STModel, str(folder), device="cpu")[1])  # minist names the file first
    shutil.rmtree(folder)
    folder = dense_folder(tmp_path, tiny_st_dir, use_residual=True)  # upstream adds the input: minist leaves it out
    with pytest.raises(ValueError, match="use_residual=True, which minist's Dense leaves out"):
        SentenceTransformer(folder, device="cpu")
