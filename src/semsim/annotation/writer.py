"""Group commit for a server: concurrent answers share one durable commit, and each fails only on its own.

Submits wait in a queue; one thread stores whatever has gathered in a single transaction, so many answers share
one fsync. ``submit`` returns only after the commit that holds the answer, so an acknowledged answer is on
disk. Answers are checked before they are queued; should a batch still fail (a database error), its answers
are retried one by one, so the error reaches only the answer that caused it. Stored skips and flags wake a
second thread that gives those items to other annotators (top-up only: nobody loses an item).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from sqlalchemy.exc import IntegrityError

from semsim.annotation.answers import AnswerRequest, check_answer, outcome, store_answers
from semsim.annotation.assignment import assign
from semsim.annotation.db import Database
from semsim.annotation.project import NOT_JUDGMENTS, ProjectInfo

Result = bool | Exception


class AnswerWriter:
    """The server's single writer of answers (see the module docstring)."""

    def __init__(self, db: Database, info: ProjectInfo, max_batch: int = 256):
        self.db, self.info, self.max_batch = db, info, max_batch
        self._queue: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # sizes of the last commits (statistics for the benchmark)
        self._thread = threading.Thread(target=self._loop, name="semsim-answer-writer", daemon=True)
        self._thread.start()
        self.top_up = TopUp(db)

    def enqueue(self, annotator_id: int, item_id: object, value: object, submit_id: object = None) -> Future:
        """Check and queue an answer (a bad field raises now); the future resolves to what
        :func:`~semsim.annotation.answers.store_answers` says for it once it is committed."""
        request = check_answer(self.info, annotator_id, item_id, value, submit_id)
        done: Future = Future()
        self._queue.put((request, done))
        return done

    def submit(self, annotator_id: int, item_id: object, value: object, submit_id: object = None) -> bool:
        """Like :func:`~semsim.annotation.answers.submit_answer`, through the shared commit."""
        return outcome(self.enqueue(annotator_id, item_id, value, submit_id).result())

    def _gather(self, first: tuple) -> list[tuple]:
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._queue.put(None)
                break
            batch.append(more)
        return batch

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = self._gather(first)
            results = self.store([req for req, _ in batch])
            self.batches = [*self.batches[-999:], len(batch)]
            for (req, done), result in zip(batch, results, strict=True):
                if result is True and req.value in NOT_JUDGMENTS:
                    self.top_up.wake()
                done.set_result(result)

    def store(self, requests: list[AnswerRequest]) -> list[Result]:
        """Store a batch in one commit; when that fails, one commit per answer, each with its own outcome."""
        try:
            return list(store_answers(self.db, requests))
        except Exception:  # isolate: the answers are retried one by one below
            return [self._single(req) for req in requests]

    def _single(self, request: AnswerRequest) -> Result:
        try:
            return store_answers(self.db, [request])[0]
        except IntegrityError:  # a concurrent identical submit won (databases without SQLite's write lock)
            return False
        except Exception as exc:  # this answer's own failure, handed to its request only
            return exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.top_up.close()


class TopUp:
    """A thread that runs :func:`~semsim.annotation.assignment.assign` (without moves) when woken; wakes that
    come while it runs are merged into one more run."""

    def __init__(self, db: Database):
        self.db = db
        self.errors: list[str] = []
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="semsim-top-up", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            self._wake.clear()
            try:
                assign(self.db, move=False)
            except Exception as exc:  # shown on the admin dashboard; the next skip tries again
                self.errors = [*self.errors[-9:], f"{type(exc).__name__}: {exc}"]

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)
