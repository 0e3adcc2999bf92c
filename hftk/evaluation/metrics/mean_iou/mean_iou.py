"""Mean intersection-over-union for semantic segmentation as an `evaluate` module, shipped with hftk and loaded by
path (``evaluate.load("mean_iou")`` needs the network).

The same inputs, options and results as evaluate's own ``mean_iou``: class maps in, per-class areas summed over
every image (so large images weigh more, as in mmsegmentation), then IoU and accuracy per class and their means.
Classes absent from both the references and the predictions have no IoU (NaN, left out of the means).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean IoU, per-class IoU and accuracy, and pixel accuracy of semantic segmentation maps."
_KWARGS_DESCRIPTION = """
Args:
    predictions: one class map (height x width of class ids) per image.
    references: one true class map per image, of the same size as its prediction.
    num_labels: the number of classes K; ids 0..K-1.
    ignore_index: the reference value of pixels that count nowhere (e.g. 255: unlabelled).
    nan_to_num: replace NaN (a class absent from references and predictions) by this number in the results.
    label_map: {old id: new id} applied to the references first.
    reduce_labels: references' 0 becomes ignore_index and every other id shifts down by one (ADE20k's convention).
    return_areas: also return the summed per-class pixel counts (hftk's addition, off by default), so that results
        over batches can be summed: area_intersect, area_union, area_prediction, area_reference.
Returns:
    mean_iou, mean_accuracy (the mean of per-class recall), overall_accuracy (pixel accuracy), per_category_iou and
    per_category_accuracy (arrays of K values).
"""
AREAS = ("area_intersect", "area_union", "area_prediction", "area_reference")


def intersect_and_union(prediction, reference, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """Per-class pixel counts of one image: (intersection, union, predicted, reference)."""
    prediction = np.asarray(prediction, dtype=np.int64)
    reference = np.array(reference, dtype=np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"a prediction of shape {prediction.shape} for a reference of shape {reference.shape}")
    if label_map:
        mapped = reference.copy()
        for old, new in label_map.items():
            mapped[reference == old] = new
        reference = mapped
    if reduce_labels:
        reference[reference == 0] = 255
        reference = reference - 1
        reference[reference == 254] = 255
    kept = reference != ignore_index
    prediction, reference = prediction[kept], reference[kept]
    hit = prediction[prediction == reference]
    # bincount on ids in range only: a predicted id outside 0..K-1 counts as predicted nowhere, as np.histogram does
    area_intersect = _count(hit, num_labels)
    area_prediction = _count(prediction, num_labels)
    area_reference = _count(reference, num_labels)
    return area_intersect, area_prediction + area_reference - area_intersect, area_prediction, area_reference


def _count(values, num_labels):
    values = values[(values >= 0) & (values < num_labels)]
    return np.bincount(values, minlength=num_labels)[:num_labels].astype(np.float64)


def mean_iou(predictions, references, num_labels, ignore_index, label_map=None, reduce_labels=False):
    """Summed per-class areas of lists of class maps: rows intersection, union, predicted, reference."""
    totals = np.zeros((4, num_labels))
    for prediction, reference in zip(predictions, references):
        totals += np.stack(
            intersect_and_union(prediction, reference, num_labels, ignore_index, label_map, reduce_labels)
        )
    return totals


def from_areas(totals, nan_to_num=None):
    """The results from summed per-class areas (rows intersection, union, predicted, reference)."""
    intersect, union, _, reference = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        accuracy = intersect / reference
        overall = intersect.sum() / reference.sum()
        results = {
            "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
            "overall_accuracy": float(overall),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
    if nan_to_num is not None:
        results = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in results.items()}
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        maps = datasets.Sequence(datasets.Sequence(datasets.Value("uint16")))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": maps, "references": maps}),
            reference_urls=["https://github.com/open-mmlab/mmsegmentation/blob/v0.x/mmseg/core/evaluation/metrics.py"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels,
        ignore_index,
        nan_to_num=None,
        label_map=None,
        reduce_labels=False,
        return_areas=False,
    ):
        totals = mean_iou(predictions, references, num_labels, ignore_index, label_map, reduce_labels)
        results = from_areas(totals, nan_to_num)
        if return_areas:
            results.update(zip(AREAS, totals))
        return results
