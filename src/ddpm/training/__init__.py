"""Training with Lightning: the DiffusionModule, EMA, speed switches, FLOP accounting, and the callbacks (one per file)."""
