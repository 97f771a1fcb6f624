"""The outside world behind small interfaces: the model gateway (and its test model), the vector store and embeddings, careful HTTP, and the editor's document (Google Docs or the local outbox)."""
