"""Methods of the classify track, one file each."""
