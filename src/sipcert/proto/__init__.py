"""The sans-IO protocol core: rules and data transformations, no sockets, files or clocks.

Every function here takes what it needs (including ``now``) as arguments, so the Store, the
UA client and the tests drive the same logic.
"""
