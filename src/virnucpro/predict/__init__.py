"""Device-side work on one device: the predictor (tokenize, batch, both encoders, pool,
classify), its placement (compiled and warmed up while the weights are read and copied),
precision and memory budget, and the task the engine runs per shard."""
