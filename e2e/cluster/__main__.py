"""`python -m e2e.cluster`: start the real control plane by hand and keep it until Ctrl-C.

    python -m e2e.cluster [--dir DIR] [--user NAME[:GROUP]]...

Prints the admin kubeconfig's path (and one per --user), one `NAME=PID` line per
component, then `ready`, and waits. SIGINT or SIGTERM stops everything; so
does the death of this process by any signal (e2e/cluster/procs.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from e2e.cluster.launcher import Options, control_plane


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run until a signal; 0 after Ctrl-C, 128+N after signal N, 1 when start-up failed."""
    ap = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="data directory to create (kept afterwards); "
                    "default: a temporary one, removed afterwards")
    ap.add_argument("--user", action="append", default=[], metavar="NAME[:GROUP]",
                    help="also write a kubeconfig for this user (no rights until RBAC grants some)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    try:
        with control_plane(a.dir, Options()) as cp:
            print(f"kubeconfig: {cp.admin_kubeconfig}")
            for spec in a.user:
                name, _, group = spec.partition(":")
                print(f"kubeconfig {name}: {cp.kubeconfig(name, group=group or None)}")
            print(f"server: {cp.server}  (Kubernetes {cp.versions.kubernetes}, "
                  f"etcd {cp.versions.etcd})")
            for name, pid in cp.pids.items():
                print(f"{name}={pid}")
            print("ready", flush=True)
            signal.pause()
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
