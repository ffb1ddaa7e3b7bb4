"""recforge.pipeline.datagate.docs_bundle: Data Docs pages that load nothing from the network."""

import re

import pytest

from recforge.pipeline.datagate.docs_bundle import BOOTSTRAP_CSS, JQUERY_JS, bundle_docs

PAGE = """<html><head>
<link rel="shortcut icon" href="./static/images/favicon.ico" type="image/x-icon"/>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<link rel="stylesheet" href="https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css">
<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>
<script src="https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js"></script>
<style>.logo { background:
  url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png'); }</style>
</head><body><a href="../../index.html">Home</a>
<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1&dataContextId=x"/>
<a href="https://greatexpectations.io">GX</a></body></html>"""


@pytest.mark.skipif(not (BOOTSTRAP_CSS.is_file() and JQUERY_JS.is_file()),
                    reason="libjs-bootstrap4/libjs-jquery not installed: run infra/local/system-packages.sh")
def test_pages_are_self_contained(tmp_path):
    page = tmp_path / "validations" / "suite" / "run.html"
    page.parent.mkdir(parents=True)
    page.write_text(PAGE)
    (tmp_path / "notes.txt").write_text("not a page")
    assert bundle_docs(tmp_path) == [page]
    html = page.read_text()
    # no stylesheet, script or image is loaded from the network any more
    assert not re.search(r"<(link|script)[^>]*(href|src)=\"https?://", html.replace('rel="shortcut icon"', ""))
    assert not re.search(r"(src=\"|url\(')https?://", html)
    assert BOOTSTRAP_CSS.read_text()[:200] in html and JQUERY_JS.read_text()[:200] in html
    assert "offline Data Docs: https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css" in html
    assert "jQuery.fn.bootstrapTable = function" in html  # the pages' calls still run
    assert html.count("data:image/png;base64,") == 2
    assert 'href="../../index.html"' in html and 'href="https://greatexpectations.io"' in html  # links stay
    assert bundle_docs(tmp_path) == []  # idempotent
