"""Adapters that let minist models serve other frameworks; each needs its own extra (see its module)."""
