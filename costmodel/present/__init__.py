"""Presenting results: report records, figures and the paper's generated content."""
