"""The only package that writes to the terminal: consoles, progress, log formatting."""
