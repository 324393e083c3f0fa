"""Compare and combine models: leaderboard, report, ensembles, decision thresholds."""
