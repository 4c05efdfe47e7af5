"""The review server: the gallery with pick, reject and clear controls, each
decision stored in the ledger as it is made (app.py: raw ASGI; server.py:
uvicorn, in the foreground or on a thread)."""

from batcher.review.app import ReviewApp, ReviewTarget
from batcher.review.server import ReviewServer, is_loopback, running_review, serve

__all__ = ["ReviewApp", "ReviewServer", "ReviewTarget", "is_loopback", "running_review", "serve"]
