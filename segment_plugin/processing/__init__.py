"""The Processing provider ``segment_plugin`` and its algorithms (thin: they run the engine)."""
