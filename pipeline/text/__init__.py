"""Text work that needs no model and no state: page extraction, sentences with offsets, chunking, URLs, named entities, the deterministic fact rules, edit distance, and prompt-injection detection."""
