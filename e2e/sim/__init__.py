"""A local Kubernetes cluster simulator: a real HTTPS API server, simulated nodes.

The API server speaks the real REST protocol (discovery, CRUD, selectors,
patches, watches, Status errors, Table printing), so the official `kubernetes`
Python client and kubectl work against it unchanged; scheduling and kubelets
are simulated (nothing runs). See simulator.py for the in-process API and
__main__.py for the command line:

    python -m e2e.sim --state DIR [--nodes node-a,node-b] [--port 0]

Layout, bottom up:

    store.py       objects, the global resourceVersion, watch history
    rest.py        generic object semantics (create/update/patch/delete rules)
    api.py         routing and handlers; watch.py streams watches;
                   discovery.py, openapi.py, tables.py what clients read
    server.py      HTTPS, bearer tokens, HTTP/1.1 (protocol.py: what it hands api.py)
    resources.py   what a kind is; core.py the core/v1 kinds
    controllers.py scheduler, namespace controller; kubelet.py the nodes
    simulator.py   wires them together
"""

from e2e.sim.simulator import DEFAULT_NODES, Simulator

__all__ = ["DEFAULT_NODES", "Simulator"]
