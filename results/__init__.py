"""Aggregation of heareval outputs into leaderboard CSVs and charts."""
