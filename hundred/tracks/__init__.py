"""Tracks: each folder holds a scenario (what is measured) and ``methods/`` (one file a paper)."""
