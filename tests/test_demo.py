"""The Gradio demo: served on 127.0.0.1, answers through gradio_client, and in a real headless Chromium."""

import shutil
import socket
from pathlib import Path

import pytest

from hftk.demos import launch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_app(digits_run):
    port = _free_port()
    app = launch(digits_run, port=port, prevent_thread_lock=True, quiet=True)
    yield app
    app.close()


@pytest.fixture
def demo_url(demo_app):
    return demo_app.local_url


def test_demo_binds_localhost_by_default(demo_app):
    assert demo_app.server_name == "127.0.0.1"
    assert demo_app.local_url.startswith("http://127.0.0.1:")


def test_demo_classifies_an_example_like_predict(digits_run, demo_url):
    from gradio_client import Client, handle_file

    from hftk.tasks.image_classification import predict

    example = sorted((digits_run / "eval" / "examples").glob("*.png"))[2]
    client = Client(demo_url, verbose=False)
    _, label = client.predict(handle_file(str(example)), api_name="/classify")
    expected = predict(digits_run, [example], top_k=5)[0]["predictions"]
    assert label["label"] == expected[0]["label"]
    assert [c["label"] for c in label["confidences"]] == [p["label"] for p in expected]


def test_bad_uploads_get_readable_errors_and_the_server_keeps_serving(digits_run, demo_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(AppError, match="notes.png: not a readable image"):
        client.predict(handle_file(str(text)), api_name="/classify")
    with pytest.raises(AppError, match="No image"):
        client.predict(None, api_name="/classify")
    example = sorted((digits_run / "eval" / "examples").glob("*.png"))[0]
    _, label = client.predict(handle_file(str(example)), api_name="/classify")
    assert label["label"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_real_browser_uploads_an_image_and_reads_the_label(digits_run, demo_url):
    from playwright.sync_api import sync_playwright

    example = sorted((digits_run / "eval" / "examples").glob("*.png"))[1]
    expected_label = Path(example).stem.split("_", 1)[1]  # examples are named <index>_<true label>.png
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        page = browser.new_page()
        page.goto(demo_url)
        page.locator("input[type=file]").first.set_input_files(str(example))
        label = page.locator(".output-class, [data-testid=label-output-value]").first
        label.wait_for(timeout=30000)
        page.wait_for_function(
            "document.querySelector('[data-testid=label-output-value], .output-class')?.textContent.trim().length > 0",
            timeout=30000,
        )
        shown = label.text_content().strip()
        page.screenshot(path=str(digits_run / "eval" / "demo_screenshot.png"), full_page=True)
        browser.close()
    from hftk.tasks.image_classification import predict

    assert shown == predict(digits_run, [example])[0]["predictions"][0]["label"]
    assert expected_label  # the example file carries its true label for people reading the screenshot
