"""Checking a deployed folder on a device: ``info``, ``check`` (golden files) and ``benchmark``."""
