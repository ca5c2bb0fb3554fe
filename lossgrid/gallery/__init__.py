"""`lossgrid gallery`: the paper's comparisons (shortcuts, depth, batch size) trained, measured and drawn."""
