"""ambassador-server: exposes the backends of its catalog over one multiplexed tunnel."""
