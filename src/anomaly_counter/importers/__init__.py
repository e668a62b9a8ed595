"""Importers: history kept elsewhere, written into a store (the reference design's Redis)."""
