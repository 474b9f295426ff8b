"""YAML configurations shipped as package data; tasks read them with importlib.resources."""
