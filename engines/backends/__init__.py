"""Text-encoder backends, one module each, imported only when asked for."""
