"""atheris fuzz targets for the parsers of ``sipcert.proto`` (see fuzz/README.md)."""
