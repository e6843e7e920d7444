"""sipcert.sip."""
