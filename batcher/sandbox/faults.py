"""The hostile answers of issue 10, as pure functions over what was really done.

Each garbled create answer is built *after* the project was created and
charged: the server took the money, the client cannot read the receipt.
The journal keeps the real charge beside the mode, so a test can hold the
client's ledger against it.
"""

from __future__ import annotations

from typing import Final

from batcher.sandbox.replies import HTML_TYPE, Drip, Endless, Reply, encode

SURCHARGE_FACTOR: Final = 10  # a surcharged project ends up costing this many times more
HUGE_CREDITS: Final = 10**18
REDIRECT_TO: Final = b"/login?next=%2Fv1%2Fai-image-generator"

# A 200 whose body is an error page from something in front of the API.
HTML_PAGE: Final = (
    b"<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head>"
    b"<body><h1>Checking your browser before accessing api.magichour.ai</h1>"
    b"<p>This process is automatic.</p></body></html>\n"
)


def garbled_create(mode: str, project_id: str, charge: int, drip_seconds: float) -> Reply:
    """The answer to a create that was accepted and charged `charge`, garbled by `mode`."""
    if mode == "non-json":
        return Reply(200, HTML_PAGE, content_type=HTML_TYPE)
    if mode == "status-204":
        return Reply(204)
    if mode == "status-302":
        return Reply(302, headers=((b"location", REDIRECT_TO),))
    good = {"id": project_id, "credits_charged": charge, "frame_cost": charge}
    if mode == "slow-drip":
        return Reply(200, encode(good), stream=Drip(drip_seconds))
    if mode == "endless":
        # A valid start, then a string that never closes: only a cap on the body stops it.
        start = encode({"id": project_id, "credits_charged": charge})[:-1] + b',"padding":"'
        return Reply(200, start, stream=Endless())
    if mode == "no-id":
        return Reply(200, encode({"credits_charged": charge, "frame_cost": charge}))
    # The credit garbles: frame_cost goes too, or a client could fall back on it.
    credits: object
    if mode == "no-credits":
        return Reply(200, encode({"id": project_id}))
    if mode == "string-credits":
        credits = str(charge)
    elif mode == "float-credits":
        credits = charge + 0.5
    elif mode == "bool-credits":
        credits = True
    elif mode == "negative-credits":
        credits = -charge
    elif mode == "huge-credits":
        credits = HUGE_CREDITS
    else:
        raise ValueError(f"create_garble: unknown mode {mode!r}")
    return Reply(200, encode({"id": project_id, "credits_charged": credits}))


def bad_download_count(mode: str, image_count: int) -> int | None:
    """How many URLs a bad GET lists (`empty`, `short`); None when the mode spoils bodies."""
    if mode == "empty":
        return 0
    if mode == "short":
        return image_count - 1  # one fewer than ordered: none at all for a single image
    return None


UNKNOWN_STATUS: Final = "paused"  # a status no client knows


def garbled_poll(mode: str, document: dict[str, object], key: str) -> Reply:
    """The answer to a GET of a project, garbled by `mode`. `key-echo` is a render
    error whose message echoes the account's key: whole past the 200th
    character, upper-cased, and a 12-character piece of it; nothing refunded."""
    if mode == "non-json":
        return Reply(200, HTML_PAGE, content_type=HTML_TYPE)
    if mode == "unknown-status":
        return Reply(200, encode({**document, "status": UNKNOWN_STATUS, "downloads": []}))
    if mode == "endless":
        start = encode(document)[:-1] + b',"padding":"'
        return Reply(200, start, stream=Endless())
    if mode == "key-echo":
        message = f"{'x' * 190} key {key} rejected ({key.upper()}; prefix {key[:12]})"
        echoed = {**document, "status": "error", "downloads": []}
        echoed["error"] = {"code": "bad_key", "message": message}
        return Reply(200, encode(echoed))
    raise ValueError(f"poll_garble: unknown mode {mode!r}")
