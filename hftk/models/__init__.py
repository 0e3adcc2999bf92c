"""Model builders shared by the tasks: one resolver (``load_model``) for every task's Auto class."""

from hftk.models.auto import build_config, check_model_args, count_parameters, error_line, load_model

__all__ = ["build_config", "check_model_args", "count_parameters", "error_line", "load_model"]
