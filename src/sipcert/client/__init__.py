"""sipcert.client."""
