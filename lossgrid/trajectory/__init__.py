"""`lossgrid trajectory`: the PCA plane of a training run, each checkpoint's coordinates on it, and the
trajectory file."""
