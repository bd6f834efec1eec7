"""Jinja templates of the batch scripts (shipped as package data)."""
