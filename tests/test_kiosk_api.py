"""What the kiosk pages stand on, through the real daemon: sampling defaults from the model
(issue 23, item 2), Markdown rendered and sanitized on the server (item 3), progress inside
a summary's parts (item 5), the favicon (item 9)."""

import json

import pytest

from edge_llm import config as config_mod
from edge_llm.server import markdown, sampling, validation

UNSET = {"temperature": -1.0, "top_p": -1.0, "top_k": -1}


def test_defaults_come_from_the_model_card_generation_config_gguf_or_configuration():
    smol = sampling.resolve(UNSET, None, {}, "SmolLM2-135M-Instruct.Q4_1")
    assert (smol.temperature, smol.top_p, smol.top_k) == (0.2, 0.9, 0)
    assert smol.sources["temperature"] == "SmolLM2's model card"
    other = sampling.resolve(UNSET, None, {}, "some-model")
    assert (other.temperature, other.top_p) == (1.0, 1.0) and other.sources["top_p"] == "OpenAI's default"
    gen = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": [1, 2]}
    d = sampling.resolve({**UNSET, "temperature": 0.7}, gen, {"temperature": 0.3}, "SmolLM2")
    assert (d.temperature, d.top_p, d.top_k) == (0.7, 0.95, 20)
    assert d.sources == {
        "temperature": "configuration [sampling]",
        "top_p": "the model's generation_config.json",
        "top_k": "the model's generation_config.json",
    }
    gguf = sampling.resolve(UNSET, {"temperature": "hot"}, {"temperature": 0.3}, "x")  # a bad value is skipped
    assert gguf.temperature == 0.3 and gguf.sources["temperature"] == "the model's GGUF metadata"


def test_generation_config_json_of_an_engine_dir(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.9}))
    assert sampling.generation_config(tmp_path) == {"temperature": 0.6, "top_p": 0.9}
    assert sampling.generation_config(tmp_path / "tokenizer" / "model.gguf") == {"temperature": 0.6, "top_p": 0.9}
    assert sampling.generation_config(tmp_path / "model.gguf") is None  # a GGUF's own folder only


def test_sampling_configuration_is_validated():
    cfg = config_mod.load(env={"EDGE_LLM_SAMPLING_TEMPERATURE": "0.5"})
    assert cfg.sampling.temperature == 0.5 and cfg.sampling.top_p == -1.0
    with pytest.raises(config_mod.ConfigError, match="sampling.temperature"):
        config_mod.load(env={}, overrides=[("sampling.temperature", "3")])
    defaults = sampling.SamplingDefaults(temperature=0.2, top_p=0.9, top_k=5)
    params = validation.generation({}, defaults=defaults).params
    assert (params.temperature, params.top_p, params.top_k) == (0.2, 0.9, 5)
    params = validation.generation({"temperature": 1.0, "top_p": 1.0, "top_k": 0}, defaults=defaults).params
    assert (params.temperature, params.top_p, params.top_k) == (1.0, 1.0, 0)  # what a request asks for wins


def test_a_request_without_temperature_is_sampled_with_the_models_defaults(server, http, monkeypatch):
    assert http.get("/api/sampling").json() == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 0,
        "sources": {
            "temperature": "SmolLM2's model card",
            "top_p": "SmolLM2's model card",
            "top_k": "OpenAI's default",
        },
    }
    seen = []
    make = server.engine.make_request
    monkeypatch.setattr(
        server.engine, "make_request", lambda tokens, params, *a: seen.append(params) or make(tokens, params, *a)
    )
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert http.post("/v1/chat/completions", body).status_code == 200
    assert http.post("/v1/chat/completions", {**body, "temperature": 0.9}).status_code == 200
    assert [(p.temperature, p.top_p) for p in seen] == [(0.2, 0.9), (0.9, 0.9)]


MARKDOWN = """# Title
See [the docs](https://example.org/docs) and [this](javascript:alert(1)).

> a quote

- one
  - nested
    1. deeper

| name | value |
|:-----|------:|
| a    |     1 |

```python
def f(x):
    return x  # comment
```

<script>alert(1)</script> <img src=x onerror="alert(1)"> ![photo](http://elsewhere/p.png)
"""


def test_markdown_is_rendered_and_sanitized():
    html = markdown.render(MARKDOWN)
    assert '<a href="https://example.org/docs" target="_blank" rel="noopener noreferrer nofollow">the docs</a>' in html
    assert 'href="javascript' not in html  # left as text, not a link
    assert "<blockquote>" in html and "<table>" in html and '<th style="text-align:right">value</th>' in html
    assert "<ul>\n<li>one\n<ul>\n<li>nested\n<ol>\n<li>deeper</li>" in html
    assert '<span class="code-lang">python</span>' in html and '<span class="tok-k">def</span>' in html
    assert "<script" not in html and "<img" not in html  # raw HTML is escaped, images become text
    assert "&lt;script&gt;" in html and "[image: photo]" in html
    assert "tok-k" in markdown.stylesheet()


def test_markdown_endpoint(http):
    r = http.post("/api/markdown", {"texts": ["**bold**", "`x`"]})
    assert r.status_code == 200 and r.json() == {"html": ["<p><strong>bold</strong></p>\n", "<p><code>x</code></p>\n"]}
    bad = http.post("/api/markdown", {"texts": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "texts"
    css = http.get("/code.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_favicon(http):
    r = http.get("/favicon.ico")
    assert r.status_code == 200 and r.content.startswith(b"<svg")


def test_a_running_summary_reports_progress_inside_its_parts(server, http):
    """chunks_partial grows while parts are in the engine, before any part is done."""
    import time

    text = "\n\n".join(f"Paragraph {i}: the harbour counted {i * 13} boats and {i * 7} gulls today." for i in range(40))
    job = http.post("/api/summaries?filename=harbour.txt", text.encode(), {"Content-Type": "text/plain"}).json()
    partials, deadline = [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            state = http.get(f"/api/summaries/{job['id']}").json()
            if state["status"] in ("done", "error"):
                break
            if "chunks_partial" in state["progress"]:
                partials.append(state["progress"]["chunks_partial"])
            if any(0 < p for p in partials) and len(partials) >= 3:
                break
            time.sleep(0.1)
        assert any(p > 0 for p in partials), partials
        assert all(0 <= p <= state["progress"]["chunks_total"] for p in partials)
    finally:
        http.request("DELETE", f"/api/summaries/{job['id']}")
