"""The built documentation site (``make docs``) as a reader sees it.

Headless Chromium renders the index and the first tutorial: each shows its title, the tutorial
its figures, neither an error block. Every built page's relative links and image sources
resolve to files (and anchors) of the site, offline. A screenshot of the first tutorial is left
in ``docs/_build/screenshots/``.

Skipped when the site is not built or Chromium is missing; ``make docs-check`` sets
``TRVAE_DOCS_REQUIRE=1``, which turns those skips into failures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
SITE = DOCS / "_build" / "html"
SCREENSHOTS = DOCS / "_build" / "screenshots"
REQUIRED = os.environ.get("TRVAE_DOCS_REQUIRE") == "1"
FIRST_TUTORIAL = "tutorials/kang.html"
TITLES = {
    "index.html": "trvae",
    FIRST_TUTORIAL: "Predict the interferon-β response of a held-out cell type",
}
#: What executed notebooks and Sphinx show when something went wrong.
ERROR_MARKERS = ("Traceback (most recent call last)", 'class="output traceback', "system-message")


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        _missing(f"no built site at {SITE} (run `make docs`)")
    return SITE


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    _missing("Chromium is not installed (Debian: apt-get install chromium)")
    raise AssertionError  # unreachable


def _browse(chromium: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
        page.as_uri(),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, f"chromium failed on {page}:\n{out.stderr[-2000:]}"
    return out


class _Page(HTMLParser):
    """Title, h1 texts, image sources, links and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title, self.h1, self.images, self.links, self.ids = "", [], [], [], set()
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag in ("title", "h1"):
            self._in = tag
            if tag == "h1":
                self.h1.append("")
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "link", "img", "script", "source", "iframe"):
                self.links.append(a[key])

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.h1[-1] += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _local_target(page: Path, link: str) -> tuple[Path, str] | None:
    """The file and anchor a relative link of ``page`` points to; None for external links."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith("//"):
        return None  # http(s), mailto, data: ... not part of the offline site
    if not parts.path:
        return page, unquote(parts.fragment)
    return (page.parent / unquote(parts.path)).resolve(), unquote(parts.fragment)


@pytest.mark.parametrize("name", list(TITLES))
def test_page_renders_in_chromium(site: Path, chromium: str, name: str, tmp_path: Path) -> None:
    dom = _browse(chromium, site / name, tmp_path, "--dump-dom").stdout
    page = _parse(dom)
    assert TITLES[name] in page.title, page.title
    assert any(TITLES[name] in h.replace("¶", "").replace("#", "") for h in page.h1), page.h1
    for marker in ERROR_MARKERS:
        assert marker not in dom, f"{name} shows an error block ({marker!r})"
    figures = [src for src in page.images if "_images/" in src and src.endswith(".png")]
    assert figures, f"{name} shows no figure"
    for src in figures:
        target, _ = _local_target(site / name, src)
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{src} is not a PNG"


def test_first_tutorial_screenshot(site: Path, chromium: str, tmp_path: Path) -> None:
    mpimg = pytest.importorskip("matplotlib.image")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "tutorial-kang.png"
    shot.unlink(missing_ok=True)
    # tall enough to reach the first figures; the virtual time lets the page's scripts settle
    args = ("--window-size=1280,4200", f"--screenshot={shot}", "--virtual-time-budget=3000")
    _browse(chromium, site / FIRST_TUTORIAL, tmp_path, *args)
    pixels = mpimg.imread(shot)
    assert pixels.shape[:2] == (4200, 1280)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"


def test_tutorials_show_no_errors_or_warnings(site: Path) -> None:
    pages = sorted((site / "tutorials").glob("*.html"))
    assert pages, "no tutorial pages"
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for marker in (*ERROR_MARKERS, 'class="output stderr'):
            assert marker not in html, f"{page.name} shows {marker!r}"
        assert "_images/" in html, f"{page.name} has no figure"


def test_internal_links_resolve(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 5
    parsed: dict[Path, _Page] = {}
    broken = []
    for page in pages:
        links = _parse(page.read_text(encoding="utf-8")).links
        for link in links:
            local = _local_target(page, link)
            if local is None:
                continue
            target, anchor = local
            where = f"{page.relative_to(site)}: {link}"
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{where} (no file)")
            elif anchor and target.suffix == ".html":
                if target not in parsed:
                    parsed[target] = _parse(target.read_text(encoding="utf-8"))
                if anchor not in parsed[target].ids:
                    broken.append(f"{where} (no anchor)")
    assert not broken, f"{len(broken)} broken links:\n" + "\n".join(broken[:30])
