"""The kiosk pages: / (chat) and /summarize. Every asset ships in the package: no CDN."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("ui", __name__, static_folder="static", static_url_path="/static", template_folder="templates")


@bp.get("/")
def chat():
    return render_template("chat.html")


@bp.get("/summarize")
def summarize():
    return render_template("summarize.html")
