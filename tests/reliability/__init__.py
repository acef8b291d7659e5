"""Reliability suite: bad input, crash safety, vendor faults and rates, Redis outage.

Every test here is bounded (iterations and a deadline), uses loopback only, and cleans up the
processes it starts. Run with
`CRMBRIDGE_TEST_REDIS_URL=redis://127.0.0.1:6379/11 .venv/bin/python -m pytest tests/reliability -q -s`.
"""
