"""Building releases and running the system: up, down, destroy, status."""
