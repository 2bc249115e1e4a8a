"""virnucpro: the VirNucPro viral-DNA classifier, rebuilt for throughput on every GPU."""

__version__ = "0.1.0"
