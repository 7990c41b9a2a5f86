"""The Flask app factory: one blueprint per surface."""

from __future__ import annotations

from flask import Flask

from edge_llm.runtime import Runtime
from edge_llm.server import errors, openai_api, openapi, ops_api, security, summaries, ui


def create_app(runtime: Runtime) -> Flask:
    app = Flask(__name__)
    cfg = runtime.config
    app.config.update(RUNTIME=runtime, MAX_CONTENT_LENGTH=cfg.server.max_body_bytes, JSON_SORT_KEYS=False)
    errors.init_app(app)
    security.init_app(app, cfg)
    app.register_blueprint(openai_api.bp)
    app.register_blueprint(ops_api.bp)
    app.register_blueprint(summaries.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(openapi.bp)
    return app
