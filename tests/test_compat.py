"""The library internals hftk/compat.py relies on are still there, in the shape relied on.

An upgrade of transformers, torch, timm or peft that moves one fails here, naming it, instead of somewhere
downstream (a resumed detector silently keeping random weights, a chat metric counting padding twice).
"""

import inspect

import torch
import transformers

from hftk import compat


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_trainer_loads_checkpoints_where_the_detection_workaround_hooks_in():
    assert _parameters(transformers.Trainer._load_from_checkpoint)[:3] == ["self", "resume_from_checkpoint", "model"]
    assert _parameters(transformers.Trainer._load_best_model) == ["self"]


def test_trainer_gathers_evaluation_outputs_through_gather_function():
    assert "self.gather_function(" in inspect.getsource(transformers.Trainer.evaluation_loop)
    assert "eval_use_gather_object" in _parameters(transformers.TrainingArguments.__init__)


def test_seq2seq_trainer_still_lacks_the_optimizer_argument_the_trainer_has():
    assert "optimizer_cls_and_kwargs" in _parameters(transformers.Trainer.__init__)
    # when Seq2SeqTrainer takes it, pass it to the constructor and drop compat.set_optimizer_factory
    assert "optimizer_cls_and_kwargs" not in _parameters(transformers.Seq2SeqTrainer.__init__)
    assert "self.optimizer_cls_and_kwargs" in inspect.getsource(transformers.Trainer.create_optimizer)


def test_save_model_has_the_internal_call_switch_and_prepare_inputs_exists():
    assert "_internal_call" in _parameters(transformers.Trainer.save_model)
    assert _parameters(transformers.Trainer._prepare_inputs) == ["self", "inputs"]


def test_lambda_lr_keeps_one_function_per_group_that_can_be_swapped():
    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [layer.weight]}, {"params": [layer.bias]}], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    assert compat.set_lr_lambdas(scheduler, lambda step: 0.25)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.25]
    assert not compat.set_lr_lambdas(torch.optim.lr_scheduler.StepLR(optimizer, 1), lambda step: 1.0)


def test_auto_mappings_name_the_detectors_and_their_image_processors():
    types = compat.object_detection_model_types()
    assert {"rt_detr", "detr", "conditional_detr", "deformable_detr", "yolos"} <= set(types)
    assert compat.image_processor_names("rt_detr").get("pil") or compat.image_processor_names("rt_detr")


def test_frozen_batch_norms_are_still_named_so():
    from transformers.models.detr import modeling_detr
    from transformers.models.rt_detr import modeling_rt_detr

    for module in (modeling_detr.DetrFrozenBatchNorm2d(4), modeling_rt_detr.RTDetrFrozenBatchNorm2d(4)):
        assert compat.is_frozen_batch_norm(module)
    assert not compat.is_frozen_batch_norm(torch.nn.BatchNorm2d(4))


def test_pipelines_prepare_their_generate_arguments():
    assert _parameters(transformers.Pipeline._prepare_generate_kwargs)[:2] == ["self", "generate_kwargs"]


def test_peft_tables_and_timm_grouping():
    import timm

    lora, ia3, feedforward = compat.peft_default_targets()
    assert "t5" in lora and "gpt2" in ia3 and "gpt2" in feedforward
    model = timm.create_model("test_resnet", pretrained=False)
    groups = timm.models.group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) > 2  # stem, blocks, head
