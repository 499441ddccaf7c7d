"""``finbert2 serve``: embeddings, search and classification over HTTP (TEI- and OpenAI-shaped routes)."""
