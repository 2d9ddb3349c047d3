"""`grads experiment` and `grads compare`: the grid of fine-tunes (config, arms, grid), its statistics (stats),
its summary files (tables, figures), and the comparison of two experiment folders (compare)."""
