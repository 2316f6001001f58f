"""Measuring models on labelled images: metrics, decision-support fitting and reports."""
