"""Classification metrics as an `evaluate` module, shipped with hftk and loaded by path (works offline).

Inputs are class scores (logits or probabilities, one row per example) so that top-k accuracy can be computed
alongside accuracy, macro precision/recall/F1 and per-class figures.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

_DESCRIPTION = "Accuracy, top-k accuracy, macro precision/recall/F1, per-class figures and the confusion matrix."
_KWARGS_DESCRIPTION = """
Args:
    predictions: class scores, one list of floats per example.
    references: true class ids.
    top_k: k of the top-k accuracy (default 5).
    labels: class names for per-class keys (default: the class ids).
Returns:
    accuracy, top{k}_accuracy, precision_macro, recall_macro, f1_macro, per-class precision/recall/f1/support
    as flat keys (f1_<label>), and confusion_matrix (list of rows: true class, columns: predicted class).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, top_k=5, labels=None):
        scores = np.asarray(predictions, dtype=np.float64)
        refs = np.asarray(references, dtype=np.int64)
        num_classes = scores.shape[1]
        names = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
        preds = scores.argmax(axis=1)
        k = min(top_k, num_classes)
        topk = np.argsort(-scores, axis=1)[:, :k]
        ids = list(range(num_classes))
        precision, recall, f1, support = precision_recall_fscore_support(refs, preds, labels=ids, zero_division=0)
        present = support > 0  # macro averages over the classes that occur in the references
        out = {
            "accuracy": float((preds == refs).mean()),
            f"top{top_k}_accuracy": float((topk == refs[:, None]).any(axis=1).mean()),
            "precision_macro": float(precision[present].mean()),
            "recall_macro": float(recall[present].mean()),
            "f1_macro": float(f1[present].mean()),
        }
        for i, name in enumerate(names):
            out[f"precision_{name}"] = float(precision[i])
            out[f"recall_{name}"] = float(recall[i])
            out[f"f1_{name}"] = float(f1[i])
            out[f"support_{name}"] = int(support[i])
        out["confusion_matrix"] = confusion_matrix(refs, preds, labels=ids).tolist()
        return out
