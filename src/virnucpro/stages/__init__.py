"""Pure CPU stages: read, chunk, translate/select frames, write results and intermediates,
reuse the original VirNucPro's embeddings, export embeddings."""
