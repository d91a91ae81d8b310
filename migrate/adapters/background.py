"""Best-effort requests sent off the caller's path: Kubernetes Events.

Events are informational, and a failure to record one is only logged, so a
migration need not wait for them: client-go's event broadcaster queues them
and a goroutine of its own sends them, and `BackgroundSender` does the same
for migrate. A drain runs many migrations at once, each recording three
Events; sent inline they were about a sixth of each worker's time spent on the
API server.

What is queued is sent by up to ``workers`` threads, started on first use.
`flush` waits (bounded) until the queue is empty: commands call it before they
report, so the Events exist by the time the command ends, and whatever could
not be sent by then is counted in a warning, never silently lost. The queue
is bounded too: when it is full, the caller sends inline (back-pressure, not
loss).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Job = Callable[[], None]


class BackgroundSender:
    """A small pool of threads running queued jobs (each job handles its own errors)."""

    def __init__(self, workers: int = 2, capacity: int = 1000) -> None:
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=capacity)
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        """Run ``job`` in the background (inline when the queue is full)."""
        self._start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            _run(job)

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            for i in range(self._workers):
                # Daemon: a job stuck on a dead API server must not keep the process
                # alive; flush() is where waiting for them happens, bounded.
                t = threading.Thread(target=self._loop, name=f"migrate-events-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                _run(job)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float) -> int:
        """Wait until every queued job has run, at most ``timeout`` seconds.

        Returns how many were still pending when the time ran out (0: all done).
        """
        deadline = time.monotonic() + timeout
        # Queue.join() has no timeout: poll its counter under its own condition.
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return int(self._queue.unfinished_tasks)
                self._queue.all_tasks_done.wait(left)
        return 0


def _run(job: Job) -> None:
    try:
        job()
    except Exception:  # a job handles its own errors; a bug in one must not stop the pool
        log.warning("background request failed", exc_info=True)
