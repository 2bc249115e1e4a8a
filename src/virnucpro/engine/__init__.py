"""Runs model functions over batches on devices; knows no biology."""
