"""The kiosk pages: / (chat), /summarize and /dashboard, and what only they use: Markdown
rendered on the server, the sampling defaults for the chat settings, the code colours and the
favicon. Every asset ships in the package: no CDN."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from edge_llm.server import markdown, sampling, validation
from edge_llm.server.errors import APIError

bp = Blueprint("ui", __name__, static_folder="static", static_url_path="/static", template_folder="templates")
MAX_TEXTS = 200  # messages rendered in one request (a whole stored conversation)


@bp.get("/")
def chat():
    return render_template("chat.html")


@bp.get("/summarize")
def summarize():
    return render_template("summarize.html")


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard.html")


@bp.post("/api/markdown")
def render_markdown():
    """{"texts": [...]} -> {"html": [...]}: sanitized HTML for each message."""
    texts = validation.json_body(request).get("texts")  # a body that is no JSON object: the API's own 4xx
    if not isinstance(texts, list) or len(texts) > MAX_TEXTS or not all(isinstance(t, str) for t in texts):
        raise APIError(400, f"'texts': must be a list of at most {MAX_TEXTS} strings", "invalid_value", "texts")
    return jsonify({"html": [markdown.render(t) for t in texts]})


@bp.get("/api/sampling")
def sampling_defaults():
    """What a request that leaves temperature, top_p and top_k out is sampled with, and why."""
    return jsonify(sampling.for_runtime(current_app.config["RUNTIME"]).to_dict())


@bp.get("/code.css")
def code_css():
    return Response(markdown.stylesheet(), mimetype="text/css", headers={"Cache-Control": "max-age=3600"})


@bp.get("/favicon.ico")
def favicon():
    return bp.send_static_file("favicon.svg")
