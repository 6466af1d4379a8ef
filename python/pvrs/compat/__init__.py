"""Compatibility surfaces for scripts written against other tools: `persona_vectors` (the
reference tool's `persona_vectors.artifacts` store API, over pvrs's store)."""
