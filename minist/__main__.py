"""``python -m minist``: the quick start. Loads all-MiniLM-L6-v2, encodes two sentences, compares them."""

from minist import SentenceTransformer, util

model = SentenceTransformer("all-MiniLM-L6-v2")
embeddings = model.encode(["A man is eating food.", "A man is eating a piece of bread."])
print("embeddings:", embeddings.shape)
print(f"cosine similarity: {util.cos_sim(embeddings[0], embeddings[1]).item():.4f}")
