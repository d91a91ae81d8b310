"""The migration (`migrate pod`, `resume`, `rollback`; `drain` runs one per pod).

    api.py        the entry point: plan, start, load; Migration.run, rollback, report
    runner.py     the stages in order, resume, rollback, and the rules they keep
    checkpoint.py, build.py, create.py, verify.py, switchover.py, cleanup.py
                  one module per stage, each returning its result
    results.py    the stages' results: frozen dataclasses, kept in the journal
    run.py        what the stages share (`Run`)
    report.py     the report (schemas/pod.schema.json)

Preflight (the plan), claims and the journal are in migrate/pipeline beside it:
the drain and `migrate history` read them too.
"""

from migrate.pipeline.migration.api import (
    Interrupted,
    Migration,
    Planned,
    load,
    plan,
    start,
)
from migrate.pipeline.migration.run import Progress, Run
from migrate.pipeline.migration.runner import STAGE_FUNCTIONS, STAGES, StageFailed

__all__ = ["STAGES", "STAGE_FUNCTIONS", "Interrupted", "Migration", "Planned", "Progress",
           "Run", "StageFailed", "load", "plan", "start"]
