"""ambassador-client: turns one multiplexed tunnel back into local listening ports."""
