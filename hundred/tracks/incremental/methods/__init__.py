"""Methods of the class-incremental track, one file each."""
