"""The Gradio demo: served on 127.0.0.1, answers through gradio_client, and in a real headless Chromium."""

import shutil
import socket

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
    label = client.predict(handle_file(str(example)), api_name="/classify")
    expected = predict(digits_run, [example], top_k=5)[0]["predictions"]
    assert label["label"] == expected[0]["label"]
    assert [c["label"] for c in label["confidences"]] == [p["label"] for p in expected]


def test_bad_uploads_get_readable_errors_and_the_server_keeps_serving(digits_run, demo_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from hftk.tasks.image_classification import predict

    client = Client(demo_url, verbose=False)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(AppError, match="notes.png: not a readable image"):
        client.predict(handle_file(str(text)), api_name="/classify")
    with pytest.raises(AppError, match="No image"):
        client.predict(None, api_name="/classify")
    example = sorted((digits_run / "eval" / "examples").glob("*.png"))[0]
    label = client.predict(handle_file(str(example)), api_name="/classify")
    assert label["label"] == predict(digits_run, [example])[0]["predictions"][0]["label"]


def test_concurrent_clients_all_get_their_answer(digits_run, demo_url):
    """100 requests from 8 threads, many of them for the same image: every one answered, and rightly."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    from hftk.tasks.image_classification import predict

    examples = sorted((digits_run / "eval" / "examples").glob("*.png"))[:3]
    expected = {str(e): predict(digits_run, [e])[0]["predictions"][0]["label"] for e in examples}
    clients = [Client(demo_url, verbose=False) for _ in range(8)]

    def ask(i: int) -> tuple[str, str]:
        example = str(examples[i % len(examples)])
        return example, clients[i % 8].predict(handle_file(example), api_name="/classify")["label"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(100)))
    assert len(answers) == 100
    assert all(label == expected[example] for example, label in answers)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_real_browser_shows_thumbnails_and_classifies_an_upload(digits_run, demo_url):
    from playwright.sync_api import sync_playwright

    from hftk.tasks.image_classification import predict

    example = sorted((digits_run / "eval" / "examples").glob("*.png"))[1]
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
        gallery = page.locator(".gallery img, [data-testid=examples] img, table img")
        gallery.first.wait_for(timeout=30000)
        thumbnails = gallery.count()
        page.locator("input[type=file]").first.set_input_files(str(example))
        page.wait_for_function(
            "document.querySelector('[data-testid=label-output-value], .output-class')?.textContent.trim().length > 0",
            timeout=30000,
        )
        shown = page.locator(".output-class, [data-testid=label-output-value]").first.text_content().strip()
        page.screenshot(path=str(digits_run / "eval" / "demo_screenshot.png"), full_page=True)
        browser.close()
    assert thumbnails == 8  # the test-split examples show as pictures, not file names
    assert shown == predict(digits_run, [example])[0]["predictions"][0]["label"]
