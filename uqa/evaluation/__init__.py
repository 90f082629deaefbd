"""Scores: the official SQuAD v2.0 metric (squad), the Urdu normalizer (urdu), per-question scoring
and the no-answer threshold (scoring), and the error analysis report (analysis)."""
