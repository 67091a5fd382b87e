"""Narrow interfaces the application needs from the outside world; adapters implement them."""
