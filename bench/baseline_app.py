"""The baseline receiver: the thinnest webhook intake that still keeps what it acknowledged.

A Flask app under the same gunicorn settings as crmbridge (`gunicorn 'baseline_app:create_app()'`
from bench/) that LPUSHes the raw body into one Redis list and answers 200. No
authentication, parsing, dedupe, ordering or job metadata: whatever crmbridge's door costs
above this is what those features cost.
"""
from __future__ import annotations

import os

from flask import Flask, request
from redis import Redis

LIST_KEY = "bench-baseline:bodies"


def create_app() -> Flask:
    store = Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5, socket_connect_timeout=2)
    app = Flask(__name__)

    @app.post("/hooks/<name>")
    def receive(name: str):
        store.lpush(LIST_KEY, request.get_data(cache=False))
        return "", 200

    @app.get("/healthz")
    def healthz():
        store.ping()
        return "ok"

    return app
