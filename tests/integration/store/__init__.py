"""End-to-end tests of a real ``sipcert serve`` process."""
