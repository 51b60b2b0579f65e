"""Evaluation suites for hear_ssam: suite definitions, the offline mini suite, and a runner
that drives heareval (embeddings + probes) over models x tasks x seeds."""
