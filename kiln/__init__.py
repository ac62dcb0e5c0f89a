"""Kiln's end-to-end drivers (the demo); the stages themselves live in training/, export/, serving/."""
