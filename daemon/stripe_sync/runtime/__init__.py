"""The running daemon's wiring: the task group (daemon.py), the HTTP server,
several processes per service, systemd notify, logs and metrics."""
