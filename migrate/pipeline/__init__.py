"""The pipeline: what each command does, between the CLI (parsing, rendering) and the
adapters (the outside world).

The migration (`migrate pod`, `resume`, `rollback`; `drain` runs one per pod):
    migration/     the one entry point (plan, start, load; Migration.run, rollback,
                   report), the runner, one module per stage (checkpoint, build, create,
                   verify, switch-over, cleanup) and their typed results
    drain/         `migrate drain`: classify, plan, budgets, move, evict, state, report

What both share, and never import either of them:
    preflight.py   everything known before anything changes (names, nodes, placement,
                   runtimes, where the build runs, the registry); the Plan
    claims.py      one migration at a time per source pod
    journal.py     one JSON file per run, written after every step, versioned
                   (schemas/journal.schema.json); trust.py: how it reached its registry
    build.py, native.py, nodebuild.py, annotations.py, choices.py   the checkpoint
                   image, here or in a Job on the source node (`migrate build` too)
    manifest.py, restore.py, refusals.py, switchover.py   the restored pod, its start,
                   what a refusal means, the hand-over
    nodes.py, placement.py, selectors.py, names.py, containers.py, timing.py   shared
                   readings of cluster objects

Retention (`migrate prune`): prune/ (policy, protect, archives, onnode, nodes, images).

The other commands' services: checkpoint.py (`migrate checkpoint`), doctor.py and
probe.py (`migrate doctor`), manifest_request.py, archive_pod.py, binds.py (`migrate
manifest`), sandbox.py, sandbox_podman.py, libpod_rewrite.py (`migrate sandbox`),
incluster.py, schedule.py, templating.py (`migrate deploy`, `migrate schedule drain|prune`).
"""
