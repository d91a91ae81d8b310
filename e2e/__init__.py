"""Test infrastructure: the checkpoint archive generator and (later) the cluster simulator."""
