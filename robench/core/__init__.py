"""Contracts every part shares: errors, the Registry, the Target and its card, the run
configuration, profiles, flags, the weights cache and file helpers. Imports nothing above it."""
