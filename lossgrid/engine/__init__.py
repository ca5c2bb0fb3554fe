"""Directions, grid evaluation, runners and the surface file."""
