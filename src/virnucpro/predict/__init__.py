"""Device-side work on one device: the predictor (tokenize, batch, both encoders, pool,
classify), its placement with compilation and warm-up beside the weight copy, precision and
memory budget, and the task the engine runs per shard."""
