"""`lossgrid train` and :class:`lossgrid.Tracker`: training recipes whose checkpoints feed trajectories and
evolving landscapes."""
