"""The real parts of the test world: Podman + runc + CRIU checkpoints of a real workload.

tools.py (where scripts/setup-real put CRIU, crit, checkpointctl), podman.py (a
private Podman per session), workload.py (the busybox process tree and its
checkpoint), truth.py (what /proc shows), crio.py (CRI-O's layout around `runc
checkpoint`). The pytest fixtures are in tests/real.py.
"""
