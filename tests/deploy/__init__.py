"""The shipped deployment (deploy/): supervisord, systemd units, Redis Sentinel."""
