"""Datasets, transforms and the built-in default data."""
