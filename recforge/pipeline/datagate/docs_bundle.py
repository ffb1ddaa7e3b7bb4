"""Self-contained Data Docs: GX's HTML pages with the CSS/JS they load from CDNs inlined, so they render offline and
inside MLflow's artifact viewer.

MLflow shows an HTML artifact as a blob URL in a sandboxed iframe: a relative ``<link href>`` resolves against
``blob:`` there and loads nothing, and a CDN link fails without internet. So every page gets its assets *inline*:

* Bootstrap 4 (CSS, and its JS bundle with Popper) from Debian's ``libjs-bootstrap4``, jQuery from
  ``libjs-jquery`` (``infra/local/system-packages.sh`` installs both; a missing file is left out, the page still
  renders with GX's own inline styles);
* GX's logo (its pages load it from S3) from the great_expectations package's ``render/view/static`` as a data URI;
* what has no offline copy here (bootstrap-table, its filter extension, bootstrap-dark, datepicker, Font Awesome,
  vega/vega-lite/vega-embed) is removed with an HTML comment naming it (the two the pages call get a no-op
  stand-in): tables stay plain Bootstrap tables, icons and the optional charts are missing, and the page does not
  wait on a network that is not there.

Links between pages stay relative (``../../index.html``): they work where the folder is downloaded and opened
from disk.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path

DEBIAN_JS = Path("/usr/share/javascript")
BOOTSTRAP_CSS = DEBIAN_JS / "bootstrap4" / "css" / "bootstrap.min.css"
BOOTSTRAP_JS = DEBIAN_JS / "bootstrap4" / "js" / "bootstrap.bundle.min.js"  # with Popper
JQUERY_JS = DEBIAN_JS / "jquery" / "jquery.min.js"

# CDN URL (its start) -> the local file that replaces it; None: no offline copy, the tag is dropped
CDN_ASSETS: Mapping[str, Path | None] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4": BOOTSTRAP_CSS,
    "https://stackpath.bootstrapcdn.com/bootstrap/4": BOOTSTRAP_JS,
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/": None,  # inside Bootstrap's bundle
    "https://code.jquery.com/jquery-3": JQUERY_JS,
}
# no offline copy, but the pages use them: stand-ins so the page's script still runs and a status still shows
SHIMS: Mapping[str, str] = {
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        "<script>if (window.jQuery && !jQuery.fn.bootstrapTable) "
        "{ jQuery.fn.bootstrapTable = function () { return this; }; }</script>",
    "https://cdn.jsdelivr.net/npm/vega-embed@6":
        "<script>window.vegaEmbed = window.vegaEmbed || function () { return Promise.resolve(); };</script>",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":  # the status icons, as text
        "<style>.fas.fa-check-circle::before { content: '\\2714'; } .fas.fa-times::before { content: '\\2716'; } "
        ".fas.fa-exclamation-triangle::before { content: '\\26A0'; } .fas { font-style: normal; }</style>",
}
TAG = re.compile(r"<(?P<kind>link|script)\b(?P<attrs>[^>]*?)(?P<url_attr>href|src)=\"(?P<url>https?://[^\"]+)\""
                 r"(?P<rest>[^>]*)>(?:\s*</script>)?", re.IGNORECASE)
S3_IMAGE = re.compile(r"https://great-expectations-web-assets\.s3[^\"')\s]*/(?P<name>[\w.-]+\.png)[^\"')\s]*")


def gx_static_dir() -> Path:
    """``great_expectations/render/view/static`` (styles, fonts and images GX ships)."""
    import great_expectations

    return Path(great_expectations.__file__).parent / "render" / "view" / "static"


def local_asset(url: str) -> Path | None:
    """The local file standing in for CDN ``url``, or None when there is none (or it is not installed)."""
    for prefix, path in CDN_ASSETS.items():
        if url.startswith(prefix):
            return path if path is not None and path.is_file() else None
    return None


def inline_tag(match: re.Match) -> str:
    """A ``<link>``/``<script>`` to a CDN as an inline ``<style>``/``<script>``, or a comment when not bundled."""
    url, kind = match["url"], match["kind"].lower()
    if kind == "link" and "stylesheet" not in match.group(0).lower():
        return match.group(0)  # an ordinary link (a favicon, a page): not an asset to inline
    path = local_asset(url)
    if path is None:
        return f"<!-- offline Data Docs: {url} not bundled -->{SHIMS.get(url, '')}"
    text = path.read_text(encoding="utf-8")
    if kind == "link":
        return f"<style>/* {path.name}, for {url} */\n{text}\n</style>"
    script = text.replace("</script", "<\\/script")  # the inlined code must not close its own tag
    return f"<script>/* {path.name}, for {url} */\n{script}\n</script>"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def bundle_page(html: str, images: Path | None = None) -> str:
    """One Data Docs page made self-contained (CDN CSS/JS inlined or dropped, GX's S3 images as data URIs)."""
    images = images or gx_static_dir() / "images"

    def image(match: re.Match) -> str:
        name = match["name"].replace("full_logo_dark", "logo-long")
        path = images / name
        return data_uri(path) if path.is_file() else ""

    return S3_IMAGE.sub(image, TAG.sub(inline_tag, html))


def bundle_docs(folder: Path) -> list[Path]:
    """Make every ``*.html`` under ``folder`` self-contained, in place; returns the pages rewritten."""
    rewritten = []
    for page in sorted(Path(folder).rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        bundled = bundle_page(html)
        if bundled != html:
            page.write_text(bundled, encoding="utf-8")
            rewritten.append(page)
    return rewritten
