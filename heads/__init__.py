"""Heads built from a backbone's feature_info; they depend on backbones.base only."""

from heads.classification import ClassificationHead

__all__ = ["ClassificationHead"]
