"""Model packages (``model.keras`` + ``model.json`` card), their registry and architectures."""
