"""Collectors: hooks that read training without changing it. One file per quantity."""
