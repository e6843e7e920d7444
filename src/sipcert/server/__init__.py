"""sipcert.server."""
