"""``sipcert demo``: the whole draft on loopback, in one command (draft §1 steps 0-5).

* :mod:`sipcert.demo.dns` -- an in-process DNS responder answering the SRV and A queries
  of Store location (draft §4.1), so nothing on the system needs changing;
* :mod:`sipcert.demo.run` -- the scenario: a test CA, a Store per domain, Alice (two
  devices) and Bob enrolling, a signed and encrypted MESSAGE and INVITE, a revocation.
"""
