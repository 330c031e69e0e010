"""Showing a report: terminal (rich) and HTML."""
