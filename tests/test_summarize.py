"""Summarization: extraction and chunking without a model; the jobs API, a kill -9 in the
middle of a job, and the CLI with the real model."""

import io
import os
import re
import signal
import sqlite3
import time

import pytest
from conftest import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_llm.summarize import chunking, extract

# -- chunking (pure) -----------------------------------------------------------------------------


def words(s: str) -> int:  # a stand-in tokenizer: one token per word
    return len(s.split())


def test_chunks_fit_keep_order_and_lose_nothing():
    text = "\n\n".join(
        " ".join(f"p{p}s{s}w{w}." if w == 5 else f"p{p}s{s}w{w}" for w in range(6)) for p in range(20) for s in range(3)
    )
    chunks = chunking.split(text, 40, words)
    assert all(words(c) <= 40 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    # greedy packing: a chunk closes only when the next 6-word sentence would not fit
    assert all(words(c) > 40 - 6 for c in chunks[:-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abc .!?\n", min_size=0, max_size=60), min_size=1, max_size=30), st.integers(8, 50))
def test_chunking_properties(parts, limit):
    text = "\n\n".join(parts)
    chunks = chunking.split(text, limit, words)
    assert all(words(c) <= limit for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_a_word_longer_than_a_chunk_is_cut_by_characters():
    chars = len  # one token per character
    chunks = chunking.split("x" * 50 + " tail", 16, chars)
    assert all(len(c) <= 16 for c in chunks) and "".join(chunks).replace(" ", "") == "x" * 50 + "tail"


# -- extraction ----------------------------------------------------------------------------------


def make_pdf(text: str) -> bytes:
    """A real one-page PDF with a text layer, written by hand (pypdf only reads)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = io.BytesIO(b"%PDF-1.4\n"), []
    out.seek(0, 2)
    for i, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(f"{i} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    for off in offsets:
        out.write(f"{off:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def test_extract_each_type():
    assert extract.extract(b"Hello\r\n\r\n\r\nworld  again", "text/plain") == "Hello\n\nworld again"
    html = b"<html><head><title>t</title><script>evil()</script></head><body><p>One</p><p>Two &amp; three</p></body>"
    assert extract.extract(html, "text/html") == "One\n\nTwo & three"
    assert "pump pressure" in extract.extract(make_pdf("The pump pressure was 4 bar."), "application/pdf")


def test_extract_errors():
    with pytest.raises(extract.ExtractError, match="cannot be read"):
        extract.extract(b"%PDF-1.4\nthis is not really a pdf", "application/pdf")
    with pytest.raises(extract.ExtractError, match="no extractable text"):
        extract.extract(b"<html><script>x()</script></html>", "text/html")
    with pytest.raises(extract.UnsupportedType, match="unsupported document type"):
        extract.media_type("photo.jpg", "image/jpeg")
    assert extract.media_type("notes.MD", None) == "text/markdown"


# -- the jobs API with the real model ------------------------------------------------------------

REPORT = "\n\n".join(
    f"Section {i}. The north pump station ran for {20 + i} hours this week. Pressure stayed near {3 + i % 3} bar. "
    f"Technician {['Ada', 'Ben', 'Cleo', 'Dev'][i % 4]} replaced filter {i} and logged no leaks."
    for i in range(14)
)


def chunks_total(http, job_id, timeout=60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/summaries/{job_id}").json()
        if job["progress"]["chunks_total"] or job["status"] in ("done", "error"):
            return job["progress"]["chunks_total"] if job["level"] == 0 else 99
        time.sleep(0.05)
    raise AssertionError(f"job never chunked: {job}")


def wait_done(http, job_id, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = http.get(f"/api/summaries/{job_id}")
        job = r.json()
        if r.status_code == 200 and job["status"] in ("done", "error"):
            return job
        assert r.status_code in (200, 503), r.text  # 503: a restarted daemon still loading
        time.sleep(0.3)
    raise AssertionError(f"job not done: {job}")


def test_summary_job_map_reduce_to_one_result(http, server):
    r = http.post("/api/summaries?filename=report.txt", REPORT.encode(), {"Content-Type": "text/plain"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/api/summaries/{job['id']}"
    assert chunks_total(http, job["id"]) >= 3  # chunked by the runner, not the HTTP request
    done = wait_done(http, job["id"])
    assert done["status"] == "done" and done["result"].strip() and done["level"] >= 1
    events = http.get(f"/api/summaries/{job['id']}/events").text
    assert "event: done" in events
    listed = http.get("/api/summaries").json()
    assert job["id"] in [j["id"] for j in listed["data"]] and not any("result" in j for j in listed["data"])
    assert http.request("DELETE", f"/api/summaries/{job['id']}").status_code == 204
    assert http.get(f"/api/summaries/{job['id']}").status_code == 404


def test_multipart_pdf_upload(http):
    pdf = make_pdf("The generator served the clinic for 40 hours.")
    boundary = "edgeLLMboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="log.pdf"\r\n'
            f"Content-Type: application/pdf\r\n\r\n"
        ).encode()
        + pdf
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = http.post("/api/summaries", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 202, r.text
    assert wait_done(http, r.json()["id"])["status"] == "done"


@pytest.mark.parametrize(
    "body, ctype, name, status, words_",
    [
        (b"\x89PNG....", "image/png", "a.png", 415, "unsupported document type"),
        (b"", "text/plain", "a.txt", 400, "empty"),
        (b"   \n\n  ", "text/plain", "a.txt", 400, "no extractable text"),
        (b"%PDF-1.4 broken", "application/pdf", "a.pdf", 400, "cannot be read"),
    ],
)
def test_bad_documents(http, body, ctype, name, status, words_):
    r = http.post(f"/api/summaries?filename={name}", body, {"Content-Type": ctype})
    assert r.status_code == status and words_ in r.json()["error"]["message"]


def test_document_over_the_limit_is_413(http, server):
    big = b"a " * (server.daemon.cfg.server.max_document_bytes // 2 + 10)
    assert http.post("/api/summaries?filename=a.txt", big, {"Content-Type": "text/plain"}).status_code == 413
    assert http.get("/health").status_code == 200


# -- kill -9 mid-job, restart, resume ----------------------------------------------------------


def test_kill_9_mid_job_resumes_and_summarizes_each_chunk_once(tmp_path):
    """A batch of one: chunks are summarized one after another, so once two are done the kill
    lands with at least two still to do, however fast or slow the machine."""
    from test_daemon import spawn

    proc, http, notify, _ = spawn(tmp_path, "--set=limits.max_batch_size=1")
    notify.wait_for("READY", "1")
    assert http.get("/api/plan").json()["max_batch_size"] == 1
    document = REPORT + "\n\n" + REPORT.replace("north", "south")
    job = http.post("/api/summaries?filename=report.txt", document.encode(), {"Content-Type": "text/plain"}).json()
    total = chunks_total(http, job["id"])
    assert total >= 5

    def progress():
        job_now = http.get(f"/api/summaries/{job['id']}").json()
        return job_now["progress"]["chunks_done"] >= 2 or job_now["status"] in ("done", "error")

    wait_until(progress, timeout=300, what="two chunks summarized")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    notify.close()
    db = sqlite3.connect(tmp_path / "state/summaries.sqlite3")
    done_before = db.execute("SELECT COUNT(summary) FROM chunks WHERE level = 0").fetchone()[0]
    assert 2 <= done_before <= total - 2, (done_before, total)  # killed mid-job
    (tmp_path / "notify.sock").unlink()
    proc, http, notify, _ = spawn(tmp_path)
    try:
        done = wait_done(http, job["id"])
        assert done["status"] == "done" and done["result"]
        completions = [r[0] for r in db.execute("SELECT completions FROM chunks ORDER BY level, idx")]
        assert completions and set(completions) == {1}  # every chunk summarized exactly once
    finally:
        proc.terminate()
        proc.wait(60)
        notify.close()


def test_cli_summarize_against_the_daemon(server, tmp_path, capsys):
    from edge_llm.cli import main

    doc = tmp_path / "notes.md"
    doc.write_text("# Notes\n\nThe ferry leaves at 9. The return trip is at 17. Tickets cost 12 euro.\n")
    assert main(["summarize", str(doc), "--url", server.url]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and re.search(r"1/1", out.err)


def test_chunking_tokenizes_the_text_a_bounded_number_of_times():
    """It was quadratic: the growing chunk was re-tokenized for every sentence added."""
    seen = []

    def counting(s: str) -> int:
        seen.append(len(s))
        return len(s.split())

    text = "\n\n".join(" ".join(f"Sentence {p} {i} has words." for i in range(20)) for p in range(50))
    chunks = chunking.split(text, 400, counting)
    assert all(words(c) <= 400 for c in chunks) and " ".join(chunks).split() == text.split()
    assert sum(seen) <= 3 * len(text)  # each sentence once, each chunk once


def test_a_chunk_whose_pieces_join_into_more_tokens_is_cut():
    def joins_cost_one(s: str) -> int:  # every space costs a token of its own
        return len(s.split()) + s.count(" ")

    chunks = chunking.split("a b c d e f g h i j k l m n o p", 9, joins_cost_one)
    assert all(joins_cost_one(c) <= 9 for c in chunks) and " ".join(chunks).split() == list("abcdefghijklmnop")


def blank_pdf(pages: int, password: str | None = None) -> bytes:
    from pypdf import PdfWriter

    w = PdfWriter()
    for _ in range(pages):
        w.add_blank_page(612, 792)
    if password:
        w.encrypt(password)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "pdf, status, words_",
    [
        (blank_pdf(501), 413, "limit is 500 (summarize.max_pdf_pages)"),
        (blank_pdf(1, password="x"), 400, "encrypted"),
    ],
)
def test_pdfs_over_the_page_limit_or_encrypted_are_refused_at_upload(http, pdf, status, words_):
    r = http.post("/api/summaries?filename=a.pdf", pdf, {"Content-Type": "application/pdf"})
    assert r.status_code == status and words_ in r.json()["error"]["message"], r.text


def test_a_pdf_without_text_fails_its_job_not_the_upload(http):
    r = http.post("/api/summaries?filename=scan.pdf", blank_pdf(3), {"Content-Type": "application/pdf"})
    assert r.status_code == 202
    job = wait_done(http, r.json()["id"])
    assert job["status"] == "error" and "no extractable text" in job["error"]


def test_pdf_text_extraction_gives_up_after_its_time_limit():
    pdf = blank_pdf(3)
    with pytest.raises(extract.ExtractError, match="longer than 0 s"):
        extract.pdf_text(pdf, 0, 0.0)


def test_list_pages_newest_first_without_results(http):
    ids = [
        http.post(
            f"/api/summaries?filename=n{i}.txt", b"A short note. It has two sentences.", {"Content-Type": "text/plain"}
        ).json()["id"]
        for i in range(3)
    ]
    first = http.get("/api/summaries?limit=2").json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert http.get("/api/summaries?limit=2&offset=2").json()["data"][0]["id"] == ids[0]
    assert all("result" not in j for j in first["data"])
    for bad in ("limit=0", "limit=abc", "offset=-1", "limit=501"):
        assert http.get(f"/api/summaries?{bad}").status_code == 400, bad


def test_finished_jobs_are_purged_after_the_retention_period(tmp_path):
    from edge_llm.summarize.jobs import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    old, recent, running = (store.create(f"{n}.txt", b"text", "text/plain", 4).id for n in ("old", "recent", "run"))
    store.set_status(old, "done", result="r")
    store.set_status(recent, "done", result="r")
    store.set_status(running, "running")
    store._q("UPDATE jobs SET updated = updated - 40 * 86400 WHERE id IN (?, ?)", (old, running))
    assert store.purge(time.time() - 30 * 86400) == 1
    assert store.get(old) is None and store.get(recent) is not None and store.get(running) is not None


def test_a_store_from_before_documents_were_kept_is_migrated(tmp_path):
    from edge_llm.summarize.jobs import JobStore

    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, filename TEXT NOT NULL, status TEXT NOT NULL, "
        "error TEXT, result TEXT, num_chars INTEGER NOT NULL, created REAL NOT NULL, "
        "updated REAL NOT NULL); INSERT INTO jobs VALUES ('a', 'x.txt', 'done', NULL, 'r', 1, 1, 1);"
    )
    db.close()
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.get("a").result == "r" and store.create("y.txt", b"t", "text/plain", 1).status == "queued"


def test_cli_summarize_in_process_ends_when_the_job_fails(tmp_path, monkeypatch, capsys):
    """It hung forever: the worker thread died and nothing set its 'done'."""
    import threading

    from edge_llm.cli import main
    from edge_llm.summarize import pipeline

    def fail(self, text, level, job_id=""):
        raise pipeline.SummaryError("the engine is on fire")

    monkeypatch.setattr(pipeline.Summarizer, "summarize", fail)
    doc = tmp_path / "notes.txt"
    doc.write_text("The ferry leaves at 9. The return trip is at 17.\n")
    rc = []
    t = threading.Thread(
        target=lambda: rc.append(main(["summarize", str(doc), "--in-process", "--set", "limits.kv_cache_tokens=4096"])),
        daemon=True,
    )
    t.start()
    t.join(120)
    assert rc == [1], "edge-llm summarize --in-process did not end"
    assert "the engine is on fire" in capsys.readouterr().err


def test_chat_during_a_summary_job_gets_its_first_token_quickly_and_the_job_finishes(tmp_path):
    """Interactive first: the summary's chunks are background work that a chat preempts. The
    bound is generous for a loaded 2-core machine (idle TTFT is about 0.2 s; before priorities
    a chat waited for the long chunks in flight)."""
    import openai
    from conftest import Http, RunningDaemon, make_config

    d = RunningDaemon(
        make_config(
            **{
                "daemon.state_dir": str(tmp_path / "state"),
                "limits.max_batch_size": 4,
                "limits.prefill_chunk_tokens": 256,
                "summarize.chunk_tokens": 1200,
                "summarize.summary_tokens": 48,
                "limits.max_seq_len": 2048,
                "limits.kv_cache_tokens": 16384,
                "model.kv_layout": "per_slot",
            }
        )
    )
    try:
        http = Http(d.daemon.port)
        doc = " ".join(
            f"On day {i} the crew logged {i * 7 % 90} litres of water at station {i % 13}." for i in range(300)
        )
        job = http.post("/api/summaries?filename=log.txt", doc.encode(), {"Content-Type": "text/plain"}).json()
        assert chunks_total(http, job["id"]) >= 4
        deadline = time.monotonic() + 300  # a state, not a time: on a loaded machine admission is slow
        while d.engine.num_running < 4:  # the batch full of background work, so the chat must preempt
            assert time.monotonic() < deadline, f"the summary never filled the batch: {d.engine.stats()}"
            time.sleep(0.02)
        client = openai.OpenAI(base_url=d.url + "/v1", api_key="x", max_retries=0)
        t0 = time.monotonic()
        stream = client.chat.completions.create(
            model=d.model_id, messages=[{"role": "user", "content": "Hi!"}], max_tokens=8, temperature=0, stream=True
        )
        ttft = next(time.monotonic() - t0 for c in stream if c.choices and c.choices[0].delta.content)
        list(stream)
        print(f"TTFT {ttft:.2f} s")
        assert ttft < 2.5, f"first token after {ttft:.2f} s while a summary ran"
        done = wait_done(http, job["id"])
        assert done["status"] == "done" and done["result"]
        db = sqlite3.connect(tmp_path / "state/summaries.sqlite3")
        assert {r[0] for r in db.execute("SELECT completions FROM chunks WHERE job_id = ?", (job["id"],))} == {1}
        assert d.daemon.runtime.plan.kv_layout == "per_slot"  # this layout's batching and copies, exercised
        stats = d.engine.stats()
        assert stats["preemptions"] >= 1 and stats["resumptions"] >= 1 and stats["kv_tokens_reserved"] == 0
        metrics = http.get("/metrics").text
        for line in (
            'edge_llm_preemptions_total{priority="background"}',
            "edge_llm_resumptions_total",
            'edge_llm_queue_seconds_count{priority="background"}',
            'edge_llm_time_to_first_token_seconds_count{priority="interactive"}',
        ):
            value = float(next(x for x in metrics.splitlines() if x.startswith(line)).split()[-1])
            assert value >= 1, line
    finally:
        d.stop()


# -- defects: chunking a long document, binary data, PDF sniffing, names, messages, logs ---------


def one_sentence(num_bytes: int) -> str:
    """One paragraph, no full stops: a single "sentence" chunked by its words."""
    words_ = (f"pump{i % 97} pressure {i % 13} bar valve{i % 7}" for i in range(num_bytes))
    text, size = [], 0
    for w in words_:
        if size >= num_bytes:
            return " ".join(text)
        text.append(w)
        size += len(w) + 1


def summarizer(server):
    return server.daemon.runtime.extensions["summaries"].summarizer


def test_a_long_sentence_is_counted_in_runs_not_word_by_word():
    """A 5.7 MB sentence took 28 s: the tokenizer was called once per word."""
    seen = []

    def counting(s: str) -> int:
        seen.append(len(s))
        return len(s.split())

    text = one_sentence(200_000)
    chunks = chunking.split(text, 160, counting)
    assert all(words(c) <= 160 for c in chunks) and " ".join(chunks).split() == text.split()
    assert all(words(c) == 160 for c in chunks[:-1])  # full: cut at the last word that fits
    assert len(seen) < len(text.split()) / 4 and sum(seen) <= 3 * len(text)


def test_chunking_stops_at_once_when_its_check_raises():
    """A deleted job, or one past max_chunks parts, stops here, not after the whole split."""
    seen = []

    def counting(s: str) -> int:
        seen.append(len(s))
        return len(s.split())

    def check(chunks):
        if len(chunks) > 3:
            raise RuntimeError("stop")

    text = one_sentence(500_000)
    with pytest.raises(RuntimeError, match="stop"):
        chunking.split(text, 160, counting, check)
    assert sum(seen) < len(text) / 20  # four parts of 160 words, not the 500 KB


@pytest.mark.parametrize(
    "data, words_",
    [
        (bytes(range(256)) * 8, "NUL bytes"),
        (bytes(range(1, 256)) * 8, "control characters"),
        (b"\x1b\x02\x03\x04" * 100 + b"some words", "control characters"),
    ],
)
def test_binary_data_is_not_text(data, words_):
    with pytest.raises(extract.ExtractError, match=words_):
        extract.extract(data, "text/plain")


def test_latin_1_and_cp1252_text_is_still_text():
    assert extract.extract("Café crème, naïve façade".encode("latin-1"), "text/plain") == "Café crème, naïve façade"
    assert extract.extract("It’s 5 € – “quoted”".encode("cp1252"), "text/plain") == "It’s 5 € – “quoted”"
    assert extract.extract(b"\x1b[31mERROR\x1b[0m pump stopped\n" * 3, "text/plain").startswith("\x1b[31m")


def text_pdf(text: str) -> bytes:
    """A one-page PDF with a text layer, made with pypdf."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    w = PdfWriter()
    page = w.add_blank_page(612, 792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
    )
    content = DecodedStreamObject()
    content.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())
    page.replace_contents(content)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def test_pdf_magic_wins_over_the_declared_type():
    pdf = text_pdf("The generator ran.")
    assert extract.media_type("x.pdf", "text/plain", pdf) == "application/pdf"
    assert extract.media_type("x.txt", "text/plain", pdf) == "application/pdf"
    assert extract.media_type("x.pdf", "text/plain", b"plain words") == "text/plain"


def multipart(filename_params: str, data: bytes, ctype: str) -> tuple[bytes, dict]:
    boundary = "edgeLLMboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; {filename_params}\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize("how", ["raw", "multipart", "html"])
def test_binary_data_declared_as_text_is_a_400(http, how):
    """It was a "done" job with an invented summary (latin-1 decodes any bytes)."""
    data = bytes(range(256)) * 16
    if how == "multipart":
        r = http.post("/api/summaries", *multipart('filename="data.txt"', data, "text/plain"))
    else:
        name, ctype = ("a.html", "text/html") if how == "html" else ("data.txt", "text/plain")
        r = http.post(f"/api/summaries?filename={name}", data, {"Content-Type": ctype})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "unreadable_document" and "not text" in err["message"]


def test_a_pdf_sent_as_text_plain_is_read_as_a_pdf(http):
    """curl -F "file=@x.pdf;type=text/plain": its raw bytes were summarized."""
    sentence = "The generator served the clinic for 40 hours."
    r = http.post("/api/summaries", *multipart('filename="log.pdf"', text_pdf(sentence), "text/plain"))
    assert r.status_code == 202, r.text
    job = wait_done(http, r.json()["id"])
    assert job["status"] == "done" and job["num_chars"] == len(sentence), job


@pytest.mark.parametrize(
    "how, sent, stored",
    [
        ("header", "résumé.txt".encode(), "résumé.txt"),
        ("header", "café.txt".encode("latin-1"), "café.txt"),  # not UTF-8: read as latin-1
        ("multipart", 'filename="résumé.txt"', "résumé.txt"),
        ("multipart", "filename*=UTF-8''r%C3%A9sum%C3%A9.txt", "résumé.txt"),
    ],
)
def test_a_filename_in_utf_8_is_kept(http, how, sent, stored):
    """X-Filename: résumé.txt was stored as rÃ©sumÃ©.txt."""
    data = b"The ferry leaves at 9. The return trip is at 17."
    if how == "header":
        r = http.post("/api/summaries", data, {"Content-Type": "text/plain", "X-Filename": sent})
    else:
        r = http.post("/api/summaries", *multipart(sent, data, "text/plain"))
    assert r.status_code == 202, r.text
    assert r.json()["filename"] == stored
    assert http.get(f"/api/summaries/{r.json()['id']}").json()["filename"] == stored


def test_an_encrypted_pdf_is_said_once(http):
    r = http.post("/api/summaries?filename=a.pdf", blank_pdf(1, password="x"), {"Content-Type": "application/pdf"})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "the PDF is encrypted: send it without a password"


def test_the_413_names_the_document_limit_in_mb(http, server):
    limit = server.daemon.cfg.server.max_document_bytes
    r = http.post("/api/summaries?filename=a.txt", b"a" * (limit + 10), {"Content-Type": "text/plain"})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "document_too_large"
    assert f"{limit / 2**20:g} MB" in err["message"] and "server.max_document_bytes" in err["message"]


def test_the_413_of_a_body_over_the_http_servers_limit_names_the_document_limit(server):
    """The HTTP server refuses a body past max_document_bytes + 64 KiB from its Content-Length,
    with its own limit ("exceeds max_body of 21037056")."""
    import socket

    limit = server.daemon.cfg.server.max_document_bytes
    with socket.create_connection(("127.0.0.1", server.daemon.port), timeout=30) as sock:
        sock.sendall(
            f"POST /api/summaries?filename=a.txt HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {limit + 10**6}\r\n\r\n".encode()
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413")
    assert f"{limit / 2**20:g} MB".encode() in reply and b"max_body" not in reply


def test_a_job_deleted_while_its_document_is_chunked_stops_chunking(http, server, monkeypatch):
    """DELETE answered 204 and chunking went on (28 s at 100% of a core for 5.7 MB)."""
    monkeypatch.setattr(summarizer(server), "max_chunks", 0)  # no bound: the whole document is chunked
    runner, store = server.daemon.runtime.extensions["summaries"].runner, summarizer(server).store
    job = http.post(
        "/api/summaries?filename=long.txt", one_sentence(5_700_000).encode(), {"Content-Type": "text/plain"}
    )
    job_id = job.json()["id"]
    wait_until(lambda: job_id in runner._jobs and store.get(job_id).status == "running", 60, "the job running")
    thread = runner._jobs[job_id]
    time.sleep(0.5)  # into the split
    assert thread.is_alive() and store.document(job_id) is not None, "chunked already: the test saw no chunking"
    t0 = time.monotonic()
    assert http.request("DELETE", f"/api/summaries/{job_id}").status_code == 204
    wait_until(lambda: not thread.is_alive(), 3, "the job's thread to end")
    print(f"chunking ended {time.monotonic() - t0:.2f} s after DELETE")


def test_a_document_over_max_chunks_fails_at_once_with_a_clear_error(http, server, caplog):
    limit = summarizer(server).max_chunks
    with caplog.at_level("INFO", logger="edge_llm.summarize.pipeline"):
        r = http.post(
            "/api/summaries?filename=long.txt", one_sentence(400_000).encode(), {"Content-Type": "text/plain"}
        )
        job = wait_done(http, r.json()["id"], timeout=60)
    assert job["status"] == "error" and f"at most {limit} (summarize.max_chunks)" in job["error"], job
    assert re.search(r"the document is too long: about \d+ parts of up to 160 tokens", job["error"])
    records = [rec for rec in caplog.records if job["id"] in rec.getMessage()]
    assert [rec.levelname for rec in records] == ["WARNING"] and records[0].exc_info is None


def test_chunking_counts_against_extract_timeout_s(http, server, monkeypatch):
    monkeypatch.setattr(summarizer(server), "extract_timeout_s", 0.0)
    r = http.post("/api/summaries?filename=report.txt", REPORT.encode(), {"Content-Type": "text/plain"})
    job = wait_done(http, r.json()["id"], timeout=60)
    assert job["status"] == "error" and "longer than 0 s (summarize.extract_timeout_s)" in job["error"], job


def test_a_pdf_without_text_is_logged_as_a_warning_without_a_traceback(http, caplog):
    with caplog.at_level("INFO", logger="edge_llm.summarize.pipeline"):
        r = http.post("/api/summaries?filename=scan.pdf", blank_pdf(2), {"Content-Type": "application/pdf"})
        job = wait_done(http, r.json()["id"], timeout=60)
    assert job["status"] == "error" and "no extractable text" in job["error"]
    records = [rec for rec in caplog.records if job["id"] in rec.getMessage()]
    assert [rec.levelname for rec in records] == ["WARNING"] and records[0].exc_info is None
