"""Model cards and pushing to the Hub: everything up to the network call, and the errors a user sees."""

import json
import logging

import pytest
from huggingface_hub import ModelCard

from hftk.hub import push_files, push_run

DIGITS = "recipes/image-classification/resnet-digits.yaml"


class FakeApi:
    """Records the calls push_run makes; the network is never touched."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        FakeApi.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs["repo_id"], kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeApi.calls = []
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    return FakeApi.calls


def test_push_uploads_exactly_the_model_card_and_evaluation(digits_run, fake_hub):
    files = push_files(digits_run)
    assert {"config.json", "model.safetensors", "README.md", "recipe.yaml", "eval/metrics.json"} <= set(files)
    assert not [f for f in files if f.startswith(("checkpoint-", "runs/")) or f.endswith((".bin", ".pt", ".pth"))]
    url = push_run(digits_run, "someone/digits", private=False, revision="v1", commit_message="first")
    assert url == "https://huggingface.co/someone/digits"
    (create, repo, create_kwargs), (branch, _, branch_kwargs), (upload, _, upload_kwargs) = fake_hub
    assert (create, repo, create_kwargs["private"], create_kwargs["repo_type"]) == (
        "create_repo",
        "someone/digits",
        False,
        "model",
    )
    assert branch == "create_branch" and branch_kwargs["branch"] == "v1"
    assert upload_kwargs["allow_patterns"] == files and upload_kwargs["revision"] == "v1"
    assert upload_kwargs["commit_message"] == "first" and upload_kwargs["folder_path"] == str(digits_run)
    assert "token" not in upload_kwargs and "token" not in create_kwargs  # huggingface_hub reads it itself


def test_push_with_checkpoints_adds_them(digits_run):
    assert any(f.startswith("checkpoint-") for f in push_files(digits_run, include_checkpoints=True))


@pytest.mark.parametrize("repo_id", ["a/b/c", "bad name", "-x/", "user/" + "x" * 100, ""])
def test_bad_repo_ids_are_one_line(digits_run, fake_hub, cli, repo_id):
    code, _, err = cli("push", digits_run, f"--repo-id={repo_id}")
    assert code == 2 and err.count("\n") == 1 and ("not 'name' or 'owner/name'" in err or "no repo id" in err)
    assert fake_hub == []


def test_push_of_a_folder_without_model_is_one_line(tmp_path, cli):
    (tmp_path / "recipe.yaml").write_text("task: image-classification\n")
    code, _, err = cli("push", tmp_path, "--repo-id", "someone/x")
    assert code == 2 and "holds no trained model" in err


def test_offline_push_says_so_in_one_line(digits_run, cli, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    def offline(self, *args, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", offline)
    code, _, err = cli("push", digits_run, "--repo-id", "someone/digits")
    assert code == 2 and "HF_HUB_OFFLINE=1 is set" in err and "Traceback" not in err


def test_push_without_login_says_how_to_log_in(digits_run, cli, monkeypatch):
    from huggingface_hub.errors import LocalTokenNotFoundError

    def no_token(self, *args, **kwargs):
        raise LocalTokenNotFoundError("Token is required")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", no_token)
    code, _, err = cli("push", digits_run, "--repo-id", "someone/digits")
    assert code == 2 and "hf auth login" in err and "HF_TOKEN" in err


def test_card_has_every_section_and_valid_metadata(digits_run):
    card = ModelCard.load(digits_run / "README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "image-classification" and data["license"] == "apache-2.0"
    assert data["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    for heading in ("## Results", "## Training data", "### Hyperparameters", "### Training results", "## How to use"):
        assert heading in card.text, heading
    assert "![confusion matrix](eval/confusion_matrix.png)" in card.text
    assert (digits_run / "recipe.yaml").read_text().strip() in card.text
    results = json.loads((digits_run / "all_results.json").read_text())
    assert f"{results['total_parameters']:,} parameters" in card.text


def test_hub_push_in_the_recipe_pushes_checkpoints_and_the_finished_run(cli, tmp_path, monkeypatch, fake_hub, caplog):
    """hub.push: transformers pushes per hub_strategy, hftk pushes the finished run; the token is never written."""
    import os

    import transformers.utils.hub as transformers_hub

    pushed = []

    class TransformersApi(FakeApi):
        def upload_folder(self, **kwargs):
            pushed.append(kwargs)

            class Done:
                def done(self):
                    return True

            return Done()

    monkeypatch.setattr(transformers_hub, "_hf_api", TransformersApi())
    with caplog.at_level(logging.DEBUG):
        code, out, err = cli(
            "train",
            DIGITS,
            "train.max_steps=4",
            "train.save_strategy=steps",
            "train.save_steps=2",
            "train.eval_strategy=no",
            "hub.push=true",
            "hub.model_id=someone/digits",
            "hub.private=false",
            "--output-dir",
            tmp_path / "run",
        )
    assert code == 0, err
    assert pushed and all(p["repo_id"] == "someone/digits" for p in pushed)  # checkpoint pushes by transformers
    final = [c for c in fake_hub if c[0] == "upload_folder"]
    assert len(final) == 1 and "README.md" in final[0][2]["allow_patterns"]
    token = os.environ["HF_TOKEN"]
    assert token not in caplog.text and token not in out and token not in err
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_hub_push_without_a_repo_id_is_one_line(cli, tmp_path):
    code, _, err = cli("train", DIGITS, "hub.push=true", "--output-dir", tmp_path / "run")
    assert code == 2 and "hub.push: set hub.model_id" in err
