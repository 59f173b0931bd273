"""Stage 2: train probe heads on cached tokens."""
