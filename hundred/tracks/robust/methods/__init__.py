"""Methods of the robust track, one file each."""
