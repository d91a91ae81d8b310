"""Checkpoint archives made to order: archivegen.py (CRI-O's and containerd's layout,
the seed article's `counters` and variants), criu_encode.py (CRIU images through
CRIU's own pycriu), filesgen.py (the files of a generated container)."""
