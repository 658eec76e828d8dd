"""The benchmark of ambassador against the tunnels people use today (not a test suite).

Run it with ``python -m tests.bench``; see README.md in this folder.
"""
