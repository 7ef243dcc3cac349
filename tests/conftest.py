"""Shared test setup."""

# First, before any test module can run a torch op: importing searchlab pins torch's CPU
# kernels (searchlab.kernels), so rewards computed here match other machines' records.
import searchlab  # noqa: F401
