"""Decoding: beam search, the persistent-batch step, the scheduler and the translator pool (runners, no wire format)."""
