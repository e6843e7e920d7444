"""``sipcert demo`` run as a subprocess, and its scenario with a sabotaged component."""
