"""Scoring predictions: hallucination metrics and post-hoc knowledge-base verification."""
