"""Answers already paid for: request fingerprints and the answer store (see ``store``)."""
