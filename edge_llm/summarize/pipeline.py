"""Map-reduce summarization over the engine: every chunk of a level is summarized at once
(so continuous batching runs them together), then the partial summaries are joined and, if
they do not fit one prompt, chunked again, until one summary is left."""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from edge_llm.config import least_chunk_tokens
from edge_llm.engine.request import Priority, Request, SamplingParams
from edge_llm.summarize import chunking, extract
from edge_llm.summarize.jobs import JobStore

log = logging.getLogger(__name__)
MAP_PROMPT = "Summarize the following text in a few sentences. Keep names and numbers.\n\n{text}"
REDUCE_PROMPT = "Combine these partial summaries of one document into one concise summary.\n\n{text}"
PROMPT_OVERHEAD = 48  # tokens of instructions and chat template around a chunk
MAX_LEVELS = 8
POLL_S = 0.5  # a chunk's thread checks this often whether its job was deleted or the daemon stops
PURGE_EVERY_S = 3600.0
DAY_S = 86400.0


class SummaryError(RuntimeError):
    pass


class DocumentRejected(SummaryError):
    """The document cannot be summarized as it is (too many parts, too slow to read): the
    sender's to fix, so its job ends with this error and no traceback in the log."""


class JobCancelled(SummaryError):
    """The job was deleted, or the daemon is stopping, while its document was prepared."""


USER_ERRORS = (extract.ExtractError, DocumentRejected)  # a job's error, logged in one line


def chunk_budget(plan, summary_tokens: int, configured: int = 0) -> int:
    """Tokens of document per chunk: the prompt around it and the summary must fit the plan."""
    fit = min(plan.max_input_len, plan.max_seq_len - summary_tokens) - PROMPT_OVERHEAD
    return min(configured, fit) if configured else fit


class Summarizer:
    def __init__(
        self,
        engine,
        backend,
        store: JobStore,
        chunk_tokens: int,
        summary_tokens: int,
        parallel: int,
        max_pdf_pages: int = 0,
        extract_timeout_s: float = float("inf"),
    ):
        if chunk_tokens < least_chunk_tokens(summary_tokens):
            raise ValueError(f"chunks of {chunk_tokens} tokens cannot shrink into summaries of {summary_tokens}")
        self.engine, self.backend, self.store = engine, backend, store
        self.chunk_tokens, self.summary_tokens, self.parallel = chunk_tokens, summary_tokens, parallel
        self.max_pdf_pages, self.extract_timeout_s = max_pdf_pages, extract_timeout_s
        self.max_chunks = 0  # chunks one document may have; 0 = no bound
        self.stopping = threading.Event()
        self._in_flight: dict[str, set[Request]] = {}  # job id -> its chunks in the engine
        self._running: set[str] = set()  # jobs whose run() has begun and not yet ended
        # deleted jobs that were running: their chunks are not submitted again; each id is
        # forgotten when its run ends (it grew by one id per deleted job, for the daemon's life)
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        return len(self.backend.tokenize(text, False))

    def split(self, text: str, check=None) -> list[str]:
        return chunking.split(text, self.chunk_tokens, self.count, check)

    def summarize(self, text: str, level: int, job_id: str = "") -> str | None:
        """One chunk through the engine; None if it was cancelled (the daemon is stopping, or
        the job was deleted)."""
        prompt = self.backend.render_chat(
            [{"role": "user", "content": (MAP_PROMPT if level == 0 else REDUCE_PROMPT).format(text=text)}]
        )
        # background: a visitor's chat comes first, and may preempt it
        req, _ = self.engine.make_request(
            self.backend.tokenize(prompt, False),
            SamplingParams(temperature=0.0),
            self.summary_tokens,
            Priority.BACKGROUND,
        )
        req.stream = False  # its text is read at its end; progress reads its counters (partial_progress)
        with self._lock:
            if self.stopping.is_set() or job_id in self._cancelled:
                return None
            self._in_flight.setdefault(job_id, set()).add(req)
        try:
            out = None
            self.engine.submit(req)
            # polled: a chunk thread must end when the daemon stops, even if its request was
            # submitted after stop() cancelled the others (it waited forever on a stopped engine)
            for output in self.engine.stream(req, POLL_S, lambda: self.is_cancelled(job_id)):
                out = output if output is not None else out
        finally:
            with self._lock:
                self._in_flight[job_id].discard(req)
                if not self._in_flight[job_id]:
                    del self._in_flight[job_id]
            if hasattr(self.engine, "energy"):  # issue 24: every chunk's joules, cancelled ones too
                self.store.add_energy(job_id, self.engine.energy.joules(req))
        if out is None:
            return None  # cancelled before any output
        if out.error:
            raise SummaryError(out.error)
        return req.text.strip() if out.finish_reason in ("stop", "length") else None

    def prepare(self, job_id: str) -> None:
        """Extract and chunk a new job's document (the slow part of an upload, done here)."""
        upload = self.store.document(job_id)
        if upload is None:
            return  # chunked already (a resumed job)
        data, kind = upload
        deadline = time.monotonic() + self.extract_timeout_s  # extraction and chunking together
        if kind == "application/pdf":
            check_page = functools.partial(self._check_cancelled, job_id)
            text = extract.pdf_text(data, self.max_pdf_pages, self.extract_timeout_s, check_page)
        else:
            text = extract.extract(data, kind)
        chunks = self.split(text, self._chunk_check(job_id, len(text), deadline))
        self.store.set_chunks(job_id, len(text), chunks)

    def _check_cancelled(self, job_id: str) -> None:
        if self.is_cancelled(job_id):
            raise JobCancelled(f"job {job_id} was deleted or the daemon is stopping")

    def _chunk_check(self, job_id: str, num_chars: int, deadline: float):
        """What chunking calls after each part: it stops a deleted job, a document past
        max_chunks parts, or one past its time, at once (not after the whole split)."""

        def check(chunks: list[str]) -> None:
            self._check_cancelled(job_id)
            if self.max_chunks and len(chunks) > self.max_chunks:
                about = num_chars * len(chunks) // max(1, sum(map(len, chunks)))  # at the parts' length so far
                raise DocumentRejected(
                    f"the document is too long: about {about} parts of up to {self.chunk_tokens} tokens, "
                    f"at most {self.max_chunks} (summarize.max_chunks)"
                )
            if time.monotonic() > deadline:
                raise DocumentRejected(
                    f"reading and splitting the document took longer than {self.extract_timeout_s:g} s "
                    f"(summarize.extract_timeout_s); stopped after {len(chunks)} parts"
                )

        return check

    def is_cancelled(self, job_id: str) -> bool:
        return self.stopping.is_set() or job_id in self._cancelled

    def cancel_job(self, job_id: str) -> None:
        """A deleted job (gone from the store already): end its chunks in the engine now and
        submit no more. A job not running needs no mark: run() starts only for a stored job."""
        with self._lock:
            if job_id in self._running:
                self._cancelled.add(job_id)
            for req in self._in_flight.get(job_id, ()):
                self.engine.cancel(req)

    def partial_progress(self, job_id: str) -> float:
        """Parts' worth of work done by the job's chunks in the engine (0 to their number): half
        for the prompt read, half for the summary written. An estimate, read without the engine."""
        with self._lock:
            reqs = list(self._in_flight.get(job_id, ()))
        return sum(
            0.5 * min(1.0, r.num_computed / max(1, r.num_prompt_tokens))
            + 0.5 * min(1.0, len(r.output_tokens) / max(1, self.summary_tokens))
            for r in reqs
        )

    def run(self, job_id: str) -> None:
        with self._lock:
            self._running.add(job_id)
        try:
            # after the mark: a job deleted before it is gone here, one deleted after is cancelled
            if self.store.exists(job_id):
                self._run(job_id)
        finally:
            with self._lock:
                self._running.discard(job_id)
                self._cancelled.discard(job_id)  # nothing of the job is left to stop

    def _run(self, job_id: str) -> None:
        self.store.set_status(job_id, "running")
        self.prepare(job_id)
        for _ in range(MAX_LEVELS):
            level = self.store.level(job_id)
            self._map(job_id, level)
            if self.is_cancelled(job_id):
                return
            summaries = self.store.summaries(job_id, level)
            if len(summaries) == 1:
                self.store.set_status(job_id, "done", result=summaries[0])
                return
            combined = "\n\n".join(summaries)
            self.store.add_level(
                job_id, level + 1, [combined] if self.count(combined) <= self.chunk_tokens else self.split(combined)
            )
        raise SummaryError(f"no single summary after {MAX_LEVELS} rounds")

    def _map(self, job_id: str, level: int) -> None:
        pending = self.store.pending(job_id, level)
        if not pending:
            return

        def one(item):
            idx, text = item
            summary = self.summarize(text, level, job_id)
            if summary is not None:
                self.store.save_summary(job_id, level, idx, summary)

        with ThreadPoolExecutor(max(1, self.parallel)) as pool:
            list(pool.map(one, pending))

    def stop(self) -> None:
        """Cancel the chunks in flight; they stay unsummarized and run again after a restart."""
        with self._lock:
            self.stopping.set()
            for reqs in self._in_flight.values():
                for req in reqs:
                    self.engine.cancel(req)


def run_job(summarizer: Summarizer, job_id: str) -> None:
    """Run one job to its end; any failure becomes the job's error (never an exception)."""
    try:
        summarizer.run(job_id)
    except Exception as e:  # one bad job must not stop the others
        if summarizer.is_cancelled(job_id) or not summarizer.store.exists(job_id):
            log.info("summary job %s: deleted or stopped while running (%s)", job_id, e)
            return
        if isinstance(e, USER_ERRORS):  # the document's fault, told in the job's error: no traceback
            log.warning("summary job %s failed: %s", job_id, e)
        else:
            log.exception("summary job %s failed", job_id)
        summarizer.store.set_status(job_id, "error", error=str(e) or type(e).__name__)


class JobRunner:
    """Works through the store's active jobs, oldest first, up to max_jobs at once (so one
    long document does not hold every later job; the engine batches their chunks)."""

    def __init__(self, summarizer: Summarizer, retention_days: float = 0.0, max_jobs: int = 2):
        self.summarizer = summarizer
        self.store = summarizer.store
        self.retention_s = retention_days * DAY_S
        self.max_jobs = max(1, max_jobs)
        self.wake = threading.Event()
        self._jobs: dict[str, threading.Thread] = {}
        self._thread = threading.Thread(target=self._run, name="summaries", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        s = self.summarizer
        next_purge = 0.0
        while not s.stopping.is_set():
            if self.retention_s and time.monotonic() >= next_purge:
                purged = self.store.purge(time.time() - self.retention_s)
                if purged:
                    log.info("summaries: deleted %d finished jobs older than the retention period", purged)
                next_purge = time.monotonic() + PURGE_EVERY_S
            self._jobs = {job_id: t for job_id, t in self._jobs.items() if t.is_alive()}
            job_id = self.store.next_active(tuple(self._jobs)) if len(self._jobs) < self.max_jobs else None
            if job_id is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            t = threading.Thread(target=run_job, args=(s, job_id), name=f"summary-{job_id}", daemon=True)
            t.start()  # before others can see it: a thread not yet started reads as ended (is_alive)
            self._jobs[job_id] = t

    def stop(self, timeout: float = 10.0) -> bool:
        """True when every job thread ended within timeout."""
        self.summarizer.stop()
        self.wake.set()
        deadline = time.monotonic() + timeout
        for t in [self._thread, *self._jobs.values()]:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in [self._thread, *self._jobs.values()])


class SummaryService:
    """What the HTTP layer and the daemon use: the store, plus a runner working through it."""

    def __init__(self, engine, backend, store: JobStore, plan, cfg):
        summary_tokens = min(cfg.summary_tokens, plan.max_output_len)
        self.store = store
        self.max_pdf_pages = cfg.max_pdf_pages
        self.summarizer = Summarizer(
            engine,
            backend,
            store,
            chunk_budget(plan, summary_tokens, cfg.chunk_tokens),
            summary_tokens,
            cfg.parallel or plan.max_batch_size,
            cfg.max_pdf_pages,
            cfg.extract_timeout_s,
        )
        self.summarizer.max_chunks = cfg.max_chunks
        self.runner = JobRunner(self.summarizer, cfg.retention_days, cfg.max_jobs)

    def create(self, filename: str, data: bytes, kind: str):
        """Cheap checks now (a corrupt or oversized PDF, an empty text: ExtractError); the text
        of a PDF or HTML page is extracted, and every document chunked, by the runner."""
        if kind == "application/pdf":
            extract.check_pdf(data, self.max_pdf_pages)
            job = self.store.create(filename, data, kind, 0)
        elif kind == "text/html":
            extract.decode(data)  # binary data is refused now; the page is parsed by the runner
            job = self.store.create(filename, data, kind, 0)
        else:
            text = extract.extract(data, kind)
            job = self.store.create(filename, text.encode(), "text/plain", len(text))
        self.runner.wake.set()
        return job

    def start(self) -> None:
        self.runner.start()

    def delete(self, job_id: str) -> bool:
        """Delete a job and end its chunks in the engine: the store first, so a run that begins
        meanwhile finds no job, and one already begun is marked cancelled (Summarizer.run)."""
        deleted = self.store.delete(job_id)
        self.summarizer.cancel_job(job_id)
        return deleted

    def stop(self, timeout: float = 10.0) -> None:
        if self.runner.stop(timeout):
            self.store.close()  # else a job thread still holds it; the process exits anyway
