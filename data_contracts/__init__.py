"""offclip."""
