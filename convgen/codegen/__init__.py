"""Backends: one module per output language, each a walk over the IR."""
