"""The review server over real HTTP on loopback (uvicorn on a thread), on a
real SQLite ledger: decisions stored at once, the token off loopback, the
Host check on it, cross-origin writes refused, only the batch's images served."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from PIL import Image

from batcher.jobfile.items import ItemSettings, JobItem
from batcher.ledger import BeginSend, Created, Ledger, RenderFinished, ReviewCounts
from batcher.ledger.models import utcnow
from batcher.review import ReviewTarget, is_loopback, running_review

SETTINGS = ItemSettings("z-image-turbo", "640px", "1:1", "general", 2)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[ReviewTarget]:
    """A batch of two items, the first complete with two PNGs in its folder."""
    folder = tmp_path / "out"
    folder.mkdir()
    (tmp_path / "secret.png").write_bytes(b"not for you")
    (folder / "manifest.jsonl").write_text("{}\n")
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        batch, _ = ledger.open_batch("b", job_path=None, job_hash=None, budget=None, settings={})
        items = [JobItem(i, f"key{i}", f"prompt {i}", SETTINGS, "job.yaml", i) for i in range(2)]
        ledger.sync_items(
            batch.id, items, estimate=lambda s: (10, True), project_name=lambda i: i.key
        )
        first = next(iter(ledger.items(batch.id)))
        files = []
        for n in range(2):
            path = folder / f"00001-prompt-0-key0-{n + 1}.png"
            Image.new("RGB", (32, 32), "teal").save(path)
            files.append(str(path))
        ledger.claim(
            batch.id, "w", states=["pending"], limit=1, lease_until=utcnow() + timedelta(minutes=1)
        )
        ledger.apply([BeginSend(first.id, batch.id, "w", reserve=10, budgeted=False)])
        ledger.apply([Created(first.id, batch.id, "p1", 10, reserved=10, keep_claim=True)])
        ledger.apply(
            [RenderFinished(first.id, batch.id, "p1", state="complete", files=tuple(files))]
        )
        yield ReviewTarget(ledger, "b", folder)


def decide(
    client: httpx.Client, key: str, image: int, verdict: str, **headers: str
) -> httpx.Response:
    return client.post(
        "/api/reviews",
        json={"key": key, "image": image, "verdict": verdict, "note": "n"},
        headers=headers,
    )


def test_a_decision_is_in_the_ledger_when_the_answer_comes(target: ReviewTarget) -> None:
    with (
        running_review(target) as server,
        httpx.Client(base_url=server.url_at("127.0.0.1")) as client,
    ):
        assert server.token is None and server.url.startswith("http://127.0.0.1:")
        answer = decide(client, "key0", 1, "reject")
        assert answer.status_code == 200, answer.text
        assert answer.json()["review"]["verdict"] == "reject"
        batch = target.ledger.get_batch("b")
        assert batch is not None
        [review] = target.ledger.latest_reviews(batch.id).values()
        assert (review.item_key, review.image, review.verdict, review.note) == (
            "key0",
            1,
            "reject",
            "n",
        )
        assert decide(client, "key0", 1, "clear").json() == {"review": None}
        assert client.get("/api/reviews").json() == {"reviews": []}
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert '"review":{"token":null' in page.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"key": "key0", "image": 0, "verdict": "love"}, 400, "unknown verdict"),
        ({"key": "nope", "image": 0, "verdict": "pick"}, 400, "no item"),
        ({"key": "key0", "image": 5, "verdict": "pick"}, 400, "has no image 6"),
        ({"key": "key0", "verdict": "pick"}, 400, "expected"),
        ({"key": "key0", "image": "0", "verdict": "pick"}, 400, "expected"),
    ],
)
def test_bad_decisions_are_refused(
    target: ReviewTarget, body: dict[str, object], status: int, message: str
) -> None:
    with (
        running_review(target) as server,
        httpx.Client(base_url=server.url_at("127.0.0.1")) as client,
    ):
        answer = client.post("/api/reviews", json=body)
    assert answer.status_code == status
    assert message in answer.json()["message"]


def test_writes_must_be_json_and_same_origin(target: ReviewTarget) -> None:
    with (
        running_review(target) as server,
        httpx.Client(base_url=server.url_at("127.0.0.1")) as client,
    ):
        origin = f"http://127.0.0.1:{server.port}"
        form = client.post(
            "/api/reviews", content=b"key=key0", headers={"content-type": "text/plain"}
        )
        assert form.status_code == 415
        assert decide(client, "key0", 0, "pick", origin="http://evil.example").status_code == 403
        assert (
            decide(client, "key0", 0, "pick", **{"sec-fetch-site": "cross-site"}).status_code == 403
        )
        assert (
            decide(client, "key0", 0, "pick", **{"sec-fetch-site": "same-site"}).status_code == 403
        )
        same = decide(client, "key0", 0, "pick", origin=origin, **{"sec-fetch-site": "same-origin"})
        assert same.status_code == 200
        batch = target.ledger.get_batch("b")
        assert batch is not None
        assert target.ledger.review_counts(batch.id) == ReviewCounts(1, 0)


def test_on_loopback_the_host_must_be_loopback(target: ReviewTarget) -> None:
    # A page on another site cannot reach us through a name rebound to 127.0.0.1.
    with (
        running_review(target) as server,
        httpx.Client(base_url=server.url_at("127.0.0.1")) as client,
    ):
        assert (
            client.get("/", headers={"host": f"attacker.example:{server.port}"}).status_code == 403
        )
        assert client.get("/", headers={"host": f"localhost:{server.port}"}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/files/../secret.png",
        "/files/%2e%2e/secret.png",
        "/files/..%2fsecret.png",
        "/files//etc/passwd",
        "/files/manifest.jsonl",
        "/files/ledger.db",
        "/files/nothing-here.png",
        "/files/.thumbs/../../secret.png",
    ],
)
def test_only_the_batch_folder_images_are_served(target: ReviewTarget, path: str) -> None:
    # A raw request line: httpx would normalise the dots away.
    with (
        running_review(target) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert b" 404 " in status or b" 400 " in status, (path, status)
    assert b"not for you" not in answer


def test_images_are_served(target: ReviewTarget) -> None:
    with (
        running_review(target) as server,
        httpx.Client(base_url=server.url_at("127.0.0.1")) as client,
    ):
        answer = client.get("/files/00001-prompt-0-key0-2.png")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/png"
        assert answer.content == (target.folder / "00001-prompt-0-key0-2.png").read_bytes()
        client.get("/")  # makes the thumbnails
        [thumb] = [p.name for p in (target.folder / ".thumbs").glob("*.jpg")][:1]
        assert client.get(f"/files/.thumbs/{thumb}").headers["content-type"] == "image/jpeg"


def test_off_loopback_every_request_needs_the_token(target: ReviewTarget) -> None:
    with running_review(target, host="0.0.0.0") as server:
        assert server.token and len(server.token) >= 32
        assert f"?token={server.token}" in server.url
        base = f"http://127.0.0.1:{server.port}"
        with httpx.Client(base_url=base) as client:
            for path in ("/", "/api/reviews", "/files/00001-prompt-0-key0-1.png", "/nothing"):
                refused = client.get(path)
                assert refused.status_code == 403, path
                assert "token" in refused.json()["message"]
            assert client.get("/", params={"token": "wrong"}).status_code == 403
            assert decide(client, "key0", 0, "pick").status_code == 403
            page = client.get("/", params={"token": server.token})
            assert page.status_code == 200
            assert server.token in page.headers["set-cookie"]
            assert "HttpOnly" in page.headers["set-cookie"]
            # The page's own requests carry it as a header or a cookie.
            with_header = decide(client, "key0", 0, "pick", **{"x-batcher-token": server.token})
            assert with_header.status_code == 200
        with httpx.Client(base_url=base, cookies={"batcher_token": server.token}) as client:
            assert client.get("/api/reviews").json()["reviews"][0]["verdict"] == "pick"


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    assert not is_loopback("example.org")
