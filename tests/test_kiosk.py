"""Issue 23 in a real headless Chromium (Debian's): Markdown and code (item 3), settings with the
model's sampling defaults (2), regenerate, edit, copy, history, stop, retry (4), summaries'
progress, time left, Cancel and past results (5), the dashboard (7), axe-core and keyboard (9)."""

import json
import threading
import time
from pathlib import Path

import pytest

MARKDOWN = (
    "Links, tables, quotes, lists:\n\nSee [the docs](https://example.org/docs).\n\n> a quote\n\n"
    "- one\n  - nested\n    1. deeper\n\n| name | value |\n|:-----|------:|\n| a | 1 |\n\n"
    "```python\ndef add(a, b):\n    return a + b  # the sum\n```\n"
)
PAGES = ["/", "/summarize", "/dashboard"]


def stored(page, messages, system=""):
    """A conversation as the page keeps it in localStorage, then the page reloaded."""
    page.goto("/")
    page.evaluate(
        "s => localStorage.setItem('edge-llm.chat', JSON.stringify(s))", {"system": system, "messages": messages}
    )
    page.reload()


def limit(page, max_tokens):
    """Short answers (the Max tokens setting, as kept by the page), so the tests run quickly."""
    page.goto("/")
    page.evaluate(
        "n => localStorage.setItem('edge-llm.chats', JSON.stringify({current: null, chats: {}, "
        "settings: {max_tokens: n}}))",
        max_tokens,
    )
    page.reload()


def capture(page, bodies):
    """Record every chat request body the page sends, and let it through."""

    def handle(route):
        bodies.append(json.loads(route.request.post_data))
        route.continue_()

    page.route("**/v1/chat/completions", handle)


def test_markdown_and_code_render_with_language_and_copy(page, shot):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    stored(page, [{"role": "user", "content": "show me"}, {"role": "assistant", "content": MARKDOWN}])
    bubble = page.locator(".msg.assistant")
    page.wait_for_selector(".msg.assistant .code-head button")
    link = bubble.locator("a")
    assert link.get_attribute("href") == "https://example.org/docs" and link.get_attribute("target") == "_blank"
    assert bubble.locator("blockquote").inner_text().strip() == "a quote"
    assert bubble.locator("ul ul ol li").inner_text() == "deeper"
    assert bubble.locator("table th").all_inner_texts() == ["name", "value"]
    assert bubble.locator(".code-lang").inner_text() == "python"
    assert bubble.locator("pre .tok-k").first.inner_text() == "def"  # Pygments' highlighting
    color = page.eval_on_selector(".msg.assistant pre .tok-k", "e => getComputedStyle(e).color")
    assert color != page.eval_on_selector(".msg.assistant pre .tok-n", "e => getComputedStyle(e).color")
    bubble.locator(".code-head button").click()
    page.wait_for_selector("#notice:not([hidden])")
    assert page.evaluate("navigator.clipboard.readText()") == "def add(a, b):\n    return a + b  # the sum\n"
    bubble.locator(".actions button", has_text="Copy").click()
    page.wait_for_function("navigator.clipboard.readText().then(t => t.startsWith('Links, tables'))")
    shot(page, "markdown-1024x600.png")


def test_settings_show_the_models_defaults_and_send_what_is_changed(page):
    bodies = []
    capture(page, bodies)
    page.goto("/")
    page.click("#settings summary")
    page.wait_for_function("document.querySelector('#defaults-text').textContent.includes('0.2')")
    assert "temperature 0.2, top p 0.9 (SmolLM2's model card)" in page.inner_text("#defaults-text")
    assert page.get_attribute("#temperature", "placeholder") == "0.2"
    page.fill("#prompt", "Hi")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#speed').textContent.includes('tokens/s')", timeout=60000)
    page.fill("#temperature", "0.7")
    page.fill("#max_tokens", "8")
    page.dispatch_event("#temperature", "change")
    page.dispatch_event("#max_tokens", "change")
    page.reload()  # settings are kept
    assert page.input_value("#temperature") == "0.7"
    page.fill("#prompt", "Hello again")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant').length === 2 && !document.querySelector('[aria-busy]')",
        timeout=60000,
    )
    assert "temperature" not in bodies[0] and "top_p" not in bodies[0]  # the server's defaults apply
    assert bodies[1]["temperature"] == 0.7 and bodies[1]["max_tokens"] == 8
    page.click("#settings summary")
    page.click("#defaults")
    assert (
        page.input_value("#temperature") == ""
        and page.evaluate("JSON.parse(localStorage.getItem('edge-llm.chats')).settings") == {}
    )


def test_regenerate_edit_and_copy(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    bodies = []
    capture(page, bodies)
    limit(page, 12)
    done = "document.querySelector('#speed').textContent.includes('tokens/s') && !document.querySelector('[aria-busy]')"
    page.fill("#prompt", "Name a colour.")
    page.keyboard.press("Enter")
    page.wait_for_function(done, timeout=60000)
    page.evaluate("document.querySelector('#speed').textContent = ''")
    page.click(".msg.assistant button:has-text('Regenerate')")
    page.wait_for_function(done, timeout=60000)
    assert page.locator(".msg").count() == 2 and len(bodies) == 2
    assert bodies[1]["messages"] == bodies[0]["messages"] == [{"role": "user", "content": "Name a colour."}]
    page.evaluate("document.querySelector('#speed').textContent = ''")
    page.click(".msg.user button:has-text('Edit')")
    page.fill(".msg.user textarea", "Name an animal.")
    page.click(".msg.user button:has-text('Send edited')")
    page.wait_for_function(done, timeout=60000)
    assert page.locator(".msg.user").all_inner_texts()[0].startswith("Name an animal.")
    assert page.locator(".msg").count() == 2
    assert bodies[2]["messages"] == [{"role": "user", "content": "Name an animal."}]
    page.click(".msg.user button:has-text('Copy')")
    page.wait_for_function("navigator.clipboard.readText().then(t => t === 'Name an animal.')")


def test_a_stopped_answer_is_kept_but_not_continued(page, server):
    bodies = []
    capture(page, bodies)
    limit(page, 64)
    page.fill("#prompt", "Tell me a very long story about a lighthouse keeper and the sea.")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "(document.querySelector('.msg.assistant .body')||{}).textContent?.length > 20", timeout=60000
    )
    page.click("#stop")
    page.wait_for_selector(".msg.assistant.stopped")
    assert "stopped" in page.inner_text(".msg.assistant.stopped .actions")
    page.fill("#prompt", "What is 2 + 2?")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant').length === 2 && !document.querySelector('[aria-busy]')",
        timeout=60000,
    )
    assert bodies[1]["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert page.locator(".msg").count() == 4  # the stopped exchange stays on screen


def test_a_connection_error_offers_a_retry(page):
    hits = []

    def first_fails(route):
        hits.append(1)
        route.abort("failed") if len(hits) == 1 else route.continue_()

    page.route("**/v1/chat/completions", first_fails)
    limit(page, 16)
    page.fill("#prompt", "Hello?")
    page.keyboard.press("Enter")
    page.wait_for_selector(".msg.assistant.failed")
    assert "The reply failed" in page.inner_text(".msg.failed") and not page.is_disabled("#send")
    assert page.evaluate("document.activeElement.textContent") == "Retry"
    page.click(".msg.failed button:has-text('Retry')")
    page.wait_for_function("document.querySelector('#speed').textContent.includes('tokens/s')", timeout=60000)
    assert len(hits) == 2 and page.locator(".msg.failed").count() == 0
    assert page.locator(".msg.assistant .body").inner_text().strip()


def long_document(tmp_path: Path, name: str, paragraphs: int) -> Path:
    doc = tmp_path / name
    doc.write_text(
        "\n\n".join(
            f"Day {i}: the museum had {100 + i * 7} visitors, the cafe sold {30 + i} cakes and "
            f"the guide told the story of room {i % 9} twice."
            for i in range(paragraphs)
        )
    )
    return doc


def test_summaries_show_time_left_and_cancel_ends_the_work(page, server, tmp_path, shot):
    page.goto("/summarize")
    page.set_input_files("#file", str(long_document(tmp_path, "long-visit.txt", 120)))
    page.wait_for_function("document.querySelector('#progress-text').textContent.includes('elapsed')", timeout=60000)
    page.wait_for_function(
        "/about \\d+:\\d\\d left/.test(document.querySelector('#progress-text').textContent)", timeout=60000
    )
    assert page.evaluate(
        "document.querySelector('#progress').value % 1 !== 0 || document.querySelector('#progress').value > 0"
    )
    shot(page, "summaries-1024x600.png")
    job_id = page.evaluate("current.id")
    page.click("#cancel")
    page.wait_for_function("document.querySelector('#progress-text').textContent.startsWith('cancelled')")
    deadline = time.monotonic() + 10
    while server.engine.num_running + server.engine.num_waiting and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.engine.num_running + server.engine.num_waiting == 0  # its chunks left the engine
    assert page.request.get(f"/api/summaries/{job_id}").status == 404
    assert "long-visit.txt" not in page.inner_text("#jobs")


def test_dashboard_draws_the_daemons_own_data(page, http, shot):
    page.goto("/dashboard")
    page.wait_for_function("document.querySelectorAll('#c-tps polyline').length > 0", timeout=10000)
    answers = []  # a visitor chats while the dashboard watches
    chat = threading.Thread(
        target=lambda: answers.append(
            http.post(
                "/v1/chat/completions",
                {
                    "messages": [{"role": "user", "content": "Tell me about lighthouses."}],
                    "max_tokens": 48,
                    "temperature": 0,
                },
            ).status_code
        )
    )
    chat.start()
    page.wait_for_function("parseFloat(document.querySelector('#v-tps').textContent) > 0", timeout=120000)
    chat.join(120)
    assert answers == [200]
    page.wait_for_function("document.querySelectorAll('#plan tr').length > 3")
    rows = {r.split("\t")[0]: r for r in page.locator("#plan tr").all_inner_texts()}
    assert {"max_batch_size", "max_seq_len", "kv_cache_tokens", "kv_layout"} <= set(rows)
    measured = http.get("/api/plan").json().get("calibration")
    words = "Speed choices measured on this device" if measured else "No calibration"
    assert words in page.inner_text("#calibration")
    page.wait_for_function("document.querySelectorAll('#c-tps polyline').length > 0", timeout=10000)
    for chart in ("tps", "ttft", "kv", "mem", "queue"):
        assert page.locator(f"#c-{chart} svg").count() == 1, chart
    assert "MiB RAM" in page.inner_text("#v-mem") and "tokens" in page.inner_text("#v-kv")
    assert page.locator("#c-mem polyline").first.get_attribute("points").count(",") >= 1
    assert page.locator("#jobs tr").count() >= 1
    shot(page, "dashboard-1024x600.png")


def axe(page) -> list:
    from axe_playwright_python import sync_playwright as axe_module

    page.evaluate((Path(axe_module.__file__).parent / "axe.min.js").read_text())
    return page.evaluate(
        "axe.run().then(r => r.violations.map(v => ({id: v.id, impact: v.impact, "
        "nodes: v.nodes.map(n => n.target.join(' '))})))"
    )


@pytest.mark.parametrize("width, height", [(1024, 600), (390, 844)])
def test_axe_finds_nothing_serious_on_any_page(page, width, height):
    page.set_viewport_size({"width": width, "height": height})
    stored(
        page,
        [
            {"role": "user", "content": "show me"},
            {"role": "assistant", "content": MARKDOWN},
            {"role": "assistant", "content": "a stopped answer", "stopped": True},
        ],
    )
    page.wait_for_selector(".code-head button")
    found = {}
    for path in PAGES:
        if path != "/":
            page.goto(path)
            page.wait_for_timeout(2500)  # the dashboard's first readings, the summaries list
        found[path] = axe(page)
    serious = {p: [v for v in vs if v["impact"] in ("serious", "critical")] for p, vs in found.items()}
    assert serious == {p: [] for p in PAGES}, serious


def test_keyboard_h1_and_favicon(page):
    for path in PAGES:
        page.goto(path)
        assert page.locator("h1").count() == 1, path
        assert page.locator("link[rel=icon]").count() == 1
        assert page.evaluate("fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)") == 200
        stops = []
        page.locator("body").focus()
        for _ in range(14):
            page.keyboard.press("Tab")
            stops.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        assert "file" not in stops, stops  # the hidden file input is no extra tab stop
        if path == "/":
            assert "messages" in stops  # the conversation can be scrolled from the keyboard
        if path == "/summarize":
            assert "choose" in stops
