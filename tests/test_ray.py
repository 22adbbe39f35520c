"""minist.integrations.ray.Embedder: what it refuses when it is built, and every batch format Ray hands it.

The Embedder is called directly here (no cluster); one slow test runs it in a real Ray Data pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest

from minist import SentenceTransformer

pytestmark = pytest.mark.ray
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pytest.importorskip("ray.data")
from ray.data.extensions import ArrowTensorArray  # noqa: E402  (after the skips)

from minist.integrations.ray import Embedder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = [json.loads(line) for line in (ROOT / "data" / "corpus.jsonl").read_text().splitlines()][:7]
IDS, TEXTS = [row["id"] for row in CORPUS], [row["text"] for row in CORPUS]


@pytest.fixture(scope="module")
def tiny(tiny_st_dir):
    return SentenceTransformer(tiny_st_dir, device="cpu")


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_and_uint8_are_refused_when_the_embedder_is_built_with_the_way_out(tiny, precision):
    # Each batch would get its own ranges, and a last batch of one row fails the job after all the others ran.
    with pytest.raises(ValueError, match=rf"precision='{precision}'.*keep float32 here.*quantize_embeddings\("
                                         r".*ranges=\.\.\."):
        Embedder(tiny, precision=precision)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_precisions_quantize_row_by_row_and_are_taken(tiny, precision):
    embedder = Embedder(tiny, precision=precision)
    one = embedder({"text": np.array(TEXTS[:1])})["embedding"]  # a batch of one row is fine: no ranges
    np.testing.assert_array_equal(one, tiny.encode(TEXTS[:1], precision=precision))


def test_a_pyarrow_table_gets_a_tensor_column_equal_to_encode(tiny):
    table = pa.table({"id": IDS, "text": TEXTS})
    out = Embedder(tiny)(table)
    assert isinstance(out, pa.Table) and out.column_names == ["id", "text", "embedding"]
    assert out["id"].equals(table["id"]) and out["text"].equals(table["text"])  # the other columns pass through
    assert out.schema.field("embedding").type == ArrowTensorArray.from_numpy(np.zeros((1, 8), np.float32)).type
    embeddings = out["embedding"].combine_chunks().to_numpy()  # the (rows, dim) tensor column Ray makes of numpy
    assert embeddings.shape == (7, 8) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, tiny.encode(TEXTS), atol=1e-6)
    # The same numbers as the dict of numpy arrays (Ray's default) and the pandas DataFrame give.
    np.testing.assert_array_equal(embeddings, Embedder(tiny)({"text": np.array(TEXTS)})["embedding"])
    np.testing.assert_array_equal(embeddings, np.stack(Embedder(tiny)(table.to_pandas())["embedding"]))


def test_a_pyarrow_table_with_the_embedding_column_gets_it_replaced(tiny):
    table = pa.table({"embedding": [0] * 7, "text": TEXTS})
    out = Embedder(tiny, precision="ubinary")(table)
    assert out.column_names == ["embedding", "text"]
    np.testing.assert_array_equal(out["embedding"].combine_chunks().to_numpy(),
                                  tiny.encode(TEXTS, precision="ubinary"))


def test_an_empty_pyarrow_table_gives_an_empty_column(tiny):
    out = Embedder(tiny)(pa.table({"text": pa.array([], pa.string())}))
    assert out.num_rows == 0 and out["embedding"].combine_chunks().to_numpy().shape == (0, 8)


def test_a_null_text_in_a_pyarrow_table_is_named_by_row(tiny):
    with pytest.raises(TypeError, match="item 1 is a NoneType"):
        Embedder(tiny)(pa.table({"text": ["a cat", None]}))


@pytest.mark.parametrize("batch_type", [dict, pd.DataFrame, pa.table])
def test_a_missing_text_column_lists_the_real_column_names(tiny, batch_type):
    batch = batch_type({"id": np.array(IDS), "body": np.array(TEXTS)})
    with pytest.raises(KeyError, match=r"has no column 'text' \(it has \['id', 'body'\]\); name the text column "
                                       r"with Embedder\(\.\.\., text_column=\.\.\.\)"):
        Embedder(tiny)(batch)


@pytest.mark.parametrize("batch", [[{"text": "a cat"}], np.array(["a cat"]), pa.record_batch({"text": ["a cat"]})])
def test_other_batch_types_are_refused_by_type_with_the_formats_taken(tiny, batch):
    with pytest.raises(TypeError, match=rf"numpy arrays, a pandas DataFrame or a pyarrow Table, not a "
                                        rf"{type(batch).__name__} \(map_batches' batch_format 'numpy', 'pandas' or"):
        Embedder(tiny)(batch)


@pytest.mark.slow
def test_a_ray_pipeline_in_pyarrow_batches_ends_on_a_batch_of_one_row(ray_cluster, tiny, tiny_st_dir):
    # 7 rows in batches of 3: the last batch holds one row, where int8 used to fail the job.
    rows = [{"id": i, "text": t} for i, t in zip(IDS, TEXTS, strict=True)]
    out = ray_cluster.data.from_items(rows).map_batches(
        Embedder, fn_constructor_kwargs={"model": str(tiny_st_dir), "device": "cpu", "precision": "ubinary"},
        compute=ray_cluster.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=3, batch_format="pyarrow",
    ).take_batch(7, batch_format="numpy")
    assert sorted(out["id"]) == sorted(IDS) and out["embedding"].shape == (7, 1)  # 8 dimensions, packed
    by_id = dict(zip(out["id"], out["embedding"], strict=True))
    np.testing.assert_array_equal(np.stack([by_id[i] for i in IDS]), tiny.encode(TEXTS, precision="ubinary"))
