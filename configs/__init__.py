"""Experiment configs: `default.py` lists every key; the others override it."""
