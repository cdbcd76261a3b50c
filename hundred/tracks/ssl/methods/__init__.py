"""Methods of the ssl track, one file each."""
