"""`migrate drain`: empty a node, moving what can move with its memory.

One module per step:

    classify.py  each pod's action (migrate, evict, skip, blocked) and reason
    place.py     destinations: the scheduler's checks, then the least loaded
    plan.py      the request and the plan (read-only: what --dry-run prints)
    budgets.py   PodDisruptionBudgets, with migrations in flight counted
    move.py      one pod through the `migrate pod` pipeline (its own journal)
    evict.py     one pod through the Eviction API, 429 waited out
    state.py     the drain's journal, shared by the worker threads
    run.py       cordon -> plan -> drain (a bounded thread pool), resume
    report.py    the per-pod report (schemas/drain.schema.json)
"""
