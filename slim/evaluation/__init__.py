"""Downstream evaluation protocols: clip features, kNN, linear probe, fine-tuning, label subsets,
metrics and figures, and the raw-joints anchor. Pure library code (torch, numpy; matplotlib and
tqdm imported lazily where a figure or progress bar is asked for)."""

from slim.evaluation.feature_file import SplitFeatures, load_features, save_features
from slim.evaluation.features import encode_persons, extract_features, person_presence
from slim.evaluation.finetune import ClipClassifier, FinetuneConfig, finetune, predict_logits
from slim.evaluation.knn import knn_evaluate, knn_scores
from slim.evaluation.linear import LinearProbe, LinearProbeConfig, linear_probe, train_linear_probe
from slim.evaluation.metrics import (
    ClassificationResult,
    confusion_matrix,
    pca_2d,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_embedding,
    topk_accuracy,
)
from slim.evaluation.raw_joints import raw_joint_features, raw_joints_knn
from slim.evaluation.subsets import class_balanced_subset

__all__ = [
    "ClassificationResult",
    "ClipClassifier",
    "FinetuneConfig",
    "LinearProbe",
    "LinearProbeConfig",
    "SplitFeatures",
    "class_balanced_subset",
    "confusion_matrix",
    "encode_persons",
    "extract_features",
    "finetune",
    "knn_evaluate",
    "knn_scores",
    "linear_probe",
    "load_features",
    "pca_2d",
    "per_class_accuracy",
    "person_presence",
    "plot_confusion_matrix",
    "plot_embedding",
    "predict_logits",
    "raw_joint_features",
    "raw_joints_knn",
    "save_features",
    "topk_accuracy",
    "train_linear_probe",
]
