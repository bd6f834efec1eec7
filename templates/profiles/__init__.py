"""Cluster profiles (shipped as package data)."""
