"""Supervised classification: one training phase on the train split, evaluated on val."""
