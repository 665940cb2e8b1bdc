"""Benchmarks: how fast and how reliably the agent learns, beside Stable-Baselines3 and a tutorial loop.

Run them from the project folder as modules, e.g. ``python -m bench.learning``.
"""
