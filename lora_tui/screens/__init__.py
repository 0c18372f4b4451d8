"""The wizard's screens: start, one per step, review and training."""
