"""Benchmark of the annotation server: answers/s of one sequential annotator against 19 concurrent ones (p50/p99
of the answer round trip), the same concurrent load with SIGKILLs of the server (0 lost and 0 duplicated
acknowledged answers), and the dashboard and exports at 10,000 answers.

The server is a real ``serve`` process on a loopback socket held by the benchmark (a restarted server keeps
the port); with ``--flush-ms D`` its commits are followed by a D ms pause (emulating a disk whose flush takes
that long: the measured fsync time of the disk is printed, and a fast one makes every run CPU-bound). Each
annotator is a thread with one keep-alive HTTP/1.1 connection posting ``/api/answer`` and following
``next_item_id``. A connection failure (the server was killed) makes the annotator send the same
answer again; an answer stored before the kill then comes back as a duplicate, which is not stored twice.

    .venv/bin/python benchmarks/bench_annotation.py [--answers 300] [--kills 3] [--judged 10000]
        [--flush-ms 0 10] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import func, insert, select

from semsim.annotation import add_annotators, dashboard, init_project
from semsim.annotation.db import Annotator, Answer, Assignment, Database, utcnow
from semsim.annotation.export import export

CLASSES = ["a", "b", "c"]
SERVER = """
import sys, time
from semsim.annotation import writer
from semsim.annotation.app import serve

if {flush_s} > 0:  # emulate a slower flush: the writer acknowledges a batch only after the pause
    store = writer.store_answers

    def slow(db, requests):
        results = store(db, requests)
        time.sleep({flush_s})
        return results

    writer.store_answers = slow
serve(sys.argv[1], fd=int(sys.argv[2]), workers={workers})
"""


def fsync_ms(folder: Path, n: int = 200) -> float:
    """Median time of a 4 KiB write + fsync in ``folder`` (what a durable commit waits for)."""
    path = folder / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return 1000 * sorted(times)[n // 2]


def make_set(folder: Path, n: int) -> Path:
    """``n`` random 4x4 (original, reconstruction) pairs in the SemSim layout."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        for kind in ("ori", "rec"):
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / f"{i}_{i % 3}_{kind}.png")
    return folder


def study(root: Path, n_items: int, per_item: int, people: int) -> tuple[Path, dict[str, str]]:
    db_path = root / "bench.sqlite"
    init_project(db_path, [make_set(root / "set", n_items)], per_item=per_item, study="bench", classes=CLASSES)
    tokens = add_annotators(Database(db_path), [f"p{k:02d}" for k in range(people)])
    return db_path, tokens


class ServerProcess:
    """``semsim.annotation.app.serve`` in a child process on a socket the benchmark holds."""

    def __init__(self, db_path: Path, flush_ms: float = 0.0, workers: int = 1):
        self.db_path, self.flush_ms, self.workers = db_path, flush_ms, workers
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.sock.set_inheritable(True)
        self.port = self.sock.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        code = SERVER.format(flush_s=self.flush_ms / 1000, workers=self.workers)
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(self.db_path), str(self.sock.fileno())],
                                     pass_fds=(self.sock.fileno(),), env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def cpu(self) -> float:
        """CPU seconds used so far by the server's processes (its process group: workers included)."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # a process that just ended
                continue
            if int(fields[2]) == self.proc.pid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())

    def kill(self) -> None:
        """SIGKILL every process of the server at once (as a crash of the machine would)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.sock.close()


class Annotator_(threading.Thread):
    """One annotator answering the next item of their queue until ``limit`` answers are acknowledged."""

    def __init__(self, index: int, token: str, port: int, limit: int, acked: list):
        super().__init__(daemon=True)
        self.index, self.token, self.port, self.limit, self.acked = index, token, port, limit, acked
        self.mine: dict[int, int] = {}
        self.latencies: list[float] = []
        self.retries = 0
        self.failure: str | None = None

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def _call(self, conn: http.client.HTTPConnection, method: str, path: str, body: dict | None) -> dict:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        reply = conn.getresponse()
        data = json.loads(reply.read())
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {data}")
        return data

    def run(self) -> None:
        conn, item = self._connect(), None
        while len(self.mine) < self.limit:
            try:
                if item is None:
                    item = self._call(conn, "GET", "/api/next", None)["item_id"]
                    if item is None:
                        return
                value = (item + self.index) % 3
                start = time.perf_counter()
                body = self._call(conn, "POST", "/api/answer",
                                  {"item_id": item, "value": value, "submit_id": f"{self.index}-{item}"})
                self.latencies.append(time.perf_counter() - start)
            except (OSError, http.client.HTTPException):  # the server is down: reconnect, send the same answer
                self.retries += 1
                conn.close()
                time.sleep(0.05)
                conn = self._connect()
                continue
            except Exception as exc:  # reported in the table
                self.failure = f"{type(exc).__name__}: {exc}"
                return
            self.mine[item] = value
            self.acked.append(1)
            item = body["next_item_id"]


def load(server: ServerProcess, tokens: dict[str, str], people: int, per_person: int,
         kills: int = 0) -> dict:
    """Run ``people`` annotators of ``per_person`` answers each (killing the server ``kills`` times, evenly
    spread over the acknowledged answers); answers/s, latency percentiles, server CPU per answer."""
    acked: list = []
    names = sorted(tokens)[:people]
    clients = [Annotator_(k, tokens[n], server.port, per_person, acked) for k, n in enumerate(names)]
    cpu0, start = server.cpu(), time.perf_counter()
    cpu_used = 0.0
    for c in clients:
        c.start()
    total = people * per_person
    for k in range(kills):
        while len(acked) < total * (k + 1) / (kills + 1) and any(c.is_alive() for c in clients):
            time.sleep(0.005)
        cpu_used += server.cpu() - cpu0
        server.kill()
        server.start()
        cpu0 = server.cpu()
    for c in clients:
        c.join()
    elapsed = time.perf_counter() - start
    cpu_used += server.cpu() - cpu0
    latencies = sorted(x for c in clients for x in c.latencies)
    failures = [c.failure for c in clients if c.failure]
    if failures:
        raise RuntimeError(f"annotators failed: {failures[:3]}")
    return {"answers": len(acked), "per_s": len(acked) / elapsed, "p50_ms": 1000 * _pct(latencies, 0.5),
            "p99_ms": 1000 * _pct(latencies, 0.99), "cpu_ms": 1000 * cpu_used / max(1, len(acked)),
            "retries": sum(c.retries for c in clients),
            "batch": (server.stats().get("batch_mean") or float("nan")) if server.workers == 1 else float("nan"),
            "acked": {names[k]: c.mine for k, c in enumerate(clients)}}


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def check_stored(db_path: Path, acked: dict[str, dict[int, int]]) -> tuple[int, int]:
    """(lost, duplicated): acknowledged answers missing or with another value, and answers stored twice."""
    db = Database(db_path)
    with db.read() as s:
        ids = dict(s.execute(select(Annotator.name, Annotator.id)).all())
        stored: dict[int, dict[int, int]] = {}
        for person, item, value in s.execute(select(Answer.annotator_id, Answer.item_id, Answer.value)).all():
            stored.setdefault(person, {})[item] = value
        twice = len(s.execute(select(Answer.assignment_id).group_by(Answer.assignment_id)
                              .having(func.count() > 1)).all())
    lost = sum(stored.get(ids[name], {}).get(item) != value for name, mine in acked.items()
               for item, value in mine.items())
    db.dispose()
    return lost, twice


def throughput(root: Path, per_person: int, kills: int, flush_ms: float, workers: int) -> list[dict]:
    people = 19
    db_path, tokens = study(root, n_items=(people * per_person * 3) // 5 + 60, per_item=5, people=people + 1)
    rows = []
    server = ServerProcess(db_path, flush_ms, workers)
    notes = [f"{flush_ms:g} ms flush"] * bool(flush_ms) + [f"{workers} workers"] * (workers > 1)
    note = f" ({', '.join(notes)})" if notes else ""
    try:
        spare = sorted(tokens)[-1]
        warm = load(server, {spare: tokens[spare]}, 1, 20)  # first requests pay for imports and caches
        seq = load(server, {spare: tokens[spare]}, 1, per_person)
        seq["acked"] = {spare: {**warm["acked"][spare], **seq["acked"][spare]}}
        rows.append({"run": f"1 sequential annotator{note}", **seq})
        conc = load(server, {k: v for k, v in tokens.items() if k != spare}, people, per_person // 2)
        rows.append({"run": f"{people} concurrent annotators{note}", **conc})
        killed = load(server, {k: v for k, v in tokens.items() if k != spare}, people, per_person // 2, kills)
        acked = {**seq["acked"]}
        for run in (conc, killed):
            for name, mine in run["acked"].items():
                acked.setdefault(name, {}).update(mine)
        lost, twice = check_stored(db_path, acked)
        rows.append({"run": f"{people} concurrent, {kills} SIGKILLs{note}", **killed, "lost": lost, "twice": twice})
    finally:
        server.close()
    return rows


def judged_study(root: Path, n_answers: int) -> Database:
    """A study with ``n_answers`` answers (5 judges per item), written straight into the database."""
    n_items, people = n_answers // 5, 20
    db_path, _ = study(root, n_items, per_item=5, people=people)
    db = Database(db_path)
    rng = random.Random(0)
    with db.write() as s:
        rows = s.execute(select(Assignment.id, Assignment.annotator_id, Assignment.item_id)).all()
        s.execute(insert(Answer), [{"assignment_id": a, "annotator_id": p, "item_id": i,
                                    "value": rng.choice([0, 1, 2, -1]), "submit_id": f"{a}", "created": utcnow()}
                                   for a, p, i in rows[:n_answers]])
    return db


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Best of 3: wall seconds and the CPU seconds of that run (the machine is shared: wall includes waiting)."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
    return best


def reports(root: Path, n_answers: int) -> list[tuple[str, float, float]]:
    db = judged_study(root, n_answers)
    out = root / "exports"
    out.mkdir()
    counter = iter(range(100))
    return [
        ("dashboard", *timed(lambda: dashboard(db))),
        ("label table (CSV)", *timed(lambda: export(db, out / f"l{next(counter)}.csv"))),
        ("label table (Parquet)", *timed(lambda: export(db, out / f"l{next(counter)}.parquet"))),
        ("Label Studio JSON", *timed(lambda: export(db, out / f"t{next(counter)}.json"))),
        ("SemSim folders (copies 2 files per item)",
         *timed(lambda: export(db, out / f"f{next(counter)}", "folders"))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=300, help="answers of the sequential annotator "
                        "(each concurrent annotator gives half as many)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs during the killed run")
    parser.add_argument("--judged", type=int, default=10_000, help="answers in the study of the report timings")
    parser.add_argument("--flush-ms", type=float, nargs="*", default=[0.0, 10.0],
                        help="emulated flush times to run (0: the disk as it is)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                        help="server processes to run with (more than 1: without an emulated flush)")
    args = parser.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory() as tmp:
        flush = fsync_ms(Path(tmp))
        rows, bases = [], []
        # the emulated flush is patched into the server process itself, so it runs with one worker only
        settings = [(w, ms) for w in args.workers for ms in args.flush_ms if w == 1 or ms == 0]
        for k, (workers, ms) in enumerate(settings):
            runs = throughput(Path(tmp) / f"load{k}", args.answers, args.kills, ms, workers)
            bases += [runs[0]["per_s"]] * len(runs)
            rows += runs
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        timings = reports(Path(tmp) / "reports", args.judged)
    print(f"load average before/after the load runs: {' '.join(load_before)} / {' '.join(load_after)} "
          f"({os.cpu_count()} cores); fsync of this disk: {flush:.2f} ms (median)")
    print("| run | answers | answers/s | x sequential | p50 ms | p99 ms | server CPU ms/answer | answers per commit "
          "| lost / duplicated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r, base in zip(rows, bases, strict=True):
        integrity = f"{r['lost']} / {r['twice']} ({r['retries']} retries)" if "lost" in r else "-"
        batch = "-" if r["batch"] != r["batch"] else f"{r['batch']:.1f}"  # NaN: several workers
        print(f"| {r['run']} | {r['answers']} | {r['per_s']:.0f} | {r['per_s'] / base:.2f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['cpu_ms']:.2f} | {batch} | {integrity} |")
    print(f"\n| at {args.judged} answers | wall s (best of 3) | CPU s |\n|---|---|---|")
    for name, seconds, cpu in timings:
        print(f"| {name} | {seconds:.3f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
