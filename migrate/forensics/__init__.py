"""Forensic analysis of checkpoint archives: what checkpointctl and crit show."""
