"""`lossgrid bench`: every backend, strategy and precision timed on one model and data set, and the machine's
measured peaks."""
