"""sipcert.cli."""
