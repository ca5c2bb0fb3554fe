"""`lossgrid surface`: loss surfaces on a grid (exact, on seeded subsets, adaptive, with anchors), resumable in
an HDF5 surface file, sharded over processes."""
