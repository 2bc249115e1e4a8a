"""The models: pure nn.Modules (esm2.py, dnabert_s.py, classifier.py: torch only, no I/O),
their loaders (*_loader.py, reading the released files through safe_load.py, with the caches
they look in named by caches.py), and bundle.py, which finds and loads the three a run needs."""
