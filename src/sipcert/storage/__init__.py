"""sipcert.storage."""
