"""The unlearn track's methods, one file each (imported on demand by the registry)."""
