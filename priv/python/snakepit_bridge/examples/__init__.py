"""Example adapters shipped with Snakepit."""
