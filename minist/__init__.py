"""minist: sentence embeddings from text to pooled vector, in small readable steps.

The familiar API of sentence-transformers: ``SentenceTransformer``, ``util.cos_sim``, ...
"""

__version__ = "0.1.0"

from minist import util
from minist.model import SentenceTransformer

__all__ = ["SentenceTransformer", "__version__", "util"]
