"""statestore package."""
