"""Pure nn.Modules (no I/O) and their loaders (load.py)."""
