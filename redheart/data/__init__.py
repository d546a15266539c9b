"""Phase 0 data: records read and validated, near-duplicates removed, the split, and segment embeddings."""
