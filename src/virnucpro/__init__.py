"""virnucpro: the VirNucPro viral-DNA classifier, rebuilt for throughput on every GPU."""

from virnucpro.engine.bytecode import resume_in_worker

__version__ = "0.1.0"

resume_in_worker()  # a spawned worker, before it imports torch (engine/bytecode.py)
