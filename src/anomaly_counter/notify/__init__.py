"""Notices of escalations and regressions, sent to the channels a project reads."""
