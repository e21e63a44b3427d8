"""Model evaluation: lm-evaluation-harness suites (Open LLM Leaderboard v1 and an offline CPU suite).

MT-Bench, contamination and log-prob analyses live in sibling modules of this package.
"""
