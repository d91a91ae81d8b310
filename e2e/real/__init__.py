"""The real parts of the test world: Podman + runc + CRIU checkpoints of a real workload.

tools.py (where scripts/setup-real put CRIU, crit, checkpointctl), podman.py (a
private Podman per session), workload.py (the busybox process tree, its image and
pod, and its checkpoint), truth.py (what /proc shows), counter.py (the counters
workload and its image). CRI-O's checkpoints come from a real kubelet and CRI-O
(e2e/cluster/realnode.py). The pytest fixtures are in tests/real.py.
"""
