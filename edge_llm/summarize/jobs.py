"""Durable summary jobs in SQLite: a job and each of its chunks, with every finished chunk
summary committed at once, so a daemon killed mid-job resumes from the last finished chunk
and never summarizes a chunk twice. A new job holds its document until the runner has
extracted and chunked it (off the HTTP thread); finished jobs are purged after the
retention period."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, status TEXT NOT NULL, error TEXT, result TEXT,
    num_chars INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    document BLOB, kind TEXT);  -- the upload, until it is chunked
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, level INTEGER NOT NULL,
    idx INTEGER NOT NULL, text TEXT NOT NULL, summary TEXT,
    completions INTEGER NOT NULL DEFAULT 0,  -- times a summary was stored: 1 when done right
    PRIMARY KEY (job_id, level, idx));
"""
ACTIVE = ("queued", "running")
JOB_COLUMNS = "id, filename, status, error, result, num_chars, created, updated, energy_j"
MIGRATIONS = {
    "document": "ALTER TABLE jobs ADD COLUMN document BLOB",  # stores made before 0.2
    "kind": "ALTER TABLE jobs ADD COLUMN kind TEXT",
    "energy_j": "ALTER TABLE jobs ADD COLUMN energy_j REAL",
}  # issue 24


@dataclass
class Job:
    id: str
    filename: str
    status: str  # queued | running | done | error
    error: str | None
    result: str | None
    num_chars: int
    created: float
    updated: float
    energy_j: float | None = None  # joules of every chunk request run for it (issue 24); None = not metered
    level: int = 0  # the map level is 0; each reduce round adds one
    chunks_total: int = 0  # at the current level
    chunks_done: int = 0

    def to_dict(self, with_result: bool = True) -> dict:
        d = {
            "id": self.id,
            "filename": self.filename,
            "status": self.status,
            "error": self.error,
            "num_chars": self.num_chars,
            "created": self.created,
            "updated": self.updated,
            "level": self.level,
            "progress": {"chunks_done": self.chunks_done, "chunks_total": self.chunks_total},
            "energy_joules": None if self.energy_j is None else round(self.energy_j, 3),
        }
        return {**d, "result": self.result} if with_result else d


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed chunk survives power loss
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, sql in MIGRATIONS.items():
            if column not in have:
                self._db.execute(sql)

    @contextmanager
    def _transaction(self):
        """BEGIN ... COMMIT, or ROLLBACK on any error: a failed statement (a job deleted
        mid-run fails its foreign key) must not leave the shared connection inside a
        transaction, where every later BEGIN fails and nothing more is committed."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, filename: str, document: bytes, kind: str, num_chars: int) -> Job:
        """A queued job holding its document; the runner chunks it (set_chunks)."""
        job_id, now = uuid.uuid4().hex[:16], time.time()
        self._q(
            "INSERT INTO jobs (id, filename, status, num_chars, created, updated, document, kind) "
            "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
            (job_id, filename, num_chars, now, now, document, kind),
        )
        return self.get(job_id)

    def document(self, job_id: str) -> tuple[bytes, str] | None:
        """The upload of a job not chunked yet, and its media type."""
        rows = self._q("SELECT document, kind FROM jobs WHERE id = ? AND document IS NOT NULL", (job_id,))
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    def set_chunks(self, job_id: str, num_chars: int, chunks: list[str]) -> None:
        """Level 0 of a job, in one transaction with dropping its document."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO chunks (job_id, level, idx, text) VALUES (?, 0, ?, ?)",
                [(job_id, i, text) for i, text in enumerate(chunks)],
            )
            db.execute(
                "UPDATE jobs SET document = NULL, num_chars = ?, updated = ? WHERE id = ?",
                (num_chars, time.time(), job_id),
            )

    def get(self, job_id: str) -> Job | None:
        rows = self._q(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        job = Job(*rows[0])
        level = self.level(job_id)
        job.level = level
        job.chunks_total, job.chunks_done = self._q(
            "SELECT COUNT(*), COUNT(summary) FROM chunks WHERE job_id = ? AND level = ?", (job_id, level)
        )[0]
        return job

    def list(self, limit: int = 50, offset: int = 0) -> tuple[list[Job], bool]:
        """Newest first; (jobs, whether more follow)."""
        ids = self._q("SELECT id FROM jobs ORDER BY created DESC, id LIMIT ? OFFSET ?", (limit + 1, offset))
        jobs = [job for job in (self.get(r[0]) for r in ids[:limit]) if job is not None]
        return jobs, len(ids) > limit

    def purge(self, older_than: float) -> int:
        """Delete finished jobs (done, error) last updated before older_than (a time.time())."""
        with self._lock:
            return self._db.execute(
                "DELETE FROM jobs WHERE status IN ('done', 'error') AND updated < ?", (older_than,)
            ).rowcount

    def delete(self, job_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    def next_active(self, skip: tuple[str, ...] = ()) -> str | None:
        """The oldest active job not in skip (those already running)."""
        marks = ", ".join("?" * len(skip))
        rows = self._q(
            f"SELECT id FROM jobs WHERE status IN (?, ?) {f'AND id NOT IN ({marks})' if skip else ''} "
            "ORDER BY created LIMIT 1",
            (*ACTIVE, *skip),
        )
        return rows[0][0] if rows else None

    def exists(self, job_id: str) -> bool:
        return bool(self._q("SELECT 1 FROM jobs WHERE id = ?", (job_id,)))

    def level(self, job_id: str) -> int:
        return self._q("SELECT COALESCE(MAX(level), 0) FROM chunks WHERE job_id = ?", (job_id,))[0][0]

    def pending(self, job_id: str, level: int) -> list[tuple[int, str]]:
        return self._q(
            "SELECT idx, text FROM chunks WHERE job_id = ? AND level = ? AND summary IS NULL ORDER BY idx",
            (job_id, level),
        )

    def summaries(self, job_id: str, level: int) -> list[str]:
        return [
            r[0]
            for r in self._q("SELECT summary FROM chunks WHERE job_id = ? AND level = ? ORDER BY idx", (job_id, level))
        ]

    def save_summary(self, job_id: str, level: int, idx: int, summary: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE chunks SET summary = ?, completions = completions + 1 "
                "WHERE job_id = ? AND level = ? AND idx = ?",
                (summary, job_id, level, idx),
            )
            self._db.execute("UPDATE jobs SET updated = ? WHERE id = ?", (time.time(), job_id))

    def add_level(self, job_id: str, level: int, chunks: list[str]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO chunks (job_id, level, idx, text) VALUES (?, ?, ?, ?)",
                [(job_id, level, i, text) for i, text in enumerate(chunks)],
            )

    def add_energy(self, job_id: str, joules: float | None) -> None:
        if joules is None:  # energy unavailable on this device: the job's stays null
            return
        with self._lock:
            self._db.execute("UPDATE jobs SET energy_j = COALESCE(energy_j, 0) + ? WHERE id = ?", (joules, job_id))

    def set_status(self, job_id: str, status: str, result: str | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, updated = ? WHERE id = ?",
                (status, result, error, time.time(), job_id),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
