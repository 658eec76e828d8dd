# The benchmark is a command (python -m tests.bench), not tests: pytest collects nothing here.
collect_ignore_glob = ["*"]
