"""Static checks of deploy/ (image, compose, systemd, Kubernetes) and docs/operations.md."""
