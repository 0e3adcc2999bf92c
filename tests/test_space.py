"""`hftk space`: a Space folder whose app runs in a fresh process, answers gradio_client, and binds localhost."""

import os
import socket
import subprocess
import sys
import time

import pytest

from hftk.tasks.image_classification import predict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_written_space_runs_in_a_fresh_process_and_answers(digits_run, cli, tmp_path):
    from gradio_client import Client, handle_file

    space = tmp_path / "space"
    code, out, err = cli("space", digits_run, space)
    assert code == 0, err
    for name in ("app.py", "requirements.txt", "README.md", "hftk/__init__.py", "model/config.json"):
        assert (space / name).is_file(), name
    assert not list((space / "model").glob("checkpoint-*")) and not (space / "model" / "runs").exists()
    readme = (space / "README.md").read_text()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme
    assert any(line.startswith("transformers") for line in (space / "requirements.txt").read_text().splitlines())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRADIO_SERVER_NAME")}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import runpy, sys; sys.argv = ['app.py', '--port', sys.argv[1]]; "
            "runpy.run_path('app.py', run_name='__main__')",
            str(port),
        ],
        cwd=space,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = None
        for _ in range(240):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not serving yet
                assert proc.poll() is None, (tmp_path / "app.log").read_text()[-2000:]
                time.sleep(0.5)
        assert client is not None, "the Space app did not start"
        example = sorted((space / "model" / "eval" / "examples").glob("*.png"))[0]
        label = client.predict(handle_file(str(example)), api_name="/classify")
        assert label["label"] == predict(digits_run, [example])[0]["predictions"][0]["label"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_space_never_replaces_a_folder_it_did_not_write(digits_run, cli, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    code, _, err = cli("space", digits_run, target)
    assert code == 2 and "not empty" in err
    code, _, err = cli("space", digits_run, target, "--overwrite")
    assert code == 2 and "not a Space written by hftk" in err and (target / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("model_id, message", [("bad id!", "not 'name' or 'owner/name'")])
def test_space_with_a_bad_model_id_is_one_line(digits_run, cli, tmp_path, model_id, message):
    code, _, err = cli("space", digits_run, tmp_path / "s", f"--model-id={model_id}")
    assert code == 2 and message in err
