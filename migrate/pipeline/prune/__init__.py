"""`migrate prune`: retention of checkpoint archives on the nodes and images in the registry.

    policy.py    the kubelet's archive names, and which archives the rules remove
    protect.py   what a running or interrupted migration still needs (journals, claims)
    archives.py  pruning one checkpoint directory readable here (and what a node Job runs)
    onnode.py    the Job that prunes a node's directory where it is
    nodes.py     which nodes, where each is pruned, the report
    images.py    checkpoint images in the registry: prune, and a migration's own images
"""
