"""Methods of the compat track, one file each."""
