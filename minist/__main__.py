"""``python -m minist``: the quick start. Loads all-MiniLM-L6-v2, encodes sentences, compares them."""

from minist import SentenceTransformer

model = SentenceTransformer("all-MiniLM-L6-v2")
embeddings = model.encode(["A man is eating food.", "A man is eating a piece of bread."])
print("embeddings:", embeddings.shape)
print(f"cosine similarity: {model.similarity(embeddings[0], embeddings[1]).item():.4f}")
query = model.encode_query("Which planet is the largest?")
documents = model.encode_document(["Jupiter is the largest planet.", "Dogs must not eat chocolate."])
print("query vs documents:", model.similarity(query, documents).numpy().round(2))
