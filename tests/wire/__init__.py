"""imds_flow/wire: a test module per decoder module; the vendor and sFlow corpora and the totality
(fuzz) tests drive wire.decode as a whole."""
