"""minist: sentence embeddings from text to pooled vector, in small readable steps.

The familiar API of sentence-transformers: ``SentenceTransformer``, ``util.cos_sim``, ...
"""

__version__ = "0.1.0"

from minist import util  # noqa: E402
from minist.model import SentenceTransformer  # noqa: E402

__all__ = ["SentenceTransformer", "util", "__version__"]
