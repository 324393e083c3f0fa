"""The pages textclf writes or serves, opened in a real headless chromium (issue 25), offline.

* ``textclf serve`` -> ``/docs``: Swagger UI comes from the package (not a CDN), lists ``POST /predict``,
  and "Try it out" -> "Execute" returns predictions;
* ``textclf report`` and ``textclf leaderboard --html``: every image shows, nothing is fetched
  from outside this machine.

The ``browser_page`` fixture (tests/conftest.py) refuses and records every request leaving
127.0.0.1; the tests skip where Debian's chromium or Playwright is missing. Set
``TEXTCLF_SCREENSHOTS=docs/img`` to refresh the screenshots of docs/serving.md and docs/model_card.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import httpx
from click.testing import CliRunner

from textclf.cli import cli
from textclf.core.loading import load_predictor

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ServeProcess  # noqa: E402

#: the Swagger UI block of ``POST /predict`` (FastAPI's operation id ``predict_predict_post``, tag ``default``)
PREDICT_OP = "#operations-default-predict_predict_post"



def screenshot(page, tmp_path: Path, name: str, clip: dict | None = None) -> Path:
    """Screenshot ``page`` (the ``clip`` box of the page, else the viewport) to ``tmp_path`` and ``$TEXTCLF_SCREENSHOTS``."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=clip is not None, clip=clip)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("TEXTCLF_SCREENSHOTS"):
        Path(os.environ["TEXTCLF_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(os.environ["TEXTCLF_SCREENSHOTS"]) / name)
    return path


def test_docs_page_works_offline_and_try_it_out_predicts(ft_model, browser_page, tmp_path):
    texts = ["I love this so much, best day ever", "worst service, I am so angry"]
    want = load_predictor(ft_model).predict(texts)
    server = ServeProcess(ft_model)
    try:
        page = browser_page.page
        page.goto(f"{server.url}/docs")
        op = page.locator(PREDICT_OP)
        op.wait_for(timeout=30_000)  # rendered by Swagger UI's JavaScript: blank without its assets
        assert op.locator(".opblock-summary-method").inner_text() == "POST"
        assert op.locator(".opblock-summary-path").inner_text().strip() == "/predict"
        op.locator(".opblock-summary").click()
        op.get_by_role("button", name="Try it out").click()
        op.locator("textarea.body-param__text").fill(json.dumps({"texts": texts, "probabilities": True}))
        op.get_by_role("button", name="Execute").click()
        body = op.locator(".live-responses-table .response-col_description .microlight").first
        body.wait_for(timeout=30_000)
        status = op.locator(".live-responses-table .response .response-col_status").first.inner_text()
        answer = json.loads(body.inner_text())
        assert status.strip() == "200"
        assert [p["label"] for p in answer["predictions"]] == want
        assert all(set(p["probabilities"]) == {"negative", "positive"} for p in answer["predictions"])
        assert browser_page.external == [] and browser_page.broken_images() == []
        top, live = op.bounding_box(), op.locator(".live-responses-table").first.bounding_box()
        scroll = page.evaluate("window.scrollY")  # boxes are in viewport coordinates, the clip in the page's
        clip = {"x": top["x"], "y": top["y"] + scroll, "width": top["width"], "height": live["y"] + live["height"] - top["y"]}
        screenshot(page, tmp_path, "docs.png", clip=clip)  # the operation, from its title to the live answer

        assert httpx.get(f"{server.url}/redoc").status_code == 404  # off: ReDoc fetches its logo from cdn.redoc.ly
    finally:
        assert server.stop() in (0, -15, 143)


def test_report_page_shows_every_image_offline(ft_model, tweets, browser_page, tmp_path):
    result = CliRunner().invoke(cli, ["report", "--model_path", str(ft_model), "--data_path", str(tweets["test"]),
                                      "--out_dir", str(tmp_path / "report")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = browser_page.page
    page.goto((tmp_path / "report" / "report.html").as_uri())
    page.wait_for_load_state("load")
    images = page.locator("img")
    assert images.count() >= 3  # confusion matrix, per-class bars, PR curves at least
    assert browser_page.broken_images() == []
    assert browser_page.external == []
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert min(widths) > 100  # real figures, not placeholders
    screenshot(page, tmp_path, "report.png")


def test_leaderboard_page_shows_its_chart_offline(ft_model, tweets, browser_page, tmp_path):
    html = tmp_path / "board" / "leaderboard.html"
    result = CliRunner().invoke(cli, ["leaderboard", str(ft_model), "--html", str(html), "--no-isolate", "--n_boot", "200"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = browser_page.page
    page.goto(html.as_uri())
    page.wait_for_load_state("load")
    assert page.locator("img").count() >= 1
    assert browser_page.broken_images() == []
    assert browser_page.external == []
    assert "model" in page.locator("table").first.inner_text()
    screenshot(page, tmp_path, "leaderboard.png")
