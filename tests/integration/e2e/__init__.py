"""End-to-end tests of the UA (library and CLI) against real ``sipcert serve`` and dnsmasq."""
