"""The inbox client's download_file (a client's photo for «Фото замовлення»): only the allowed file
hosts, https (plain http only for an origin listed as such), no credentials in or sent with the
URL, no redirects followed, at most MAX_FILE_BYTES."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from connectors import inbox
from connectors.base import Connection, PermanentApiError
from tests.fakes_inbox import TOKEN, FakeInbox


@pytest.fixture
def fake() -> Iterator[FakeInbox]:
    server = FakeInbox().start()
    yield server
    server.stop()


def client(fake: FakeInbox, hosts=None) -> inbox.Client:
    options = {"file_hosts": hosts} if hosts is not None else {}
    return inbox.Client(Connection("shop-inbox", "inbox", base_url=fake.url, credentials={"token": TOKEN},
                                   options=options))


@pytest.mark.parametrize("url,why", [
    ("http://scontent.cdninstagram.com/a.jpg", "only https is fetched"),
    ("https://evil.example/a.jpg", "'evil.example' is not one of the allowed file hosts"),
    ("https://evilcdninstagram.com/a.jpg", "'evilcdninstagram.com' is not one of the allowed file hosts"),
    ("https://127.0.0.1/a.jpg", "'127.0.0.1' is not one of the allowed file hosts"),
    ("https://user:pw@umnico.com/a.jpg", "credentials in it"),
    ("file:///etc/passwd", "no host"),
])
def test_refused_urls(url, why):
    with pytest.raises(PermanentApiError, match=why):
        inbox._allowed_file_url(url, inbox.FILE_HOSTS)


def test_allowed_urls(fake):
    assert inbox._allowed_file_url("https://scontent-waw1-1.cdninstagram.com/v/a.jpg?x=1", inbox.FILE_HOSTS)
    assert inbox._allowed_file_url("https://umnico.com/files/a.jpg", inbox.FILE_HOSTS)
    assert inbox._allowed_file_url(f"{fake.url}/media/a.jpg", [fake.url])


def test_download_without_the_token_and_within_the_size(fake, monkeypatch):
    fake.media["cake%20big.jpg"] = b"\xff\xd8photo"
    content, name = client(fake, [fake.url]).download_file(f"{fake.url}/media/cake%20big.jpg")
    assert (content, name) == (b"\xff\xd8photo", "cake big.jpg")
    [call] = fake.received("GET", r"/media/.+")
    assert "Authorization" not in call.headers
    monkeypatch.setattr(inbox, "MAX_FILE_BYTES", 4)
    with pytest.raises(PermanentApiError, match="larger than 4 bytes"):
        client(fake, [fake.url]).download_file(f"{fake.url}/media/cake%20big.jpg")


def test_a_missing_file_or_a_redirect_is_permanent(fake):
    with pytest.raises(PermanentApiError, match="HTTP 404"):
        client(fake, [fake.url]).download_file(f"{fake.url}/media/none.jpg")
    # before the fake's own /media/ route: a redirect to a metadata address is not followed
    fake.routes.insert(0, ("GET", re.compile(r"/media/moved\.jpg$"),
                           lambda c, m: (302, b"", {"Location": "http://169.254.169.254/"})))
    with pytest.raises(PermanentApiError, match="HTTP 302"):
        client(fake, [fake.url]).download_file(f"{fake.url}/media/moved.jpg")
