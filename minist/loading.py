"""Read a model folder in sentence-transformers' layout into its steps, naming any file that is wrong.

``modules.json`` lists the steps in order, each with its class (``...Transformer``, ``...Pooling``,
``...Dense``, ``...Normalize``) and its subfolder (``""`` for the transformer, then ``1_Pooling``, ...);
``load_steps`` builds each one with its own ``load``. A plain Hugging Face folder (no ``modules.json``) gets
mean pooling, as in sentence-transformers. Each file is checked as it is read: a damaged or malformed one is
a ValueError naming the file and what is wrong (``minist.inputs.read_json``), and a step whose sizes do not fit
the one before it is named too. The transformer's own folder (config, weights, tokenizer) is read by
``load_transformer``: a file that transformers, tokenizers or safetensors cannot read is named
(``blamed_on``), and so are weights that are missing, which transformers would fill with random numbers.
The writing side is ``minist.saving``.
Left out: custom step classes and ``trust_remote_code``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath

import transformers
from torch import nn
from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from minist import bert
from minist.dense import Dense
from minist.inputs import check_count, check_text, json_field, read_json
from minist.normalize import Normalize
from minist.pooling import Pooling
from minist.similarity import SIMILARITY_FUNCTIONS
from minist.transformer import Backend, Transformer, position_limit

logger = logging.getLogger("minist")

# modules.json names a step by its sentence-transformers class; minist matches on the class name
# (old "sentence_transformers.models.Pooling" and v6 "...modules.pooling.Pooling" alike).
STEPS = {"Transformer": Transformer, "Pooling": Pooling, "Dense": Dense, "Normalize": Normalize}


# --- the transformer's folder ------------------------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' own bars ("Loading weights ...") while minist loads or saves, then restore them."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextmanager
def blamed_on(path: Path, what: str) -> Iterator[None]:
    """Re-raise a loader's failure as a ValueError naming the file it was reading (the cause stays chained).

    transformers, tokenizers, safetensors and pickle each fail in their own way on a damaged file, hence the
    broad except; a missing package or memory is not the file's fault and passes through.
    """
    try:
        yield
    except (ImportError, MemoryError):
        raise
    except Exception as error:
        raise ValueError(f"{path}: {what} failed ({type(error).__name__}: {error})") from error


def check_model_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming what a Hugging Face model folder lacks: config, weights or tokenizer."""
    wanted = {"a config": ("config.json",), "weights": WEIGHT_FILES, "a tokenizer": TOKENIZER_FILES}
    missing = [f"{what} ({' or '.join(names)})" for what, names in wanted.items()
               if not any((folder / name).is_file() for name in names)]
    if missing:
        raise FileNotFoundError(f"The model folder {folder} has no {' and no '.join(missing)}.")


def load_config(folder: Path):
    """``folder/config.json`` -> transformers' config; a bad file or an unknown architecture is named."""
    path = folder / "config.json"
    try:
        return AutoConfig.from_pretrained(folder)
    except Exception as error:
        model_type = json_field(read_json(path), "model_type", str, path)  # first: is it JSON, with a model_type?
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{folder} holds a {model_type!r} model, which transformers {transformers.__version__} "
                             "cannot load (unknown architecture; a newer transformers may know it).") from error
        with blamed_on(path, "reading the model's config"):
            raise  # transformers' own error, which blamed_on re-raises with the file named


def load_weights(folder: Path, config, backend: Backend) -> nn.Module:
    """The model with its weights; a weights file that is damaged, or lacks some of the weights, is named."""
    weights = next(folder / name for name in WEIGHT_FILES if (folder / name).is_file())
    with quiet_progress_bars(), blamed_on(weights, "loading the weights"):
        if backend == "minist":
            return bert.BertModel.from_pretrained(folder)  # it checks that every weight is there
        model, info = AutoModel.from_pretrained(folder, config=config, output_loading_info=True)
    # transformers fills missing weights with random numbers and only logs it; the pooler is never used.
    missing = sorted(key for key in info["missing_keys"] if not key.startswith("pooler."))
    if missing:
        raise ValueError(f"{weights} lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}, ...); "
                         "transformers would fill them with random numbers.")
    return model


def load_tokenizer(folder: Path):
    """The fast tokenizer of ``folder``; when loading fails, the file to blame is named."""
    try:
        with quiet_progress_bars():
            return AutoTokenizer.from_pretrained(folder)
    except Exception:
        for name in TOKENIZER_JSON_FILES:  # a damaged JSON file names itself
            if (folder / name).is_file():
                read_json(folder / name)
        main = next(folder / name for name in TOKENIZER_FILES if (folder / name).is_file())
        with blamed_on(main, "building the tokenizer"):
            raise  # as in load_config


def load_transformer(folder: Path, backend: Backend = "hf") -> Transformer:
    """The first step, from a Hugging Face model folder; ``sentence_bert_config.json``, when present, sets
    the options.

    ``backend="minist"`` runs the from-scratch ``minist.bert.BertModel`` instead of transformers' model;
    "onnx" loads transformers' model, which ``SentenceTransformer`` then exports (``minist.ort``).
    """
    if backend not in ("hf", "minist", "onnx"):
        raise ValueError(f"backend must be 'hf' (transformers), 'minist' (minist.bert) or 'onnx' (ONNX Runtime), "
                         f"not {backend!r}.")
    folder = Path(folder)
    check_model_folder(folder)
    options_file = folder / "sentence_bert_config.json"
    options = read_json(options_file) if options_file.is_file() else {}
    saved_length = json_field(options, "max_seq_length", (int, type(None)), options_file, None)
    do_lower_case = json_field(options, "do_lower_case", bool, options_file, False)
    check_count(f"{options_file}: max_seq_length", saved_length, optional=True)
    config = load_config(folder)
    auto_model = load_weights(folder, config, backend)
    tokenizer = load_tokenizer(folder)
    # As in sentence-transformers: the saved max_seq_length, else the tokenizer's limit, never past the
    # model's position table (which sentence-transformers takes to be max_position_embeddings: for
    # RoBERTa, 2 too many, so a long text fails there).
    max_seq_length, limit = saved_length or int(tokenizer.model_max_length), position_limit(config)
    if limit is not None and max_seq_length > limit:
        if saved_length is not None:
            logger.warning("%s asks for max_seq_length=%d, but the model's position table holds %d tokens: "
                           "using %d.", options_file, saved_length, limit, limit)
        max_seq_length = limit
    return Transformer(auto_model.eval(), tokenizer, max_seq_length, do_lower_case)


# --- the model's folder ------------------------------------------------------------------------------------
def read_modules_json(path: Path) -> list[tuple[str, str]]:
    """``modules.json`` -> (step class name, relative folder) per step, in file order as sentence-transformers reads it.

    >>> from minist.hub import resolve_model_folder
    >>> read_modules_json(resolve_model_folder("all-MiniLM-L6-v2") / "modules.json")
    [('Transformer', ''), ('Pooling', '1_Pooling'), ('Normalize', '2_Normalize')]
    """
    steps = []
    for i, entry in enumerate(read_json(path, list)):
        if not isinstance(entry, dict):
            raise ValueError(f"{path} is damaged: entry {i} is {entry!r:.60}, not an object with 'type' and 'path'.")
        kind = json_field(entry, "type", str, f"{path} entry {i}").rsplit(".", 1)[-1]
        folder = json_field(entry, "path", str, f"{path} entry {i}")
        if kind not in STEPS:
            raise ValueError(f"{path} lists a {entry['type']} step; minist runs only {', '.join(STEPS)}.")
        # A step's folder stays inside the model's folder (sentence-transformers refuses the same).
        if PurePosixPath(folder).is_absolute() or PureWindowsPath(folder).anchor or ".." in Path(folder).parts:
            raise ValueError(f"{path}: entry {i} points outside the model folder (path {folder!r}).")
        steps.append((kind, folder))
    if not steps or steps[0][0] != "Transformer":
        raise ValueError(f"{path} must list a Transformer step first; it lists {[kind for kind, _ in steps]}.")
    return steps


def load_steps(folder: Path, backend: Backend = "hf") -> list[nn.Module]:
    """Build the steps that ``folder/modules.json`` lists; a plain Hugging Face folder gets mean pooling."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        transformer = load_transformer(folder, backend)
        logger.warning("%s has no modules.json (not a sentence-transformers model): using mean pooling.", folder)
        return [transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")]
    steps = []
    for kind, path in read_modules_json(modules_file):
        if kind == "Normalize":
            steps.append(Normalize())
        elif kind == "Transformer":
            steps.append(load_transformer(folder / path, backend))
        else:
            steps.append(STEPS[kind].load(folder / path))
            check_sizes_fit(steps, folder / path / "config.json")
    return steps


def output_dimension(steps: Iterable[nn.Module]) -> int:
    """The size of what the steps give: the last step that changes it decides, else the transformer's width."""
    steps = list(steps)
    return next((step.get_sentence_embedding_dimension() for step in reversed(steps)
                 if hasattr(step, "get_sentence_embedding_dimension")), steps[0].get_word_embedding_dimension())


def check_sizes_fit(steps: list[nn.Module], config_file: Path) -> None:
    """The last step's input size must be what the steps before it give: a wrong config.json is named."""
    *before, step = steps
    given = output_dimension(before)
    wanted = step.embedding_dimension if isinstance(step, Pooling) else step.linear.in_features
    if wanted != given:
        raise ValueError(f"{config_file} says the step takes vectors of size {wanted}, but the steps before it "
                         f"give {given}.")


def read_model_config(path: Path) -> dict:
    """What ``config_sentence_transformers.json`` sets for ``encode`` and ``similarity``, each key checked:
    ``similarity_fn_name``, ``prompts`` (name -> text) and ``default_prompt_name``; {} when there is no file."""
    if not path.is_file():
        return {}
    config = read_json(path)
    name = json_field(config, "similarity_fn_name", (str, type(None)), path, None)
    if name is not None and name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"{path}: unknown similarity_fn_name {name!r}; minist has {', '.join(SIMILARITY_FUNCTIONS)}.")
    prompts = json_field(config, "prompts", dict, path, {})
    if not all(isinstance(text, str) for text in prompts.values()):
        raise ValueError(f"{path}: every prompt must be a string, not {prompts!r:.80}.")
    for prompt_name, text in prompts.items():  # JSON's "\ud800" escape reads as a lone surrogate: named now
        check_text(text, f"{path}: prompt {prompt_name!r}")  # rather than by the tokenizer at the first encode
    return {"similarity_fn_name": name, "prompts": prompts,
            "default_prompt_name": json_field(config, "default_prompt_name", (str, type(None)), path, None)}
