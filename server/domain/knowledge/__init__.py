"""Knowledge chunks and their embeddings for retrieval."""
