"""Services: runs and search, tracking, the queue, compare (leaderboard, report, ensemble, thresholds), serving, export."""
