"""The pages in a real headless Chromium (Debian's /usr/bin/chromium through Playwright)."""

import time

import pytest


def test_chat_streams_a_reply_and_keeps_the_conversation(page, server, shot):
    page.goto("/")  # answers of at most 64 tokens (the page's Max tokens setting): quick on a busy machine
    page.evaluate("localStorage.setItem('edge-llm.chats', JSON.stringify({settings: {max_tokens: 64}, chats: {}}))")
    page.reload()
    page.fill("#prompt", "Say hello to the visitors.")
    page.keyboard.press("Enter")
    reply = page.locator(".msg.assistant").last
    page.wait_for_function("document.querySelector('#speed').textContent.includes('tokens/s')", timeout=120000)
    assert reply.inner_text().strip()
    assert "first token" in page.inner_text("#speed")
    page.wait_for_function("document.querySelector('#status').textContent.includes('batch')")
    shot(page, "chat-1024x600.png")
    page.reload()
    assert page.locator(".msg").count() == 2  # kept in localStorage
    page.click("#new")
    assert page.locator(".msg").count() == 0
    page.click("#history summary")  # the old conversation is kept in History
    page.click("#chats .chat-title >> text=Say hello to the visitors.")
    page.wait_for_function("document.querySelectorAll('.msg').length === 2")


def test_stop_cancels_the_request_on_the_server(page, server):
    engine = server.engine
    cancelled = engine.metrics.requests.labels("cancelled")._value.get()
    page.goto("/")
    page.click("#settings summary")
    page.fill("#system", "You write very long stories.")
    page.dispatch_event("#system", "change")
    page.fill("#prompt", "Tell me a very long story about a lighthouse keeper and the sea.")
    page.click("#send")
    page.wait_for_function(
        "(document.querySelector('.msg.assistant:last-child')||{}).textContent?.length > 20", timeout=60000
    )
    page.click("#stop")
    page.wait_for_function("document.querySelector('#speed').textContent === 'stopped'")
    deadline = time.monotonic() + 10
    while engine.num_running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.num_running == 0
    assert engine.metrics.requests.labels("cancelled")._value.get() == cancelled + 1
    assert not page.is_disabled("#send") and page.is_disabled("#stop")


def test_model_output_cannot_inject_html(page):
    page.goto("/")
    evil = '<img src=x onerror="window.pwned=1"> **bold** `code`\n\n- item'
    chat = {"system": "", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": evil}]}
    page.evaluate("s => localStorage.setItem('edge-llm.chat', JSON.stringify(s))", chat)
    page.reload()
    bubble = page.locator(".msg.assistant")
    page.wait_for_selector(".msg.assistant strong")  # rendered by the server (/api/markdown)
    assert bubble.locator("img").count() == 0 and page.evaluate("window.pwned") is None
    assert bubble.locator("strong").inner_text() == "bold" and bubble.locator("li").inner_text() == "item"
    assert "<img" in bubble.inner_text()


def test_keyboard_only_and_large_touch_targets(page, shot):
    page.goto("/")
    for sel in ("#send", "#stop", "#new", ".tab"):
        box = page.locator(sel).first.bounding_box()
        assert box["height"] >= 48, sel
    page.keyboard.type("Hi")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.set_viewport_size({"width": 1920, "height": 1080})
    shot(page, "chat-1920x1080.png")


def test_summarize_page_shows_progress_and_result(page, tmp_path, shot):
    doc = tmp_path / "visit.txt"
    doc.write_text(
        "\n\n".join(
            f"Day {i}: the museum had {100 + i * 7} visitors and the cafe sold {30 + i} cakes." for i in range(12)
        )
    )
    page.goto("/summarize")
    page.set_input_files("#file", str(doc))
    page.wait_for_selector("#job:not([hidden])")
    page.wait_for_function("document.querySelector('#progress-text').textContent.length > 0")
    page.wait_for_function("document.querySelector('#progress-text').textContent === 'done'", timeout=120000)
    result = page.inner_text("#result").strip()
    assert result and page.is_visible("#copy")
    assert page.inner_text("#jobs li:first-child").startswith("visit.txt")  # the newest job first
    shot(page, "summarize-1024x600.png")
    page.reload()  # a finished job opened from the list (which carries no results) shows its result
    page.click("#jobs li:first-child summary")
    page.wait_for_function("document.querySelector('#jobs li:first-child .result').textContent.length > 0")
    assert page.inner_text("#jobs li:first-child .result").strip() == result


def test_unsupported_upload_is_explained(page, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff")
    page.goto("/summarize")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#notice:not([hidden])")
    assert "unsupported document type" in page.inner_text("#notice")


@pytest.mark.parametrize("status, words", [(503, "not ready yet"), (429, "busy")])
def test_loading_and_busy_are_explained_then_retried(page, status, words):
    """The browser gets one 503/429 (as the daemon sends while loading or when its queue is
    full), shows it in words, retries after Retry-After, and the real reply arrives."""
    import json

    hits = []

    def first_refused(route):
        hits.append(route.request.url)
        if len(hits) == 1:
            body = {"error": {"message": "the model is loading", "type": "unavailable_error", "code": "loading"}}
            route.fulfill(
                status=status, headers={"Retry-After": "1", "Content-Type": "application/json"}, body=json.dumps(body)
            )
        else:
            route.continue_()

    page.route("**/v1/chat/completions", first_refused)
    page.goto("/")
    page.fill("#prompt", "Hello!")
    page.keyboard.press("Enter")
    page.wait_for_selector("#notice:not([hidden])")
    assert words in page.inner_text("#notice") and "1 s" in page.inner_text("#notice")
    page.wait_for_function("document.querySelector('#speed').textContent.includes('tokens/s')", timeout=60000)
    assert len(hits) == 2 and page.locator(".msg.assistant").last.inner_text().strip()


def test_stop_cancels_a_pending_retry(page):
    hits = []

    def always_loading(route):
        hits.append(1)
        route.fulfill(
            status=503,
            headers={"Retry-After": "1", "Content-Type": "application/json"},
            body='{"error": {"message": "loading", "type": "unavailable_error", "code": "loading"}}',
        )

    page.route("**/v1/chat/completions", always_loading)
    page.goto("/")
    page.fill("#prompt", "Hello?")
    page.keyboard.press("Enter")
    page.wait_for_selector("#notice:not([hidden])")
    assert not page.is_disabled("#stop")
    page.click("#stop")
    page.wait_for_timeout(1800)
    assert len(hits) == 1 and page.inner_text("#speed") == "stopped" and not page.is_disabled("#send")
