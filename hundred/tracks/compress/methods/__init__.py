"""Methods of the compress track, one file each."""
