"""The sections of a recipe as dataclasses: what each key means, its type and its default.

A recipe has the sections ``task``, ``model``, ``data``, ``train``, ``eval``, ``budget``, ``regularization``, ``hub``
and ``demo``. ``train`` holds ``transformers.TrainingArguments`` fields under their own names; every other section is
a dataclass below, whose fields' ``help`` is the documentation ``hftk recipes --keys`` prints. A task extends
``model``, ``data`` and ``eval`` with fields of its own (its spec's ``config_classes``). This module knows no task:
loading and validating a recipe file is ``hftk.config``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # shipped inside the package; ./recipes links here


def setting(default: Any, help: str, per_architecture: bool = False, **kwargs: Any) -> Any:
    """A dataclass field whose ``help`` is shown by ``hftk recipes --keys``.

    ``per_architecture``: a model setting that belongs to the recipe's ``model.name`` (config fields, a backbone);
    a ``model.name=...`` override that names another model drops the recipe's value of it.
    """
    metadata = {"help": help, "per_architecture": per_architecture}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass
class PeftConfig:
    """A PEFT adapter trained instead of the full model (the base stays frozen; the task's head trains in full)."""

    method: Literal["none", "lora", "dora", "ia3", "loha", "lokr"] = setting(
        "none", "adapter type (none: full training)"
    )
    r: int = setting(8, "rank of the LoRA/DoRA/LoHa/LoKr update")
    alpha: int = setting(16, "scaling of the update (alpha / r)")
    dropout: float = setting(0.05, "dropout on the adapter's input")
    target_modules: list[str] | None = setting(None, "layers to adapt (None: the architecture's sensible default)")
    quantize: Literal["none", "4bit"] = setting(
        "none", "4bit: QLoRA, the pretrained base in 4-bit NF4 (bitsandbytes; text tasks), the adapter trains"
    )


@dataclass
class ModelConfig:
    """Which network to train and how to initialise it."""

    name: str = setting("", "timm architecture (resnet18), transformers model type (vit), Hub id or local folder")
    pretrained: bool = setting(False, "load pretrained weights (Hub or local folder) instead of a random init")
    model_args: dict = setting(
        {}, "extra arguments: timm.create_model kwargs, or transformers config fields", per_architecture=True
    )
    freeze: str | int = setting(
        "none", "none, backbone (train only the head), or N: freeze the stem/embeddings and the first N blocks"
    )
    gradual_unfreeze: int = setting(0, "unfreeze this many frozen layers (from the top) at each new epoch (0: off)")
    backbone_lr_multiplier: float = setting(1.0, "learning-rate factor of everything but the head (e.g. 0.1)")
    layer_decay: float | None = setting(
        None, "layer-wise learning-rate decay: layer i of L (stem first) trains at lr x decay^(L - i), e.g. 0.75"
    )
    peft: PeftConfig = setting(PeftConfig(), "train a PEFT adapter (LoRA...) on the pretrained model")
    channels_last: bool | None = setting(None, "channels-last memory for convolutions (None: on for CNNs on a GPU)")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of a pretrained model")
    trust_remote_code: bool = setting(False, "allow code from the model's Hub repo to run (off: safer)")


@dataclass
class DataConfig:
    """Where the examples come from and how they are split."""

    name: str | None = setting(None, "embedded data set name or Hub dataset id")
    path: str | None = setting(None, "local folder or file (used instead of name)")
    config_name: str | None = setting(None, "Hub dataset configuration name")
    revision: str | None = setting(None, "Hub dataset revision")
    train_split: str = setting("train", "split used for training")
    validation_split: str | None = setting("validation", "validation split; carved from train when missing")
    test_split: str | None = setting("test", "held-out split for the final evaluation; carved when missing")
    validation_size: float = setting(0.1, "fraction of train carved out for validation when there is none")
    test_size: float = setting(0.1, "fraction of train carved out as test when there is none")
    split_seed: int = setting(42, "seed of the validation/test carving (fixed splits stay fixed)")
    max_train_samples: int | None = setting(None, "truncate the training split (quick tries)")
    max_eval_samples: int | None = setting(None, "truncate the validation and test splits")


@dataclass
class EvalConfig:
    """The evaluation that ends training and that `hftk evaluate` runs."""

    split: str = setting("test", "split evaluated after training and by default in `hftk evaluate`")
    batch_size: int = setting(64, "evaluation batch size")
    worst_examples: int = setting(16, "how many of the most confident mistakes to keep")
    early_stopping_patience: int | None = setting(
        None, "stop after this many evaluations without improving train.metric_for_best_model (None: off)"
    )


@dataclass
class BudgetConfig:
    """Train for a wall-clock time instead of a number of steps."""

    minutes: float | None = setting(
        None,
        "stop training after this many minutes; without train.max_steps the LR schedule follows elapsed time "
        "(results then depend on the machine's speed), with it the schedule follows steps",
    )


@dataclass
class RegularizationConfig:
    """Regularization for every task (weight decay, label smoothing and clipping are `train:` fields)."""

    ema_decay: float | None = setting(
        None, "keep a moving average of the weights with this decay (e.g. 0.999); the saved model is the average"
    )
    l1: float = setting(0.0, "L1 penalty strength on weight matrices (0: off), e.g. 1e-5")
    dropout: float | None = setting(None, "set every dropout probability of the model to this (None: the model's)")


@dataclass
class HubConfig:
    """Publishing to the Hugging Face Hub (`hftk push`). The token comes from HF_TOKEN or `hf auth login`."""

    model_id: str | None = setting(None, "Hub repo id, e.g. user/mnist-resnet")
    private: bool = setting(True, "create the repo as private")
    push: bool = setting(
        False, "push the run to hub.model_id when training ends (checkpoints as train.hub_strategy says)"
    )
    license: str = setting("apache-2.0", "license in the model card (match it to your data and base model)")


@dataclass
class DemoConfig:
    """The Gradio demo (`hftk demo`)."""

    host: str = setting("127.0.0.1", "interface to bind; 0.0.0.0 exposes the demo to the network")
    port: int | None = setting(None, "port (None: the first free one from 7860)")
    examples: int = setting(8, "how many test examples the demo offers")


# hftk's defaults for `train:`; a recipe's own keys win. Every key is a TrainingArguments field.
TRAIN_DEFAULTS: dict[str, Any] = {
    "report_to": ["tensorboard"],  # TensorBoard events under <run>/runs
    "logging_steps": 10,
    "save_total_limit": 2,  # keep the newest checkpoints (the best one is kept too)
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "remove_unused_columns": False,  # tasks feed exactly the columns the model needs
}


@dataclass
class Recipe:
    """A fully resolved recipe: what `hftk train` runs and what a run folder records."""

    task: str
    model: ModelConfig
    data: DataConfig
    train: dict[str, Any]
    eval: EvalConfig
    budget: BudgetConfig
    regularization: RegularizationConfig
    hub: HubConfig
    demo: DemoConfig
    name: str = "run"
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, in section order, ready for YAML (no secrets: recipes hold none)."""
        out: dict[str, Any] = {"task": self.task, "name": self.name}
        for section in ("model", "data", "train", "eval", "budget", "regularization", "hub", "demo"):
            value = getattr(self, section)
            out[section] = dict(value) if isinstance(value, dict) else dataclasses.asdict(value)
        return out

    def save(self, path: Path) -> None:
        """Write the resolved recipe as YAML (the run's `recipe.yaml`)."""
        header = f"# Resolved recipe of run '{self.name}' (from {self.source or 'defaults'}).\n"
        path.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False))


SECTIONS = ("model", "data", "eval", "budget", "regularization", "hub", "demo")
BASE_SECTION_CLASSES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "budget": BudgetConfig,
    "regularization": RegularizationConfig,
    "hub": HubConfig,
    "demo": DemoConfig,
}
