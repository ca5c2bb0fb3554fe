"""`lossgrid evolve`: the loss landscape around every checkpoint of a training run on shared directions, in one
resumable file."""
