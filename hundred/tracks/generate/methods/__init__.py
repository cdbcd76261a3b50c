"""The generate track's methods, one file each (discovered by the registry)."""
