"""redline: a contained Inspect harness for the self-replication red line."""

__version__ = "0.1.0"
