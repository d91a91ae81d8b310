"""migrate: move running Kubernetes containers between nodes from CRIU checkpoints."""

__version__ = "0.1.0"
