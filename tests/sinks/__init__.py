"""imds_flow/sinks: a test module per sink module (test_sinks: the package's open_sinks, file and UDP
sinks, [[sinks]] parsing); network sinks run against real receivers (tests/support)."""
