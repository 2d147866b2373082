"""bench/ (shipped as imds_flow_bench): the bench command, its synthetic exporters and the comparison
with nfcapd / nfacctd. Counts and shapes only, never timings."""
