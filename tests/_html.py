"""Reading report pages in tests: the attributes of every image."""

from __future__ import annotations

from html.parser import HTMLParser


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.found.append(dict(attrs))


def images(page: str) -> list[dict]:
    """The attributes of each ``<img>`` of an HTML page's text, in order."""
    parser = _Images()
    parser.feed(page)
    return parser.found
