"""Shared test configuration: the hypothesis profiles of the property-based tests."""

import os

from hypothesis import HealthCheck, settings

# CI: the same cases on every run (derandomized), no example database, no deadline (a shared
# 2-core machine times tests unevenly); each test sets its own max_examples.
settings.register_profile(
    "flowkit",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Local bug hunting: random cases, remembered in .hypothesis/ so that failures replay.
settings.register_profile(
    "explore",
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "flowkit"))
