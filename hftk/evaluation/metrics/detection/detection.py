"""COCO box metrics as an `evaluate` module, shipped with hftk and loaded by path (works offline).

A thin wrapper around torchmetrics' ``MeanAveragePrecision`` with pycocotools as its backend, so the numbers are
COCO's own: mAP over IoU 0.50:0.95, mAP@50, mAP@75, by object size, AR@1/10/100, and AP/AR per class.
"""

import datasets
import evaluate
import numpy as np
import torch

_DESCRIPTION = "COCO mean average precision and recall for boxes (torchmetrics MeanAveragePrecision, pycocotools)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: one {"boxes": [[x1, y1, x2, y2], ...], "scores": [...], "labels": [...]} per image, in pixels.
    references: one {"boxes": [[x1, y1, x2, y2], ...], "labels": [...]} per image.
    class_names: names of the class ids 0..K-1, for the per-class keys (default: the ids).
    pr_curves: also return "pr_curves": per class, the precision at 101 recall points (IoU 0.5, all sizes).
Returns:
    map, map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100, mar_small, mar_medium,
    mar_large (-1 where no object of that size exists), ap_<class> and ar100_<class> per class.
"""

_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
_KEYS += ["mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Detection(evaluate.Metric):
    def _info(self):
        boxes = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "boxes": boxes,
                        "scores": datasets.Sequence(datasets.Value("float32")),
                        "labels": datasets.Sequence(datasets.Value("int64")),
                    },
                    "references": {"boxes": boxes, "labels": datasets.Sequence(datasets.Value("int64"))},
                }
            ),
        )

    def _compute(self, predictions, references, class_names=None, pr_curves=False):
        from torchmetrics.detection import MeanAveragePrecision

        # the caller passes every image of the split: no syncing with other processes (with torch.distributed up,
        # torchmetrics would otherwise wait for processes that are not computing this metric)
        metric = MeanAveragePrecision(
            box_format="xyxy",
            iou_type="bbox",
            class_metrics=True,
            extended_summary=pr_curves,
            backend="pycocotools",
            sync_on_compute=False,
        )
        metric.update([_tensors(p, scores=True) for p in predictions], [_tensors(r) for r in references])
        result = metric.compute()
        out = {key: float(result[key]) for key in _KEYS}
        classes = result["classes"].reshape(-1).tolist()
        names = list(class_names) if class_names is not None else [str(c) for c in range(max(classes, default=-1) + 1)]
        per_class_ap = result["map_per_class"].reshape(-1).tolist()
        per_class_ar = result["mar_100_per_class"].reshape(-1).tolist()
        for name in names:  # classes absent from both predictions and references get -1, as COCO reports them
            out[f"ap_{name}"] = -1.0
            out[f"ar100_{name}"] = -1.0
        for c, ap, ar in zip(classes, per_class_ap, per_class_ar):
            if 0 <= c < len(names):
                out[f"ap_{names[c]}"] = float(ap)
                out[f"ar100_{names[c]}"] = float(ar)
        if pr_curves:
            # precision: [IoU thresholds, 101 recall points, classes, area ranges, max dets]; IoU 0.5, all, 100
            precision = np.asarray(result["precision"])[0, :, :, 0, -1]
            out["pr_curves"] = {
                names[c]: precision[:, k].tolist() for k, c in enumerate(classes) if 0 <= c < len(names)
            }
        return out


def _tensors(item, scores=False):
    boxes = torch.tensor(np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4))
    out = {"boxes": boxes, "labels": torch.tensor(np.asarray(item["labels"], dtype=np.int64).reshape(-1))}
    if scores:
        out["scores"] = torch.tensor(np.asarray(item["scores"], dtype=np.float32).reshape(-1))
    return out
